from __future__ import annotations

import os
import time
from pathlib import Path

import yaml

from autoglm.devstack.processes import ManagedProcess, free_port
from autoglm.devstack.sidecars import COMPONENTS_DIR, render_components


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = ManagedProcess(
        "sh", ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], tmp_path / "log"
    ).start()
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(pidfile.read_text())
    proc.stop(timeout=5)
    assert not proc.alive()
    time.sleep(0.1)
    try:
        os.kill(child, 0)
        alive = Path(f"/proc/{child}/stat").read_text().split()[2] != "Z"
    except ProcessLookupError:
        alive = False
    assert not alive, "grandchild survived the group kill"


def test_render_components_overrides_only_addresses(tmp_path: Path) -> None:
    resources, config = render_components(
        tmp_path,
        redis_addr="127.0.0.1:1111",
        vault_addr="http://127.0.0.1:2222",
        vault_token="tok",
    )
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in resources.glob("*.yaml")}
    assert set(docs) == {"statestore", "pubsub", "vault", "resiliency"}
    # Only the addresses change: the resiliency policy is copied as checked in.
    assert docs["resiliency"] == yaml.safe_load((COMPONENTS_DIR / "resiliency.yaml").read_text())
    meta = {m["name"]: m["value"] for m in docs["pubsub"]["spec"]["metadata"]}
    assert meta["redisHost"] == "127.0.0.1:1111" and meta["processingTimeout"] == "150s"
    vault = {m["name"]: m["value"] for m in docs["vault"]["spec"]["metadata"]}
    assert vault["vaultAddr"] == "http://127.0.0.1:2222" and vault["vaultToken"] == "tok"
    assert yaml.safe_load(config.read_text())["kind"] == "Configuration"


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Ports are bound later by the servers they go to; until then the OS may offer the
    same one again, and two servers of one stack would collide."""
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
