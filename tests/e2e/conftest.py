from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.mesh import start_mesh
from tests.support.stack import AppUnderTest, Backing
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
    with ExitStack() as stack:
        own = start_mesh(backing, stack, models_dir)
        metrics_port = int(own.envs["inference"]["AUTOGLM_INFERENCE_METRICS_PORT"])
        yield Mesh(
            backing,
            own.gateway,
            own.inference,
            own.archiver,
            own.gateway_url,
            own.archive_root,
            metrics_port,
        )
