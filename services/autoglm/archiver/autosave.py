"""The autosave policy: when a dirty session is due for a snapshot, and the thread that
runs flush cycles."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from autoglm.archiver.periodic import Periodic
from autoglm.archiver.settings import AutosavePolicy
from autoglm.archiver.snapshots import SessionState

log = logging.getLogger(__name__)


@dataclass
class Dirty:
    """A session with accepted versions newer than its newest snapshot."""

    state: SessionState
    #: Monotonic times: when it became dirty, its latest event, its last snapshot.
    since: float
    last_event: float
    last_snapshot: float | None
    #: Versions accepted since the last snapshot.
    steps: int = 1
    #: Write at the next cycle regardless of the policy (flush event, recovery).
    flush: bool = False


def trigger(dirty: Dirty, now: float, policy: AutosavePolicy) -> str | None:
    """Why ``dirty`` is due now (``flush``, ``steps``, ``interval``, ``idle``), or None."""
    if dirty.flush:
        return "flush"
    if dirty.steps >= policy.every_n_steps:
        return "steps"
    reference = dirty.last_snapshot if dirty.last_snapshot is not None else dirty.since
    if now - reference >= policy.interval_seconds:
        return "interval"
    if (now - dirty.last_event) * 1000.0 >= policy.idle_ms:
        return "idle"
    return None


def tick_seconds(policy: AutosavePolicy) -> float:
    """Cycle period: a quarter of the finest time trigger, between 50 ms and 1 s."""
    finest = min(policy.interval_seconds, policy.idle_ms / 1000.0)
    return min(1.0, max(0.05, finest / 4))


class Autosaver(Periodic):
    """Calls ``cycle`` every tick; a full batch means more are due, so it goes again at
    once. ``stop`` ends the thread; the caller then drains what is still dirty. One bad
    cycle does not stop every later snapshot."""

    what = "autosave cycle"
    join_s = 30.0

    def __init__(self, cycle: Callable[[], int], batch_size: int, tick: float) -> None:
        super().__init__(tick)
        self._cycle = cycle
        self._batch_size = batch_size

    def work(self) -> None:
        while self._cycle() >= self._batch_size and not self.stopping:
            pass
