"""The archiver through real daprd sidecars, Redis and Vault: snapshots, SIGTERM drain,
restore, disk-full redelivery and a resumed upload.

The archiver runs as ``python -m tests.e2e.test_archiver``: the real ``main()`` with one
fault switch at the file-write boundary (``atomic.write_fsync`` raises ENOSPC while a
switch file exists), which is how a full disk is injected into a separate process.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoglm.core.errors import ConflictError, NotFoundError
from autoglm.core.sidecar import Sidecar
from autoglm.devstack.multiapp import AppEntry, launch
from autoglm.devstack.processes import ManagedProcess, free_port
from autoglm.devstack.sidecars import SidecarPorts
from tests.support.archive import has_version
from tests.support.metrics import metric_sum
from tests.support.polling import wait_for, wait_settled
from tests.support.stack import AppUnderTest, Backing, start_app

APP_ID = "archiver-e2e"  # not "archiver": the mesh's archiver may run in the same session
FAULT_ENV = "AUTOGLM_E2E_FAULT_FILE"


def _serve_with_fault_switch() -> None:
    from autoglm.archiver import __main__ as archiver_main
    from autoglm.archiver import atomic

    switch = Path(os.environ[FAULT_ENV])
    real = atomic.write_fsync

    def write_fsync(fh: Any, data: bytes) -> None:
        if switch.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fh, data)

    atomic.write_fsync = write_fsync  # type: ignore[assignment]
    sys.exit(archiver_main.main())


@dataclass
class Rig:
    backing: Backing
    workdir: Path
    resources: Path
    client: Sidecar
    stack: ExitStack
    root: Path
    fault: Path
    metrics_port: int = field(default_factory=free_port)
    app: ManagedProcess | None = None
    sidecar: ManagedProcess | None = None

    def start(self) -> None:
        port = free_port()
        entry = AppEntry(
            APP_ID,
            port,
            "grpc",
            SidecarPorts.allocate(),
            [sys.executable, "-m", "tests.e2e.test_archiver"],
            env={
                "PYTHONUNBUFFERED": "1",
                FAULT_ENV: str(self.fault),
                "AUTOGLM_ARCHIVER_PORT": str(port),
                "AUTOGLM_ARCHIVER_ROOT": str(self.root),
                "AUTOGLM_ARCHIVER_METRICS_PORT": str(self.metrics_port),
                # Only flush events and the shutdown drain write snapshots here.
                "AUTOGLM_ARCHIVER_AUTOSAVE__INTERVAL_SECONDS": "3600",
                "AUTOGLM_ARCHIVER_AUTOSAVE__EVERY_N_STEPS": "1000",
                "AUTOGLM_ARCHIVER_AUTOSAVE__IDLE_MS": "3600000",
                "AUTOGLM_ARCHIVER_AUTOSAVE__ENCRYPT": "true",
                "AUTOGLM_ARCHIVER_RETENTION__ENABLED": "false",
            },
        )
        started: list[ManagedProcess] = []
        try:
            self.sidecar, self.app = launch(
                entry,
                self.resources,
                self.backing.config,
                self.workdir / "logs",
                Path.cwd(),
                self.backing.creds,
                self.backing.sentry,
                app_log=self.workdir / "logs" / f"{APP_ID}.log",
                started=started,
            )
        finally:
            for proc in started:
                self.stack.callback(proc.stop)

    def stop_sidecar(self) -> None:
        if self.sidecar is not None:
            self.sidecar.stop()

    def call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self.client.invoke(APP_ID, method, payload, timeout=30)

    def publish(self, session: str, version: int, contents: list[str], flush: bool) -> None:
        messages = [{"role": "user", "content": c} for c in contents]
        self.client.publish(
            "session.snapshots",
            {
                "tenant": "acme",
                "session_id": session,
                "version": version,
                "messages": messages,
                "flush": flush,
            },
        )

    def versions(self, session: str) -> list[str]:
        return sorted(
            p.parent.name for p in self.root.glob(f"sessions/*/acme/{session}/*/metadata.json")
        )


@pytest.fixture(scope="module")
def rig(backing: Backing, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    workdir = tmp_path_factory.mktemp("archiver-e2e")
    resources = workdir / "resources"
    resources.mkdir()
    for src in backing.resources.glob("*.yaml"):
        docs = [d for d in yaml.safe_load_all(src.read_text()) if d]
        for doc in docs:
            # The checked-in resiliency policy (delivery retries), applied to this app id too.
            if doc.get("kind") == "Resiliency" and doc.get("scopes"):
                doc["scopes"].append(APP_ID)
        (resources / src.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    with ExitStack() as stack:
        client_app: AppUnderTest = start_app(backing, stack, "archiver-e2e-client", None)
        client = client_app.client()
        stack.callback(client.close)
        # Last to run: once the rig's archiver has stopped, its consumer groups go too,
        # so later tests that wait for a topic to settle do not wait on a reader that
        # is gone (``tests/support/polling.stream_settled`` counts every group).
        stack.callback(_drop_consumer_groups, backing)
        r = Rig(backing, workdir, resources, client, stack, workdir / "archive", workdir / "full")
        r.start()
        yield r


def _drop_consumer_groups(backing: Backing) -> None:
    redis = backing.redis_client()
    for topic in ("session.snapshots", "audit"):
        with contextlib.suppress(Exception):  # never created: nothing to drop
            redis.xgroup_destroy(topic, APP_ID)


def test_snapshot_event_becomes_encrypted_snapshot(rig: Rig) -> None:
    session = f"s-{uuid.uuid4().hex[:10]}"
    rig.publish(session, 1, ["keep me secret"], flush=True)
    wait_for("snapshot on disk", lambda: rig.versions(session) == ["00000001"], 30)
    vdir = next(rig.root.glob(f"sessions/*/acme/{session}/00000001"))
    assert b"keep me secret" not in (vdir / "context.bin").read_bytes()
    assert yaml.safe_load((vdir / "metadata.json").read_text())["codec"]["encrypted"] is True
    reply = rig.call("restore", {"tenant": "acme", "session_id": session})
    assert reply["version"] == 1 and reply["messages"][0]["content"] == "keep me secret"
    with pytest.raises(NotFoundError):
        rig.call("restore", {"tenant": "acme", "session_id": "never-existed"})


def test_sigterm_drains_dirty_sessions_and_restore_reads_them(rig: Rig) -> None:
    sessions = [f"d-{uuid.uuid4().hex[:10]}" for _ in range(2)]
    for s in sessions:
        rig.publish(s, 1, ["a"], flush=False)
        rig.publish(s, 2, ["a", "b"], flush=False)
    wait_for("dirty sessions", lambda: rig.call("health", {})["dirty_sessions"] >= 2, 30)
    # Both second versions taken (daprd may hold an event for its bulk window).
    wait_for("v2 staged", lambda: all(has_version(rig.root, "acme", s, 2) for s in sessions), 30)
    assert all(rig.versions(s) == [] for s in sessions)
    assert rig.app is not None
    rig.app.signal(signal.SIGTERM)
    wait_for("archiver exit", lambda: rig.app is not None and not rig.app.alive(), 30)
    assert all(rig.versions(s) == ["00000002"] for s in sessions)
    meta = next(rig.root.glob(f"sessions/*/acme/{sessions[0]}/00000002/metadata.json"))
    assert yaml.safe_load(meta.read_text())["trigger"] == "shutdown"
    rig.stop_sidecar()
    rig.start()
    reply = rig.call("restore", {"tenant": "acme", "session_id": sessions[1]})
    assert reply["version"] == 2 and [m["content"] for m in reply["messages"]] == ["a", "b"]


def _write_errors(rig: Rig) -> float:
    return metric_sum(rig.metrics_port, "autoglm_archiver_write_errors_total")


def test_disk_full_events_are_retried_and_written_when_space_returns(rig: Rig) -> None:
    sessions = [f"f-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    rig.fault.touch()
    try:
        for s in sessions:
            rig.publish(s, 1, ["x"], flush=True)
        wait_for("write errors exported", lambda: _write_errors(rig) >= 3, 30)
        assert rig.call("health", {})["ready"] is False
        before = _write_errors(rig)
        wait_for("a redelivery", lambda: _write_errors(rig) > before, 30)
        assert all(rig.versions(s) == [] for s in sessions)
    finally:
        rig.fault.unlink()
    wait_for("pending written", lambda: all(rig.versions(s) == ["00000001"] for s in sessions), 60)
    wait_for("ready again", lambda: rig.call("health", {})["ready"], 10)
    # Redeliveries after success created no extra versions.
    wait_settled(rig.backing.redis_client(), "session.snapshots")
    assert all(rig.versions(s) == ["00000001"] for s in sessions)


def test_interrupted_upload_resumes_and_verifies(rig: Rig) -> None:
    data = b"%PDF-1.7\n" + os.urandom(300_000)
    digest = hashlib.sha256(data).hexdigest()
    started = rig.call(
        "attachment_start",
        {
            "tenant": "acme",
            "filename": "report.pdf",
            "mime_type": "application/pdf",
            "size": len(data),
            "sha256": digest,
        },
    )
    aid = started["id"]
    assert started["offset"] == 0 and started["version"] == 1

    def put(offset: int, chunk: bytes) -> dict[str, Any]:
        body = {
            "tenant": "acme",
            "id": aid,
            "offset": offset,
            "data": base64.b64encode(chunk).decode(),
        }
        return rig.call("attachment_put", body)

    assert put(0, data[:100_000])["offset"] == 100_000
    # The archiver dies mid-upload; the checkpoint lives in the state store.
    assert rig.app is not None
    rig.app.signal(signal.SIGKILL)
    rig.stop_sidecar()
    rig.start()
    with pytest.raises(ConflictError) as err:
        put(0, data[:100_000])
    assert err.value.details["expected_offset"] == 100_000
    put(100_000, data[100_000:200_000])
    done = put(200_000, data[200_000:])
    assert done["complete"] and done["sha256"] == digest
    got = rig.call("attachment_get", {"tenant": "acme", "id": aid})
    assert base64.b64decode(got["data"]) == data and got["category"] == "documents"
    with pytest.raises(NotFoundError):
        rig.call("attachment_get", {"tenant": "other", "id": aid})


if __name__ == "__main__":
    _serve_with_fault_switch()
