"""Session archive: accepts snapshot events, keeps dirty sessions, restores versions.

An accepted event is durable before it is acknowledged (``Staging``); the autosave
policy decides when it becomes a snapshot version. Restores prefer the in-memory newest
state, and the Bloom filter answers for ids that were never archived.

A deletion event removes the session everywhere (memory, staging, versions) behind a
durable marker at the deleted version; events at or below it, which pub/sub may still
deliver, are acknowledged and ignored. Events above it can only come from a session
that is live: the gateway's delete failed after publishing (the client got an error, the
record is intact and every event carries its full history), or the id was re-created
once the state store had lost the tombstone. Both are archived as usual; a re-created id
is archived only from version marker + 1 on. That trades a little durability for a
reused id (rare: the tombstone blocks re-creation) for never mixing it with, or
restoring, the deleted history.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field

from autoglm.archiver.autosave import Dirty, trigger
from autoglm.archiver.bloom import BloomFilter
from autoglm.archiver.metrics import ArchiverMetrics, Readiness
from autoglm.archiver.settings import AutosavePolicy
from autoglm.archiver.snapshots import SessionState, SnapshotStore
from autoglm.archiver.staging import Staging
from autoglm.archiver.versions import reconcile
from autoglm.core.errors import NotFoundError
from autoglm.core.schemas import SnapshotEvent

log = logging.getLogger(__name__)

_STRIPES = 64


@dataclass(eq=False)
class SessionArchive:
    store: SnapshotStore
    staging: Staging
    policy: AutosavePolicy
    bloom: BloomFilter
    metrics: ArchiverMetrics
    readiness: Readiness
    _: KW_ONLY
    #: Clean session heads kept in memory for conflict checks (LRU).
    head_cache: int = 1024
    clock: Callable[[], float] = time.monotonic
    # Striped locks: one session's events, flushes and restores are serialised,
    # different sessions proceed in parallel, and the lock table stays bounded.
    _locks: list[threading.RLock] = field(
        init=False, default_factory=lambda: [threading.RLock() for _ in range(_STRIPES)]
    )
    _guard: threading.Lock = field(init=False, default_factory=threading.Lock)  # the maps below
    _dirty: dict[str, Dirty] = field(init=False, default_factory=dict)
    _heads: OrderedDict[str, tuple[SessionState, float]] = field(
        init=False, default_factory=OrderedDict
    )

    def _lock(self, key: str) -> threading.RLock:
        return self._locks[zlib.crc32(key.encode()) % _STRIPES]

    # -- start-up ----------------------------------------------------------------------
    def load(self) -> int:
        """Seed the Bloom filter from disk and reload staged sessions (due at once)."""
        for key in self.store.session_keys():
            self.bloom.add(key)
        now = self.clock()
        count = 0
        for state in self.staging.load_all():
            archived = self.store.versions(state.tenant, state.session_id)
            if state.version <= self.store.deleted_version(state.tenant, state.session_id) or (
                archived and state.version <= archived[-1]
            ):
                # A crash between a deletion's marker and its staging removal, or after
                # a snapshot before its staged state's removal was durable.
                self.staging.discard(state.tenant, state.session_id)
                continue
            self.bloom.add(state.key)
            with self._guard:
                self._dirty[state.key] = Dirty(state, now, now, None, flush=True)
            count += 1
        self.metrics.dirty.set(len(self._dirty))
        return count

    # -- events ------------------------------------------------------------------------
    def accept(self, event: SnapshotEvent) -> str:
        """Apply ``event``; returns ``accepted``, ``duplicate``, ``merged`` or
        ``after_deletion`` (ignored: the session was deleted at or after its version).
        Raises ``ConflictError`` for a refused stale write and ``OSError`` if it is not
        durable."""
        key = f"{event.tenant}/{event.session_id}"
        with self._lock(key):
            # Every deleted key is in the filter (``delete`` adds it), so ids never seen
            # skip the marker lookup.
            if key in self.bloom and event.version <= self.store.deleted_version(
                event.tenant, event.session_id
            ):
                return "after_deletion"
            current = self._current(event.tenant, event.session_id)
            outcome = reconcile(
                current, event, lambda v: self._archived(event.tenant, event.session_id, v)
            )
            now = self.clock()
            if outcome.kind != "duplicate":
                self.staging.put(outcome.state)
                self.bloom.add(key)
                with self._guard:
                    dirty = self._dirty.get(key)
                    if dirty is None:
                        head = self._heads.pop(key, None)
                        dirty = Dirty(outcome.state, now, now, head[1] if head else None, 0)
                        self._dirty[key] = dirty
                    dirty.state = outcome.state
                    dirty.last_event = now
                    dirty.steps += 1
                self.metrics.dirty.set(len(self._dirty))
            with self._guard:
                dirty = self._dirty.get(key)
                if dirty is not None and event.flush:
                    dirty.flush = True
            if dirty is not None and (event.flush or not self.policy.enabled):
                self._snapshot(key, "flush" if event.flush else "write_through")
            return outcome.kind

    def _current(self, tenant: str, session_id: str) -> SessionState | None:
        key = f"{tenant}/{session_id}"
        with self._guard:
            dirty = self._dirty.get(key)
            if dirty is not None:
                return dirty.state
            head = self._heads.get(key)
            if head is not None:
                self._heads.move_to_end(key)
                return head[0]
        if key not in self.bloom:
            return None
        state = self.store.latest(tenant, session_id)
        if state is not None:
            self._remember(state, None)
        return state

    def _archived(self, tenant: str, session_id: str, version: int) -> SessionState | None:
        try:
            return self.store.read(tenant, session_id, version)
        except NotFoundError:
            return None

    def _remember(self, state: SessionState, snapped_at: float | None) -> None:
        if self.head_cache == 0:
            return
        with self._guard:
            self._heads[state.key] = (state, snapped_at or self.clock())
            self._heads.move_to_end(state.key)
            while len(self._heads) > self.head_cache:
                self._heads.popitem(last=False)

    # -- snapshots ---------------------------------------------------------------------
    def _snapshot(self, key: str, why: str) -> None:
        """Write ``key``'s dirty state as a version; caller holds the session lock."""
        with self._guard:
            dirty = self._dirty.get(key)
        if dirty is None:
            return
        state = dirty.state
        try:
            self.store.write(state, why)
            self.staging.remove(state)
        except OSError as exc:
            self.readiness.failed("snapshot", exc)
            raise
        with self._guard:
            if self._dirty.get(key) is dirty:
                del self._dirty[key]
        self._remember(state, self.clock())
        self.metrics.snapshots.labels(why).inc()
        self.metrics.dirty.set(len(self._dirty))
        self.readiness.succeeded()

    def flush_due(self) -> int:
        """One flush cycle: up to ``batch_size`` due sessions, oldest dirty first. A disk
        error ends the cycle; the sessions stay dirty (and staged) for the next one."""
        now = self.clock()
        with self._guard:
            due = sorted(
                (d.since, key, why)
                for key, d in self._dirty.items()
                if (why := trigger(d, now, self.policy)) is not None
            )[: self.policy.batch_size]
        written = 0
        for _since, key, why in due:
            with self._lock(key):
                try:
                    self._snapshot(key, why)
                except OSError:
                    return written
            written += 1
        return written

    def flush_all(self, why: str = "shutdown") -> int:
        """Write every dirty session now (graceful drain); failures stay staged on disk."""
        written = 0
        for key in list(self._dirty):
            with self._lock(key):
                try:
                    self._snapshot(key, why)
                    written += 1
                except OSError:
                    log.error("session left staged for the next start", extra={"session": key})
        return written

    # -- deletion ----------------------------------------------------------------------
    def delete(self, tenant: str, session_id: str, version: int) -> str:
        """Forget the session deleted at ``version``: its dirty state, staged state,
        cached head and every version on disk, behind a durable marker. Idempotent;
        raises ``OSError`` if not durable (the event is redelivered)."""
        key = f"{tenant}/{session_id}"
        with self._lock(key):
            # Memory first: it can only shadow disk, and must never serve deleted
            # history while a failed disk step waits for redelivery. A dirty state
            # dropped here is still staged; a restart reloads it, or discards it once
            # the marker is on disk.
            with self._guard:
                self._dirty.pop(key, None)
                self._heads.pop(key, None)
            self.metrics.dirty.set(len(self._dirty))
            # A Bloom filter cannot forget; keeping the key is what makes later events
            # and restores look at the marker (a disk lookup that finds nothing).
            self.bloom.add(key)
            self.store.delete(tenant, session_id, version)
            self.staging.discard(tenant, session_id)
            log.info("session deleted from the archive", extra={"session": key})
            return "deleted"

    @property
    def dirty_count(self) -> int:
        return len(self._dirty)

    # -- restore -----------------------------------------------------------------------
    def restore(self, tenant: str, session_id: str, version: int | None = None) -> SessionState:
        key = f"{tenant}/{session_id}"
        with self._lock(key):
            with self._guard:
                dirty = self._dirty.get(key)
                head = self._heads.get(key)
            for known in (dirty.state if dirty else None, head[0] if head else None):
                if known is not None and version in (None, known.version):
                    self.metrics.restores.labels("memory").inc()
                    return known
            if key not in self.bloom:
                self.metrics.restores.labels("bloom_miss").inc()
                raise NotFoundError(f"session {session_id!r} not found", param="session_id")
            if version is not None:
                state = self.store.read(tenant, session_id, version)
            else:
                found = self.store.latest(tenant, session_id)
                if found is None:
                    self.metrics.restores.labels("not_found").inc()
                    raise NotFoundError(f"session {session_id!r} not found", param="session_id")
                state = found
            self.metrics.restores.labels("disk").inc()
            return state
