from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from autoglm.core.sidecar import Sidecar
from tests.support.stack import Backing, start_app


@pytest.fixture(scope="session")
def sidecar(backing: Backing) -> Iterator[Sidecar]:
    """A real daprd (no app behind it) wired to the real Redis and Vault."""
    with ExitStack() as stack:
        daprd = start_app(backing, stack, "itest", None)
        client = daprd.client()
        stack.callback(client.close)
        yield client
