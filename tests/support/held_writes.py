"""Hold the archiver's file writes at its write boundary, to see what group commit does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from autoglm.archiver import atomic
from tests.support.polling import wait_for


def concurrent_writes(
    monkeypatch: pytest.MonkeyPatch, calls: list[Callable[[], object]], count: bytes
) -> list[int]:
    """Run ``calls`` in threads while the first write is held at ``atomic.write_fsync``
    until the others are queued behind it; returns how many ``count`` markers each write
    carried, in order."""
    writes: list[int] = []
    gate = threading.Event()
    real = atomic.write_fsync

    def held(fh: Any, data: bytes) -> None:
        writes.append(data.count(count))
        gate.wait(5)
        real(fh, data)

    monkeypatch.setattr(atomic, "write_fsync", held)
    threads = [threading.Thread(target=call) for call in calls]
    for t in threads:
        t.start()
    wait_for("one write in progress, the others queued", lambda: len(writes) == 1, 5)
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join()
    monkeypatch.setattr(atomic, "write_fsync", real)
    return writes
