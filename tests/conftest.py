"""Test levels by folder (unit/integration/e2e/...), each folder marked with its level."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.stack import Backing, start_backing

LEVELS = ("unit", "integration", "e2e", "chaos", "k8s")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        parts = Path(str(item.fspath)).parts
        for level in LEVELS:
            if level in parts:
                item.add_marker(getattr(pytest.mark, level))


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small GLM demo model built through the real save_pretrained path."""
    from autoglm.models.demo import create_demo_model

    return create_demo_model(
        tmp_path_factory.mktemp("models") / "demo-glm", vocab_size=1024, hidden_size=128, layers=2
    )


@pytest.fixture(scope="session")
def backing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backing]:
    """Real Redis + Vault (seeded) and the rendered Dapr components, for the session."""
    with ExitStack() as stack:
        yield start_backing(tmp_path_factory.mktemp("stack"), stack)
