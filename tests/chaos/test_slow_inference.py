"""A slow model (injected delay) against the gateway's request timeout."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.chaos.conftest import MeshFactory, chat_body


def test_slow_inference_times_out_with_504_and_frees_the_gateway(own_mesh: MeshFactory) -> None:
    """Proves: when generation takes longer than ``AUTOGLM_GATEWAY_REQUEST_TIMEOUT_S``,
    the gateway answers 504 at its deadline instead of waiting for the model, and the
    connections it used are free again: 4 concurrent slow requests all get their 504 in
    about one timeout each, and right after them the gateway still serves models and
    embeddings (not delayed) at once."""
    mesh = own_mesh(
        gateway={
            "AUTOGLM_GATEWAY_REQUEST_TIMEOUT_S": "1.5",
            "AUTOGLM_GATEWAY_WORKER_CONNECTIONS": "8",
        },
        inference={
            "AUTOGLM_INFERENCE_FAULTS_ENABLED": "true",
            "AUTOGLM_INFERENCE_FAULT_DELAY_MS": "6000",
        },
    )
    with httpx.Client(base_url=mesh.gateway_url, headers=mesh.headers(), timeout=30) as c:

        def slow() -> tuple[int, float, str]:
            t0 = time.monotonic()
            resp = c.post("/v1/chat/completions", json=chat_body())
            return resp.status_code, time.monotonic() - t0, resp.json()["error"]["type"]

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda _: slow(), range(4)))
        assert [status for status, _, _ in results] == [504] * 4, results
        # One timeout each (they run at once), plus overhead.
        assert max(elapsed for _, elapsed, _ in results) < 6, results
        t0 = time.monotonic()
        assert c.get("/v1/models").status_code == 200
        emb = c.post("/v1/embeddings", json={"model": "all-MiniLM-L6-v2", "input": "free?"})
        assert emb.status_code == 200, emb.text
        assert time.monotonic() - t0 < 3
        assert c.get("/readyz").status_code == 200
