"""The archiver's disk fills up, then space comes back."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from autoglm.devstack.processes import free_port
from tests.chaos.conftest import MeshFactory, chat_body
from tests.support.polling import wait_for


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A 16 MiB tmpfs for the archive root. Mounting needs root (as CI runs): without it
    the test fails, saying so, rather than passing by skipping."""
    path = tmp_path_factory.mktemp("small-disk")
    if os.geteuid() != 0:
        pytest.fail("mounting a small tmpfs needs root; run the chaos tests as root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test: {done.stderr.decode().strip()}")
    yield path
    # Lazy: the archiver of this module's stack may still be stopping.
    subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb") as out:
        while True:
            out.write(b"\0" * 65536)
            out.flush()
    return filler


def _counter(port: int, name: str) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{")
    )


def test_snapshots_are_retried_while_the_disk_is_full_and_written_once_space_returns(
    small_disk: Path, own_mesh: MeshFactory
) -> None:
    """Proves: with the archive's disk full, a session's snapshot events are not lost:
    the archiver answers RETRY (counted as write errors, and it reports not ready), Dapr
    redelivers, and once space is back the snapshot is written and can be restored."""
    metrics = free_port()
    mesh = own_mesh(
        archive_root=small_disk / "archive",
        archiver={
            "AUTOGLM_ARCHIVER_METRICS_PORT": str(metrics),
            "AUTOGLM_ARCHIVER_AUTOSAVE__IDLE_MS": "200",
        },
    )
    filler = _fill(small_disk)
    with httpx.Client(base_url=mesh.gateway_url, headers=mesh.headers(), timeout=60) as c:
        session = c.post("/v1/sessions", json={"messages": []}).json()["id"]
        turn = c.post(
            "/v1/chat/completions", json={**chat_body("remember me"), "session_id": session}
        )
        assert turn.status_code == 200, turn.text
        wait_for(
            "the archiver failed to write",
            lambda: _counter(metrics, "autoglm_archiver_write_errors_total") > 0,
            timeout=30,
        )
        filler.unlink()

        def restored() -> bool:
            resp = httpx.post(
                # Through the gateway's daprd: only the gateway may call restore.
                f"{mesh.gateway.dapr_url}/v1.0/invoke/archiver/method/restore",
                json={"tenant": "acme", "session_id": session},
                headers=mesh.gateway.dapr_headers,
                timeout=10,
            )
            # Until the snapshot is on disk the reply is a structured not-found error.
            return resp.status_code == 200 and len(resp.json().get("messages", [])) == 2

        wait_for("the snapshot written after space returned", restored, timeout=60, every=1)
