"""Background work on a schedule (autosave cycles, retention passes)."""

from __future__ import annotations

import logging
import threading
from typing import ClassVar


class Periodic:
    """Calls ``work`` in a daemon thread every ``interval_s`` until ``stop``. A failed
    call is logged (``<what> failed``) and the next one comes on schedule: an exception
    escaping would end the thread, and the work with it, silently."""

    #: Names the thread and the log line of a failed call (logged by the subclass's
    #: module logger).
    what: ClassVar[str]
    #: Work once at start too, not only after the first interval.
    at_start: ClassVar[bool] = False
    #: How long ``stop`` waits for a call in progress to end (0: it does not wait).
    join_s: ClassVar[float] = 0.0

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.what, daemon=True)

    def work(self) -> None:
        raise NotImplementedError

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self.join_s and self._thread.is_alive():
            self._thread.join(timeout=self.join_s)

    def _run(self) -> None:
        if not self.at_start and self._stop.wait(self.interval_s):
            return
        while True:
            try:
                self.work()
            except Exception as exc:
                log = logging.getLogger(type(self).__module__)
                log.exception("%s failed", self.what, extra={"reason": str(exc)})
            if self._stop.wait(self.interval_s):
                return
