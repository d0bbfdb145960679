"""Test levels by folder (unit/integration/e2e/...), each folder marked with its level."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.otlp import OTLPReceiver
from tests.support.stack import Backing, start_backing

LEVELS = ("unit", "integration", "e2e", "chaos", "k8s")


def pytest_configure() -> None:
    # Before any test module imports torch: the suite runs engines in-process next to
    # daprd, Redis and the apps, where a spinning OpenMP team collapses (README, "One
    # compute thread"). The apps it starts inherit it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for level in LEVELS:
            if level in parts:
                item.add_marker(getattr(pytest.mark, level))


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small signed GLM demo model and the signed MiniLM encoder (real save_pretrained)."""
    from autoglm.models.demo import init_demo_models

    path = tmp_path_factory.mktemp("models")
    init_demo_models(path, small=True)
    return path


@pytest.fixture(scope="session")
def demo_model_dir(models_dir: Path) -> Path:
    return models_dir / "demo-glm"


@pytest.fixture(scope="session")
def signing_public_key(models_dir: Path) -> bytes:
    from autoglm.models.demo import DEV_KEY_DIR, DEV_PUBLIC_KEY

    return (models_dir / DEV_KEY_DIR / DEV_PUBLIC_KEY).read_bytes()


@pytest.fixture(scope="session")
def backing(
    tmp_path_factory: pytest.TempPathFactory, signing_public_key: bytes
) -> Iterator[Backing]:
    """Real Redis + Vault (seeded) and the rendered Dapr components, for the session."""
    with ExitStack() as stack:
        otlp = OTLPReceiver().start()
        stack.callback(otlp.stop)
        yield start_backing(tmp_path_factory.mktemp("stack"), stack, signing_public_key, otlp)
