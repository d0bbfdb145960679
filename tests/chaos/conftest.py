"""Chaos tests break a real stack on purpose, so each module gets a stack of its own
(Redis, Vault, the three apps, each behind its real daprd) that nothing else shares."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.support.mesh import OwnMesh, start_mesh
from tests.support.otlp import OTLPReceiver
from tests.support.stack import start_backing

#: Settings every chaos stack uses: no tenant rate limit, since these tests send bursts.
NO_LIMITS = {"AUTOGLM_GATEWAY_RATE_LIMIT_REQUESTS_PER_MIN": "0"}

MeshFactory = Callable[..., OwnMesh]


@pytest.fixture(scope="module")
def own_mesh(
    tmp_path_factory: pytest.TempPathFactory, signing_public_key: bytes, models_dir: Path
) -> Iterator[MeshFactory]:
    """``own_mesh(gateway={...}, inference={...}, archiver={...}, archive_root=...)``
    starts a fresh stack with those extra settings; all of it stops with the module."""
    with ExitStack() as stack:
        otlp = OTLPReceiver().start()
        stack.callback(otlp.stop)

        def make(
            *,
            gateway: dict[str, str] | None = None,
            inference: dict[str, str] | None = None,
            archiver: dict[str, str] | None = None,
            archive_root: Path | None = None,
        ) -> OwnMesh:
            workdir = tmp_path_factory.mktemp("chaos")
            backing = start_backing(workdir, stack, signing_public_key, otlp)
            return start_mesh(
                backing,
                stack,
                models_dir,
                archive_root=archive_root,
                gateway={**NO_LIMITS, **(gateway or {})},
                inference=inference,
                archiver=archiver,
            )

        yield make


def chat_body(content: str = "Hi", max_tokens: int = 4) -> dict[str, object]:
    return {
        "model": "demo-glm",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
