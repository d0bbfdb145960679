"""The sessions this gateway process wrote last, so that their next turn skips the read.

A turn reads its session (history and ETag) from the state store, generates, and writes
the history back with that ETag. When the previous turn of the session went through this
process, the read returns what that turn wrote: the same record, and the ETag its write
produced. ``SessionCache`` keeps both for recently written sessions, so such a turn starts
from them without a round trip (issue 15: the read was a daprd call, a Redis read and a
record validation per turn).

Nothing is trusted that the write does not check. The write still carries the ETag, so
a cached record that is no longer the newest (another gateway replica, or another
writer, changed the session) is refused by the state store like any lost race, and the
turn then reads the session and starts again from what it read (``SessionStore``,
``ChatCompletionService.create``): no turn is written over a history it did not see.

The ETag a write produces is not returned by Dapr's save API. With ``state.redis`` (the
statestore component, locally and in Kubernetes) it is the key's version counter, which
every successful write raises by one (``HINCRBY``; a create starts it at 1), so the next
ETag is the written one plus one. An ETag that is not such a counter is never cached. If
the guess is ever wrong (say the store was flushed and the key re-created), the write is
refused, the session is read again (restored from the archive if the store lost it) and,
when the record read is the one cached, only the write is retried with the ETag read.

When a cached record turns out to be older than the store's (some other process writes
these sessions: several gateway replicas or workers without session-sticky routing), the
cache turns itself off for the life of the process: with turns spread over replicas,
most would find their cached record stale and generate twice. Deployments with more
than one gateway process set ``session_cache_entries`` to 0 (the Kubernetes base, ``make
run REPLICAS=N``; more than one worker turns it off by itself).

Bounded: at most ``max_entries`` sessions and ``max_chars`` characters of message
content, least recently used first out. Keys are the tenant-scoped state keys, so one
tenant's entry can never answer another's turn.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict

from autoglm.gateway.sessions.protocol import SessionRecord

log = logging.getLogger(__name__)

#: Characters of message content cached at most, all sessions together.
MAX_CHARS = 16 * 1024 * 1024


def next_etag(etag: str | None) -> str | None:
    """The ETag a successful write over ``etag`` leaves (``state.redis``: the version
    counter plus one; a create-only write starts at 1), or None if it cannot be known."""
    if etag is None:
        return "1"
    if not etag.isdecimal() or len(etag) > 18:
        return None
    return str(int(etag) + 1)


def _size(record: SessionRecord) -> int:
    return sum(len(m.content) + 64 for m in record.messages) + 256


class SessionCache:
    """Session key -> (the record this process wrote last, the ETag that write left)."""

    def __init__(self, max_entries: int, max_chars: int = MAX_CHARS) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[SessionRecord, str, int]] = OrderedDict()
        self._chars = 0
        self._off_reason: str | None = None if max_entries > 0 else "disabled"

    @property
    def enabled(self) -> bool:
        return self._off_reason is None

    def get(self, key: str) -> tuple[SessionRecord, str] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0], entry[1]

    def written(self, key: str, record: SessionRecord, etag_before: str | None) -> None:
        """``record`` was just written over ``etag_before`` (None: created): keep it with
        the ETag that write left, if that can be known; forget the key otherwise."""
        etag = next_etag(etag_before)
        size = _size(record)
        with self._lock:
            self._drop(key)
            if self._off_reason is not None or etag is None or size > self.max_chars:
                return
            self._entries[key] = (record, etag, size)
            self._chars += size
            while len(self._entries) > self.max_entries or self._chars > self.max_chars:
                _, (_, _, dropped) = self._entries.popitem(last=False)
                self._chars -= dropped

    def forget(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def turn_off(self, reason: str) -> None:
        """Stop caching for good (another process writes these sessions)."""
        with self._lock:
            if self._off_reason is not None:
                return
            self._off_reason = reason
            self._entries.clear()
            self._chars = 0
        log.warning("session cache turned off", extra={"reason": reason})

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._chars -= entry[2]

    def __len__(self) -> int:
        return len(self._entries)
