"""One turn at a time per session in this gateway process.

A turn reads the session (history and ETag), generates, and writes the history back with
that ETag. Two turns of one session that overlap both read the same version, so the one
that writes second is sure to lose the ETag race, and it loses only after its generation
(which the session's actor serializes behind the other's, issue 14). Sending that write
anyway costs a generation and a state write that daprd counts as a state store failure;
racing turns lost one after another opened the store's circuit breaker, which every
tenant shares. So a turn claims its session here first, and a second turn of the session
while the first is still running in this process is refused at once with the same 409 a
lost race gets (``session_conflict``), before anything is read, generated or written.

What stays with the ETag: turns through other gateway replicas, and deletes or restores
that change the session while a turn runs. Those are genuine races; the write is still
sent with the ETag read before the turn, and the one that loses is a 409, never a silent
overwrite. A claim nobody released (a streamed reply whose body was never read) lapses
after ``hold_s``; the turn's own write, if it ever comes, is still guarded by its ETag.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from autoglm.core.errors import ConflictError

#: Claims kept before lapsed ones are swept (only leaked claims can lapse).
_SWEEP_AT = 1024


class TurnInProgressError(ConflictError):
    """Another turn of the session runs in this process (409 ``session_conflict``)."""


class TurnClaims:
    """The sessions with a turn running in this process, each until it is released."""

    def __init__(self, hold_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.hold_s = hold_s
        self._clock = clock
        self._lock = threading.Lock()
        #: session key -> (claim token, when the claim lapses)
        self._claims: dict[str, tuple[object, float]] = {}

    def claim(self, key: str, session_id: str) -> Callable[[], None]:
        """Claim ``key`` for one turn; returns its release (idempotent). A 409 if a turn
        of the session already holds it."""
        token = object()
        now = self._clock()
        with self._lock:
            held = self._claims.get(key)
            if held is not None and held[1] > now:
                raise TurnInProgressError(
                    f"session {session_id!r} has a turn in progress; send the next turn "
                    "once it has been answered",
                    code="session_conflict",
                )
            if len(self._claims) >= _SWEEP_AT:
                self._claims = {k: v for k, v in self._claims.items() if v[1] > now}
            self._claims[key] = (token, now + self.hold_s)

        def release() -> None:
            with self._lock:
                held = self._claims.get(key)
                if held is not None and held[0] is token:
                    del self._claims[key]

        return release

    def __len__(self) -> int:
        return len(self._claims)
