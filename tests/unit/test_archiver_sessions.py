"""Autosave triggers, staging, restore, Bloom filter and the pub/sub acks of the archiver."""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoglm.archiver import atomic
from autoglm.archiver.app import endpoint
from autoglm.archiver.attachments import AttachmentStore
from autoglm.archiver.audit import AuditLog
from autoglm.archiver.autosave import Autosaver, tick_seconds
from autoglm.archiver.bloom import BloomFilter
from autoglm.archiver.codec import Cipher, Codec
from autoglm.archiver.metrics import ArchiverMetrics, Readiness
from autoglm.archiver.serving import ArchiverService
from autoglm.archiver.sessions import SessionArchive
from autoglm.archiver.settings import ArchiverSettings, AutosavePolicy
from autoglm.archiver.snapshots import SessionState, SnapshotStore
from autoglm.archiver.staging import Staging
from autoglm.core.errors import AutoGLMError, NotFoundError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import ChatMessage
from tests.support.fakes import FakeSidecar
from tests.support.held_writes import concurrent_writes
from tests.support.polling import wait_for

KEY = Cipher(os.urandom(32))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def build(
    root: Path, clock: Callable[[], float] | None = None, encrypt: bool = False, **policy: Any
) -> tuple[SessionArchive, ArchiverService]:
    defaults: dict[str, Any] = {"interval_seconds": 60, "every_n_steps": 100, "idle_ms": 60_000}
    pol = AutosavePolicy(**{**defaults, **policy, "encrypt": encrypt})
    settings = ArchiverSettings(root=root, autosave=pol)
    codec = Codec(pol.compression, pol.encrypt, lambda: KEY)
    metrics = ArchiverMetrics()
    readiness = Readiness(metrics)
    sessions = SessionArchive(
        SnapshotStore(root, codec, settings.model_dump(mode="json"), pol.max_keep),
        Staging(root, codec),
        pol,
        BloomFilter(1000, 0.01),
        metrics,
        readiness,
        clock=clock or Clock(),
    )
    sessions.load()
    service = ArchiverService(
        sessions,
        AttachmentStore(root, FakeSidecar(), settings.attachments),
        AuditLog(root),
        metrics,
        readiness,
        root / ".probe",
    )
    return sessions, service


def invoke(service: ArchiverService, method: str, body: bytes | str) -> Any:
    """Call ``method`` as daprd does: through the endpoint the contract table builds."""
    return json.loads(endpoint(service)(method, body.encode() if isinstance(body, str) else body))


def event(version: int, *contents: str, session: str = "s1", flush: bool = False) -> bytes:
    messages = [{"role": "user", "content": c} for c in contents]
    return json.dumps(
        {
            "tenant": "acme",
            "session_id": session,
            "version": version,
            "messages": messages,
            "flush": flush,
        }
    ).encode()


def versions(sessions: SessionArchive, session: str = "s1") -> list[int]:
    return sessions.store.versions("acme", session)


def segments(root: Path) -> list[Path]:
    """The staging log's segment files."""
    return sorted((root / "staging").glob("*.log"))


