"""Snapshot layout, atomic writes, audit files and disk faults of the archiver."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm.archiver import atomic
from autoglm.archiver.audit import AuditLog
from autoglm.archiver.codec import Cipher, Codec
from autoglm.archiver.settings import ArchiverSettings
from autoglm.archiver.snapshots import SessionState, SnapshotStore
from autoglm.core.schemas import ChatMessage
from tests.support.held_writes import concurrent_writes

KEY = Cipher(bytes(range(32)))
MESSAGES = (ChatMessage(role="user", content="hi"), ChatMessage(role="assistant", content="yo"))


def store(root: Path, *, max_keep: int = 10, compression: str = "gzip") -> SnapshotStore:
    settings = ArchiverSettings(root=root)
    codec = Codec(compression, False, lambda: KEY)  # type: ignore[arg-type]
    return SnapshotStore(root, codec, settings.model_dump(mode="json"), max_keep)


def state(version: int, messages: tuple[ChatMessage, ...] = MESSAGES) -> SessionState:
    return SessionState("acme", "s1", version, messages, model="demo-glm")


def test_layout_metadata_and_config(tmp_path: Path) -> None:
    path = store(tmp_path).write(state(3), "flush")
    shard = hashlib.md5(b"acme").hexdigest()[:2]
    assert path == tmp_path / "sessions" / shard / "acme" / "s1" / "00000003"
    assert sorted(p.name for p in path.iterdir()) == ["config.yaml", "context.bin", "metadata.json"]
    meta = json.loads((path / "metadata.json").read_text())
    context = (path / "context.bin").read_bytes()
    assert meta["sha256"] == hashlib.sha256(context).hexdigest()
    assert meta["version"] == 3 and meta["steps"] == 2 and meta["model"] == "demo-glm"
    assert meta["trigger"] == "flush" and meta["settings_digest"].startswith("sha256:")
    assert json.loads(gzip.decompress(context))["messages"][0] == {"role": "user", "content": "hi"}
    config = yaml.safe_load((path / "config.yaml").read_text())
    assert config["root"] == str(tmp_path) and config["autosave"]["max_keep"] == 10


def test_rewriting_a_version_is_a_no_op(tmp_path: Path) -> None:
    snapshots = store(tmp_path)
    path = snapshots.write(state(1), "flush")
    before = (path / "metadata.json").read_bytes()
    snapshots.write(state(1, (ChatMessage(role="user", content="other"),)), "flush")
    assert (path / "metadata.json").read_bytes() == before


def test_rotation_keeps_newest_max_keep(tmp_path: Path) -> None:
    snapshots = store(tmp_path, max_keep=2)
    for v in range(1, 5):
        snapshots.write(state(v), "steps")
    assert snapshots.versions("acme", "s1") == [3, 4]


def test_restore_verifies_sha256_and_falls_back(tmp_path: Path) -> None:
    snapshots = store(tmp_path)
    snapshots.write(state(1), "flush")
    newest = snapshots.write(state(2), "flush")
    (newest / "context.bin").write_bytes(b"tampered")
    latest = snapshots.latest("acme", "s1")
    assert latest is not None and latest.version == 1
    with pytest.raises(Exception, match="checksum"):
        snapshots.read("acme", "s1", 2)


def test_crash_between_write_and_rename_leaves_nothing_restorable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = store(tmp_path)
    snapshots.write(state(1), "flush")

    def crash(*_a: object) -> None:
        raise OSError(errno.EIO, "power lost")

    monkeypatch.setattr(atomic.os, "rename", crash)
    with pytest.raises(OSError):
        snapshots.write(state(2), "flush")
    assert snapshots.versions("acme", "s1") == [1]
    latest = snapshots.latest("acme", "s1")
    assert latest is not None and latest.version == 1
    assert [p.name for p in snapshots.session_dir("acme", "s1").iterdir()] == ["00000001"]


def test_half_written_temp_dir_is_never_a_version(tmp_path: Path) -> None:
    snapshots = store(tmp_path)
    snapshots.write(state(1), "flush")
    torn = snapshots.session_dir("acme", "s1") / ".00000002.deadbeef.tmp"
    torn.mkdir()
    (torn / "context.bin").write_bytes(b"partial")
    assert snapshots.versions("acme", "s1") == [1]


def test_crash_before_rename_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.json"
    atomic.atomic_write(target, b"old")

    def crash(*_a: object) -> None:
        raise OSError(errno.EIO, "crash")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        atomic.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_write_boundary_errors_propagate_and_leave_no_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    def fail(*_a: object) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(atomic, "write_fsync", fail)
    snapshots = store(tmp_path)
    with pytest.raises(OSError) as err:
        snapshots.write(state(1), "flush")
    assert err.value.errno == code
    assert snapshots.versions("acme", "s1") == []


def test_audit_appends_per_tenant_and_day(tmp_path: Path) -> None:
    from autoglm.core.schemas import AuditEvent

    audit = AuditLog(tmp_path)
    event = {"tenant": "t1", "action": "chat", "resource": "/v1/x", "status": 200}
    for rid in ("a", "b"):
        audit.append(AuditEvent(**event, latency_ms=1.0, time=0, request_id=rid))  # type: ignore[arg-type]
    lines = (tmp_path / "audit" / "t1" / "1970-01-01.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["a", "b"]


def test_audit_events_delivered_together_share_a_write_and_an_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one append is being written, the others queue and go in the next write;
    each caller returns only after its own line is durable."""
    from autoglm.core.schemas import AuditEvent

    audit = AuditLog(tmp_path)
    event = {"tenant": "t1", "action": "chat", "resource": "/v1/x", "status": 200}
    events = [AuditEvent(**event, latency_ms=1.0, time=0, request_id=str(i)) for i in range(5)]  # type: ignore[arg-type]
    calls = [lambda e=e: audit.append(e) for e in events]
    assert concurrent_writes(monkeypatch, calls, b"\n") == [1, 4]
    lines = (tmp_path / "audit" / "t1" / "1970-01-01.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["request_id"] for line in lines) == ["0", "1", "2", "3", "4"]


def test_a_failed_append_leaves_no_torn_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "day.jsonl"
    atomic.durable_append(path, b'{"a": 1}\n')
    real = atomic.write_fsync

    def torn(fh: Any, data: bytes) -> None:
        fh.write(data[:3])
        fh.flush()
        raise OSError(errno.ENOSPC, "full")

    monkeypatch.setattr(atomic, "write_fsync", torn)
    with pytest.raises(OSError):
        atomic.durable_append(path, b'{"b": 2}\n')
    monkeypatch.setattr(atomic, "write_fsync", real)
    atomic.durable_append(path, b'{"c": 3}\n')
    assert path.read_bytes() == b'{"a": 1}\n{"c": 3}\n'
