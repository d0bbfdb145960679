from __future__ import annotations

import errno
import gzip
import hashlib
import json
from pathlib import Path

import pytest

from autoglm.archiver import atomic
from autoglm.archiver.archive import Archive
from autoglm.archiver.serving import ArchiverService
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import SnapshotEvent

SNAP = {
    "tenant": "acme",
    "session_id": "s1",
    "version": 3,
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
}


def test_snapshot_layout_and_checksum(tmp_path: Path) -> None:
    archive = Archive(tmp_path)
    path = archive.write_snapshot(SnapshotEvent.model_validate(SNAP))
    shard = hashlib.md5(b"acme").hexdigest()[:2]
    assert path == tmp_path / "sessions" / shard / "acme" / "s1" / "00000003"
    meta = json.loads((path / "metadata.json").read_text())
    context = (path / "context.bin").read_bytes()
    assert meta["sha256"] == hashlib.sha256(context).hexdigest()
    assert json.loads(gzip.decompress(context)) == SNAP["messages"]
    assert meta["version"] == 3 and meta["steps"] == 2


def test_duplicate_delivery_writes_once(tmp_path: Path) -> None:
    service = ArchiverService(Archive(tmp_path))
    body = json.dumps(SNAP).encode()
    assert service.on_snapshot(body) is Ack.SUCCESS
    meta = next(tmp_path.rglob("metadata.json"))
    first = meta.read_text()
    assert service.on_snapshot(body) is Ack.SUCCESS
    assert meta.read_text() == first
    assert len(list(tmp_path.rglob("metadata.json"))) == 1


def test_disk_full_is_retried_not_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*_a: object, **_k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("autoglm.archiver.archive.atomic_write", full)
    service = ArchiverService(Archive(tmp_path))
    assert service.on_snapshot(json.dumps(SNAP).encode()) is Ack.RETRY
    assert not list(tmp_path.rglob("metadata.json"))


def test_path_traversal_in_ids_is_dropped(tmp_path: Path) -> None:
    service = ArchiverService(Archive(tmp_path / "root"))
    evil = dict(SNAP, session_id="../../etc")
    assert service.on_snapshot(json.dumps(evil).encode()) is Ack.DROP
    assert not (tmp_path / "etc").exists()


def test_crash_before_rename_leaves_old_file(
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


def test_audit_appends_per_tenant_and_day(tmp_path: Path) -> None:
    service = ArchiverService(Archive(tmp_path))
    event = {
        "tenant": "t1",
        "action": "chat",
        "resource": "/v1/chat/completions",
        "status": 200,
        "latency_ms": 3.5,
        "time": 0,
    }
    assert service.on_audit(json.dumps(dict(event, request_id="a")).encode()) is Ack.SUCCESS
    assert service.on_audit(json.dumps(dict(event, request_id="b")).encode()) is Ack.SUCCESS
    lines = (tmp_path / "audit" / "t1" / "1970-01-01.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["action"] == "chat"