def test_events_are_staged_not_snapshotted_until_due(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    assert service.on_snapshot(event(1, "a")) is Ack.SUCCESS
    assert versions(sessions) == [] and sessions.dirty_count == 1
    assert sessions.staging.staged() == {"acme/s1": 1} and segments(tmp_path)
    assert sessions.flush_due() == 0


def test_steps_trigger(tmp_path: Path) -> None:
    sessions, service = build(tmp_path, every_n_steps=3)
    for v in (1, 2):
        service.on_snapshot(event(v, *"ab"[:v]))
    assert sessions.flush_due() == 0
    service.on_snapshot(event(3, "a", "b", "c"))
    assert sessions.flush_due() == 1
    assert versions(sessions) == [3] and sessions.dirty_count == 0
    # Nothing staged lives in the segment any more: it is gone.
    assert sessions.staging.staged() == {} and not segments(tmp_path)


def test_interval_trigger(tmp_path: Path) -> None:
    clock = Clock()
    sessions, service = build(tmp_path, clock, interval_seconds=10)
    service.on_snapshot(event(1, "a"))
    clock.now += 9
    assert sessions.flush_due() == 0
    clock.now += 1
    assert sessions.flush_due() == 1 and versions(sessions) == [1]


def test_idle_trigger(tmp_path: Path) -> None:
    clock = Clock()
    sessions, service = build(tmp_path, clock, idle_ms=500)
    service.on_snapshot(event(1, "a"))
    clock.now += 0.4
    service.on_snapshot(event(2, "a", "b"))
    clock.now += 0.4
    assert sessions.flush_due() == 0  # the second event reset the idle timer
    clock.now += 0.1
    assert sessions.flush_due() == 1 and versions(sessions) == [2]


def test_flush_flag_writes_before_ack(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    assert service.on_snapshot(event(1, "a", flush=True)) is Ack.SUCCESS
    assert versions(sessions) == [1]
    meta = json.loads(next(tmp_path.rglob("metadata.json")).read_text())
    assert meta["trigger"] == "flush"


def test_disabled_autosave_writes_through(tmp_path: Path) -> None:
    sessions, service = build(tmp_path, enabled=False)
    service.on_snapshot(event(1, "a"))
    assert versions(sessions) == [1]


def test_signal_drain_writes_every_dirty_session(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    for s in ("s1", "s2", "s3"):
        service.on_snapshot(event(1, "a", session=s))
    assert sessions.flush_all("shutdown") == 3
    assert all(versions(sessions, s) == [1] for s in ("s1", "s2", "s3"))


def test_batches_are_bounded(tmp_path: Path) -> None:
    clock = Clock()
    sessions, service = build(tmp_path, clock, idle_ms=1, batch_size=2)
    for s in ("s1", "s2", "s3"):
        service.on_snapshot(event(1, "a", session=s))
    clock.now += 1
    assert sessions.flush_due() == 2
    assert sessions.flush_due() == 1


def test_autosaver_thread_runs_cycles(tmp_path: Path) -> None:
    sessions, service = build(tmp_path, time.monotonic, idle_ms=1)
    service.on_snapshot(event(1, "a"))
    saver = Autosaver(sessions.flush_due, 32, 0.01)
    saver.start()
    try:
        wait_for("an autosaved version", lambda: versions(sessions) == [1], 2, every=0.01)
    finally:
        saver.stop()
    assert tick_seconds(AutosavePolicy(idle_ms=100, interval_seconds=30)) == 0.05


def test_crash_recovery_reloads_staged_sessions(tmp_path: Path) -> None:
    _, service = build(tmp_path, encrypt=True)
    service.on_snapshot(event(1, "secret"))
    assert b"secret" not in segments(tmp_path)[0].read_bytes()
    # A new process (the old one was killed): staged state is due at once.
    sessions, _ = build(tmp_path, encrypt=True)
    assert sessions.dirty_count == 1
    assert sessions.flush_due() == 1 and versions(sessions) == [1]


def test_a_staged_state_already_archived_is_discarded_on_start(tmp_path: Path) -> None:
    """A segment's deletion is not fsynced: a crash may bring it back, with states at
    versions the archive already holds, and the next start drops them (and it)."""
    sessions, service = build(tmp_path)
    service.on_snapshot(event(1, "a"))
    [segment] = segments(tmp_path)
    kept = segment.read_bytes()
    assert sessions.flush_all() == 1 and not segments(tmp_path)
    segment.write_bytes(kept)  # the deletion lost in a crash
    sessions2, _ = build(tmp_path)
    assert sessions2.dirty_count == 0 and not segments(tmp_path)
    assert versions(sessions2) == [1]


def test_staging_log_group_commits_and_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Events that arrive while a write is in progress share the next write and fsync;
    each is acknowledged only after it; a restart reads them all back, also past a torn
    record (a crash mid-append), and never one whose write failed."""
    sessions, service = build(tmp_path)
    calls = [lambda i=i: service.on_snapshot(event(1, "a", session=f"s{i}")) for i in range(5)]
    # One record, then the other four in one write.
    assert concurrent_writes(monkeypatch, calls, b'"session_id"') == [1, 4]
    assert sessions.dirty_count == 5
    real = atomic.write_fsync
    monkeypatch.setattr(
        atomic, "write_fsync", lambda *_a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    assert service.on_snapshot(event(2, "a", "b", session="s0")) is Ack.RETRY
    monkeypatch.setattr(atomic, "write_fsync", real)
    assert service.on_snapshot(event(2, "a", "b", session="s1")) is Ack.SUCCESS
    with segments(tmp_path)[-1].open("ab") as fh:
        fh.write(b"\x00\x00\x10\x00torn")  # a record cut short by a crash
    sessions2, _ = build(tmp_path)
    assert sessions2.staging.staged() == {"acme/s0": 1, "acme/s1": 2} | {
        f"acme/s{i}": 1 for i in range(2, 5)
    }
    assert sessions2.flush_due() == 5 and versions(sessions2, "s1") == [2]
    assert not segments(tmp_path)


def test_staging_files_of_earlier_versions_move_into_the_log(tmp_path: Path) -> None:
    codec = Codec("gzip", False, lambda: KEY)
    state = SessionState("acme", "s1", 3, (ChatMessage(role="user", content="a"),))
    blob, info = codec.encode(state.encoded, state.aad("staging"))
    legacy = tmp_path / "staging" / "ab" / "acme" / "s1.pending"
    legacy.parent.mkdir(parents=True)
    header = json.dumps({"version": 3, "codec": info.to_json()}).encode()
    legacy.write_bytes(header + b"\n" + blob)
    sessions, _ = build(tmp_path)
    assert sessions.dirty_count == 1 and not legacy.exists() and segments(tmp_path)
    assert sessions.flush_due() == 1 and versions(sessions) == [3]


def test_new_directories_are_made_durable_in_their_parents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda p: (synced.append(p), real(p)))
    _, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    sdir = next((tmp_path / "sessions").rglob("s1"))
    # The session's directory, its tenant's and its shard's entries are durable.
    for directory in (sdir, sdir.parent, sdir.parent.parent):
        assert directory.parent in synced
    synced.clear()
    service.on_snapshot(event(2, "a", "b", flush=True))
    assert sdir.parent not in synced  # nothing created the second time


def test_duplicate_delivery_writes_once(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    body = event(1, "a", flush=True)
    assert service.on_snapshot(body) is Ack.SUCCESS
    assert service.on_snapshot(body) is Ack.SUCCESS
    assert versions(sessions) == [1] and sessions.dirty_count == 0


def test_disk_full_is_retried_then_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions, service = build(tmp_path)
    real = atomic.write_fsync

    def full(*_a: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "write_fsync", full)
    assert service.on_snapshot(event(1, "a", flush=True)) is Ack.RETRY
    assert service.health().ready is False
    assert sessions.metrics.write_errors.labels("snapshot", "ENOSPC")._value.get() == 1
    assert versions(sessions) == []
    monkeypatch.setattr(atomic, "write_fsync", real)
    assert service.health().ready is True  # the probe write succeeds
    assert service.on_snapshot(event(1, "a", flush=True)) is Ack.SUCCESS  # redelivery
    assert versions(sessions) == [1]


def test_flush_cycle_keeps_sessions_dirty_on_disk_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = Clock()
    sessions, service = build(tmp_path, clock, idle_ms=1)
    service.on_snapshot(event(1, "a"))
    monkeypatch.setattr(
        atomic.os, "rename", lambda *_a: (_ for _ in ()).throw(OSError(errno.EROFS, "ro"))
    )
    clock.now += 1
    assert sessions.flush_due() == 0 and sessions.dirty_count == 1
    assert not sessions.readiness.ready
    monkeypatch.undo()
    assert sessions.flush_due() == 1 and sessions.readiness.ready


def test_invalid_and_traversal_ids_are_dropped(tmp_path: Path) -> None:
    _, service = build(tmp_path / "root")
    for sid in ("../../etc", "..", ".hidden"):
        body = json.loads(event(1, "a"))
        body["session_id"] = sid
        assert service.on_snapshot(json.dumps(body).encode()) is Ack.DROP
    assert not (tmp_path / "etc").exists()


def test_restore_prefers_memory_then_disk(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    service.on_snapshot(event(2, "a", "b"))  # dirty, not on disk yet
    reply = invoke(service, "restore", b'{"tenant": "acme", "session_id": "s1"}')
    assert reply["version"] == 2 and [m["content"] for m in reply["messages"]] == ["a", "b"]
    chosen = invoke(service, "restore", b'{"tenant": "acme", "session_id": "s1", "version": 1}')
    assert chosen["version"] == 1
    # After a restart only disk remains.
    sessions.flush_all()
    _, service2 = build(tmp_path)
    assert invoke(service2, "restore", b'{"tenant": "acme", "session_id": "s1"}')["version"] == 2


def test_a_snapshot_record_is_kept_with_its_version_and_restored(tmp_path: Path) -> None:
    """A stored response is archived as a snapshot whose ``record`` is the response
    object: each version keeps its own, through staging, disk (encrypted) and a restart."""
    sessions, service = build(tmp_path, encrypt=True)
    for version, status in ((1, "queued"), (2, "completed")):
        body = json.loads(event(version, "a", session="resp_1"))
        body["record"] = {"response": {"id": "resp_1", "status": status}}
        assert service.on_snapshot(json.dumps(body).encode()) is Ack.SUCCESS
    ask = b'{"tenant": "acme", "session_id": "resp_1"}'
    assert invoke(service, "restore", ask)["record"]["response"]["status"] == "completed"
    sessions.flush_all()
    _, restarted = build(tmp_path, encrypt=True)
    reply = invoke(restarted, "restore", ask)
    assert reply["version"] == 2 and reply["record"]["response"]["status"] == "completed"
    plain = invoke(restarted, "restore", b'{"tenant": "acme", "session_id": "s1"}')
    assert "error" in plain  # never archived
    service.on_snapshot(event(1, "a", flush=True))
    assert invoke(service, "restore", b'{"tenant": "acme", "session_id": "s1"}')["record"] is None


def test_unknown_session_is_answered_by_the_bloom_filter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, service = build(tmp_path)

    def no_disk(*_a: object) -> None:
        raise AssertionError("disk touched")

    monkeypatch.setattr(sessions.store, "latest", no_disk)
    reply = invoke(service, "restore", b'{"tenant": "acme", "session_id": "never"}')
    assert reply["error"]["status"] == 404
    with pytest.raises(NotFoundError):
        sessions.restore("acme", "never")
    assert isinstance(AutoGLMError.from_payload(reply["error"]), NotFoundError)


def test_bloom_filter_has_no_false_negatives() -> None:
    bloom = BloomFilter(1000, 0.01)
    keys = [f"t/s{i}" for i in range(1000)]
    for key in keys:
        bloom.add(key)
    assert all(k in bloom for k in keys)
    false_positives = sum(f"t/x{i}" in bloom for i in range(10_000))
    assert false_positives < 300


def deletion(version: int, session: str = "s1") -> bytes:
    body = {"tenant": "acme", "session_id": session, "version": version, "messages": []}
    return json.dumps({**body, "deleted": True}).encode()


def restore_status(service: ArchiverService, session: str = "s1") -> int:
    reply = invoke(service, "restore", json.dumps({"tenant": "acme", "session_id": session}))
    return int(reply["error"]["status"]) if "error" in reply else 200


def test_deletion_removes_versions_pending_state_and_heads(tmp_path: Path) -> None:
    clock = Clock()
    sessions, service = build(tmp_path, clock, idle_ms=1)
    service.on_snapshot(event(1, "a", flush=True))
    service.on_snapshot(event(2, "a", "b", flush=True))  # on disk and the cached head
    service.on_snapshot(event(3, "a", "b", "c"))  # dirty, staged
    assert versions(sessions) == [1, 2] and sessions.dirty_count == 1
    assert service.on_snapshot(deletion(3)) is Ack.SUCCESS
    assert sessions.dirty_count == 0
    assert sessions.staging.staged() == {} and not segments(tmp_path)
    assert not list(tmp_path.rglob("context.bin"))  # no version left, not even hidden
    clock.now += 1
    assert sessions.flush_due() == 0 and sessions.flush_all() == 0  # nothing re-created
    assert not list(tmp_path.rglob("context.bin"))
    assert restore_status(service) == 404
    with pytest.raises(NotFoundError):
        sessions.restore("acme", "s1", 2)


def test_deletion_is_idempotent_and_covers_never_archived_ids(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    assert service.on_snapshot(deletion(1)) is Ack.SUCCESS
    assert service.on_snapshot(deletion(1)) is Ack.SUCCESS  # redelivery
    assert versions(sessions) == [] and restore_status(service) == 404
    # Deleted before the archiver saw it: its snapshot may still arrive afterwards.
    assert service.on_snapshot(deletion(1, session="fresh")) is Ack.SUCCESS
    assert service.on_snapshot(event(1, "a", session="fresh", flush=True)) is Ack.SUCCESS
    assert versions(sessions, "fresh") == [] and restore_status(service, "fresh") == 404


def test_stale_snapshot_after_deletion_does_not_resurrect(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    service.on_snapshot(deletion(2))
    # Redeliveries of earlier snapshots, including the deleted version itself.
    for body in (event(1, "a", flush=True), event(2, "a", "b", flush=True), event(2, "x")):
        assert service.on_snapshot(body) is Ack.SUCCESS
    assert sessions.metrics.events.labels("snapshot", "after_deletion")._value.get() == 3
    assert versions(sessions) == [] and sessions.dirty_count == 0
    assert restore_status(service) == 404
    # Still deleted after a restart: the marker is on disk, not only in memory.
    sessions2, service2 = build(tmp_path)
    assert service2.on_snapshot(event(2, "a", "b", flush=True)) is Ack.SUCCESS
    assert versions(sessions2) == [] and restore_status(service2) == 404
    # A later version comes only from a live session (the id re-created): archived anew.
    assert service2.on_snapshot(event(3, "new", flush=True)) is Ack.SUCCESS
    reply = invoke(service2, "restore", b'{"tenant": "acme", "session_id": "s1"}')
    assert reply["version"] == 3 and [m["content"] for m in reply["messages"]] == ["new"]


def test_deletion_with_history_is_dropped(tmp_path: Path) -> None:
    sessions, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    body = json.loads(event(1, "a"))
    assert service.on_snapshot(json.dumps({**body, "deleted": True}).encode()) is Ack.DROP
    assert versions(sessions) == [1]


def test_deletion_disk_error_is_retried_and_never_serves_deleted_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    service.on_snapshot(event(2, "a", "b"))  # staged

    def read_only(*_a: object, **_k: object) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    # The marker lands, removing the versions fails: the crash-between-steps state.
    monkeypatch.setattr("autoglm.archiver.snapshots.shutil.rmtree", read_only)
    assert service.on_snapshot(deletion(2)) is Ack.RETRY
    assert not sessions.readiness.ready
    assert list(tmp_path.rglob("context.bin"))  # still on disk ...
    assert restore_status(service) == 404  # ... but never served
    monkeypatch.undo()
    # A restart before the redelivery does not reload the deleted staged state.
    sessions2, service2 = build(tmp_path)
    assert sessions2.dirty_count == 0 and not segments(tmp_path)
    assert service2.on_snapshot(deletion(2)) is Ack.SUCCESS  # the redelivery
    assert not list(tmp_path.rglob("context.bin")) and sessions2.readiness.ready


def test_deletion_marker_write_failure_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    real = atomic.write_fsync
    monkeypatch.setattr(
        atomic, "write_fsync", lambda *_a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    assert service.on_snapshot(deletion(1)) is Ack.RETRY
    assert not sessions.readiness.ready
    monkeypatch.setattr(atomic, "write_fsync", real)
    assert service.on_snapshot(deletion(1)) is Ack.SUCCESS
    assert versions(sessions) == [] and restore_status(service) == 404
    assert sessions.readiness.ready
