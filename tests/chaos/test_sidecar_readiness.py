"""(6) A replica is ready only when its sidecar really serves it.

The inference app refuses daprd's first ``ListTopicSubscriptions`` and the three
retries daprd makes within ~2.5 s (fault injection; as an app whose port refused
connections did in the field), so its daprd comes up healthy and "Running" but without
the ``inference.requests`` subscription: every job would sit unconsumed. The
launcher's check through daprd's metadata API sees it, says why and restarts the
sidecar; the stack then serves jobs.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from autoglm.core.readiness import sidecar_problems
from tests.chaos.conftest import NO_LIMITS, chat_body
from tests.support.ha import start_ha_mesh
from tests.support.otlp import OTLPReceiver
from tests.support.polling import wait_for
from tests.support.stack import start_backing


def test_sidecar_without_subscriptions_is_restarted_not_reported_ready(
    tmp_path_factory: pytest.TempPathFactory,
    signing_public_key: bytes,
    models_dir: Path,
) -> None:
    events: list[str] = []
    with ExitStack() as stack:
        otlp = OTLPReceiver().start()
        stack.callback(otlp.stop)
        backing = start_backing(tmp_path_factory.mktemp("deaf"), stack, signing_public_key, otlp)
        mesh = start_ha_mesh(
            backing,
            stack,
            models_dir,
            {"gateway": 1, "inference": 1, "archiver": 1},
            envs={
                "gateway": NO_LIMITS,
                "inference": {
                    "AUTOGLM_INFERENCE_FAULTS_ENABLED": "true",
                    "AUTOGLM_INFERENCE_FAULT_REFUSE_SUBSCRIPTION_LISTS": "4",
                },
            },
            on_event=events.append,
        )
        inference = mesh.replicas["inference"][0]
        # The first sidecar came up deaf; the launcher said so and replaced it.
        assert any(
            "inference-0: sidecar up without no subscription to pubsub/inference.requests" in e
            for e in events
        ), events
        meta = httpx.get(
            f"{inference.dapr_url}/v1.0/metadata", headers=inference.dapr_headers, timeout=5
        ).json()
        assert sidecar_problems(meta, "inference") == []
        assert inference.state == "ready"
        ready = httpx.get(f"{mesh.url}/readyz", timeout=10).json()
        assert ready["checks"]["subscriptions"] == "ok", ready
        # And the subscription really consumes: a job completes.
        headers = mesh.headers("deaf")
        job = httpx.post(f"{mesh.url}/v1/jobs", json=chat_body(), headers=headers, timeout=30)
        assert job.status_code == 202, job.text
        job_id = job.json()["id"]
        wait_for(
            "the job completed",
            lambda: (
                httpx.get(f"{mesh.url}/v1/jobs/{job_id}", headers=headers, timeout=10).json()[
                    "status"
                ]
                == "completed"
            ),
            timeout=60,
        )
