from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from autoglm.devstack.processes import free_port
from tests.support.stack import AppUnderTest, Backing, start_app, wait_http_ok
from tests.support.tokens import bearer


@dataclass
class Mesh:
    backing: Backing
    gateway: AppUnderTest
    inference: AppUnderTest
    archiver: AppUnderTest
    gateway_url: str
    archive_root: Path
    inference_metrics_port: int

    def headers(self, tenant: str = "acme", role: str = "user") -> dict[str, str]:
        """Authorization for ``tenant``, signed with the key seeded into Vault."""
        return bearer(tenant, role, self.backing.secrets["jwt"])


@pytest.fixture(scope="session")
def mesh(backing: Backing, models_dir: Path) -> Iterator[Mesh]:
    """All three apps as real processes, each behind its own real daprd."""
    archive_root = backing.workdir / "archive"
    metrics_port = free_port()
    with ExitStack() as stack:
        inference = start_app(
            backing,
            stack,
            "inference",
            "autoglm.inference",
            env={
                "AUTOGLM_INFERENCE_MODELS": json.dumps(
                    [
                        {"id": "demo-glm", "path": str(models_dir / "demo-glm"), "priority": True},
                        {
                            "id": "all-MiniLM-L6-v2",
                            "path": str(models_dir / "all-MiniLM-L6-v2"),
                            "priority": True,
                        },
                    ]
                ),
                "AUTOGLM_INFERENCE_METRICS_PORT": str(metrics_port),
            },
        )
        archiver = start_app(
            backing,
            stack,
            "archiver",
            "autoglm.archiver",
            env={"AUTOGLM_ARCHIVER_ROOT": str(archive_root)},
        )
        gateway = start_app(
            backing,
            stack,
            "gateway",
            "autoglm.gateway",
            protocol="http",
            env={"AUTOGLM_GATEWAY_THREADS": "8"},
        )
        url = f"http://127.0.0.1:{gateway.app_port}"
        assert gateway.app is not None
        wait_http_ok(f"{url}/readyz", gateway.app)
        yield Mesh(backing, gateway, inference, archiver, url, archive_root, metrics_port)
