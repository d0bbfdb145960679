"""Replica model, front door configuration, launcher guards (no stack needed)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from autoglm.core.readiness import sidecar_problems
from autoglm.devstack import replicas
from autoglm.devstack.frontdoor import Backend, render_config
from autoglm.devstack.multiapp import AppEntry
from autoglm.devstack.processes import ancestors, describe_pid, port_holders
from autoglm.devstack.replicas import Replica, parse_replicas, replica_entries
from autoglm.devstack.run import answered_by_us, port_conflicts
from autoglm.devstack.sidecars import SidecarPorts
from tests.support.polling import wait_for


def test_parse_replicas() -> None:
    assert parse_replicas(None) == {"gateway": 1, "inference": 1, "archiver": 1}
    assert parse_replicas("2") == {"gateway": 2, "inference": 2, "archiver": 1}
    assert parse_replicas("gateway=3") == {"gateway": 3, "inference": 1, "archiver": 1}
    with pytest.raises(ValueError, match="single writer"):
        parse_replicas("archiver=2")
    with pytest.raises(ValueError, match="bad replica count"):
        parse_replicas("gateway=x")
    with pytest.raises(ValueError, match="at least one"):
        parse_replicas("inference=0")


def test_replicas_get_ports_of_their_own() -> None:
    entry = AppEntry(
        "inference",
        50051,
        "grpc",
        SidecarPorts(3501, 50002, 40000, 9091),
        ["python"],
        env={"AUTOGLM_INFERENCE_PORT": "50051", "AUTOGLM_INFERENCE_METRICS_PORT": "9464", "X": "1"},
    )
    first, second, third = replica_entries(entry, 3)
    assert first == entry
    ports = set()
    for e in (second, third):
        assert e.env["AUTOGLM_INFERENCE_PORT"] == str(e.app_port)
        assert e.env["X"] == "1"
        ports |= {e.app_port, int(e.env["AUTOGLM_INFERENCE_METRICS_PORT"]), *vars(e.ports).values()}
    assert len(ports) == 12 and not ports & {50051, 9464, 3501, 50002, 40000, 9091}
    # Behind a front door even the first replica leaves the public port free.
    assert replica_entries(entry, 1, keep_first=False)[0].app_port != 50051


def test_sidecar_problems_name_what_is_missing() -> None:
    meta = {
        "id": "inference",
        "components": [{"name": "statestore"}, {"name": "pubsub"}],
        "subscriptions": [{"pubsubname": "pubsub", "topic": "inference.requests"}],
    }
    assert sidecar_problems(meta, "inference") == []
    deaf = {**meta, "subscriptions": []}
    assert sidecar_problems(deaf, "inference") == ["no subscription to pubsub/inference.requests"]
    assert "component 'vault' not loaded" in sidecar_problems(meta, "inference", ["vault"])
    assert sidecar_problems(meta, "archiver")[0].startswith("sidecar serves app id")


def test_front_door_config_is_valid_haproxy(tmp_path: Path) -> None:
    # `make test` installs haproxy (system-deps): its absence is a setup error, not a skip.
    assert shutil.which("haproxy"), "haproxy missing: run `make system-deps`"
    cfg = render_config(18080, [Backend("gateway-0", 1234), Backend("gateway-1", 1235)], tmp_path)
    text = cfg.read_text()
    assert "server gateway-0 127.0.0.1:1234 check" in text and "GET /readyz" in text
    out = subprocess.run(["haproxy", "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_port_holder_is_named() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert port_holders(port) == [os.getpid()]
        assert f"pid {os.getpid()}" in describe_pid(os.getpid())
        # `ready` only when the listener is ours (or a child of ours).
        assert answered_by_us(port, {os.getppid()}) and not answered_by_us(port, {1})
        msgs = port_conflicts({port: "gateway-0 app port"})
        assert f"port {port} (gateway-0 app port) is in use by pid {os.getpid()}" in msgs[0]
    assert port_conflicts({port: "x"}) == []
    assert ancestors(os.getpid())[:2] == [os.getpid(), os.getppid()]


def test_children_do_not_outlive_their_launcher(tmp_path: Path) -> None:
    """A launcher killed with SIGKILL (no cleanup runs) takes its services with it."""
    pidfile = tmp_path / "child.pid"
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from autoglm.devstack.processes import ManagedProcess; "
            f"p = ManagedProcess('svc', ['sleep', '300'], None).start(); "
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(300)",
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )

    def started() -> bool:
        assert launcher.poll() is None, "the launcher died"
        return pidfile.exists() and bool(pidfile.read_text())

    wait_for("the service's pid", started, 20, every=0.05)
    child = int(pidfile.read_text())
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
            return Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"
        except (ProcessLookupError, FileNotFoundError):
            return True

    try:
        wait_for("the service ends with its launcher", gone, 5, every=0.05)
    except AssertionError:
        os.kill(child, signal.SIGKILL)
        raise


def test_dev_ps_and_down_see_and_stop_a_recorded_stack(tmp_path: Path) -> None:
    from autoglm.devstack.processes import ManagedProcess
    from autoglm.devstack.stackfile import (
        ProcessRecord,
        format_ps,
        ps_rows,
        read_stack,
        start_time,
        stop_stack,
        write_stack,
    )

    orphan = ManagedProcess("svc", ["sleep", "300"], tmp_path / "svc.log").start()
    path = tmp_path / "stack.json"
    record = ProcessRecord("redis", "redis", orphan.pid, start_time(orphan.pid), app_port=1)
    write_stack([record], path, replicas={"gateway": 1})
    stack = read_stack(path)
    assert stack is not None and stack.launcher_alive()  # we wrote it: we are its launcher
    assert stack.extra == {"replicas": {"gateway": 1}}
    text = format_ps(stack, ps_rows(stack))
    row = ["redis", "-", "redis", str(orphan.pid), "1", "-", "-", "-", "running"]
    assert text.splitlines()[2].split() == row
    # A launcher that is gone leaves orphans; `dev down` stops them by their group.
    stack.launcher_pid, stack.launcher_started = 1, None
    stop_stack(stack, timeout=5)
    assert not orphan.alive() and ps_rows(stack)[0]["state"] == "dead"


def test_a_replica_started_again_gets_a_new_internal_grpc_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Other daprds keep pooled connections to the old internal port in gRPC backoff;
    a restarted replica is reached on a fresh one (as a restarted pod on a new IP)."""
    monkeypatch.setattr(Replica, "_start", lambda self, timeout, started: None)
    monkeypatch.setattr(replicas, "nameresolution_db", lambda config, cwd: None)
    entry = AppEntry("inference", 50051, "grpc", SidecarPorts(3501, 50001, 50002, 9091), ["x"])
    replica = Replica(entry, 0, tmp_path, tmp_path / "config.yaml", tmp_path, tmp_path)
    replica.start()
    assert replica.ports == entry.ports
    replica.sidecar = object()  # type: ignore[assignment]  # it ran once
    replica.start()
    assert replica.ports.internal_grpc != 50002
    assert (replica.ports.http, replica.ports.grpc, replica.ports.metrics) == (3501, 50001, 9091)
    assert replica.app_port == 50051
