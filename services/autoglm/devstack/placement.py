"""Dapr's placement service for a local stack: where each actor lives.

Inference replicas host the ``InferenceSession`` actor type (session affinity, see
``autoglm.inference.actor_host``); placement keeps the table of which replica holds
which actor ids (a consistent hash over the replicas that host the type) and tells every
daprd when it changes. It runs with mTLS like the sidecars: its certificate comes from
the stack's Sentry, and daprd checks it as the control plane's ``dapr-placement``
identity, as in Kubernetes where the Dapr control plane runs it.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import httpx

from autoglm.devstack.layout import tool
from autoglm.devstack.mtls import Sentry, control_plane_listeners
from autoglm.devstack.processes import ManagedProcess, free_port


def placement_available() -> bool:
    try:
        tool("placement")
    except FileNotFoundError:
        return False
    return True


def start_placement(sentry: Sentry, workdir: Path, log_path: Path) -> tuple[ManagedProcess, Sentry]:
    """Start placement on free loopback ports with its identity from ``sentry``; return
    once it is healthy, with ``sentry`` extended by its address (every daprd started
    with that gets ``--placement-host-address``)."""
    anchors = workdir / "placement-ca.crt"
    anchors.parent.mkdir(parents=True, exist_ok=True)
    anchors.write_text(sentry.trust_anchors)
    port, healthz, metrics, raft = free_port(), free_port(), free_port(), free_port()
    proc = ManagedProcess(
        "placement",
        [
            str(tool("placement")),
            *control_plane_listeners(port, healthz, metrics),
            "--initial-cluster",
            f"dapr-placement-0=127.0.0.1:{raft}",
            "--tls-enabled",
            "--sentry-address",
            sentry.address,
            "--trust-anchors-file",
            str(anchors),
            # A replica that dies without saying goodbye is dropped from the table
            # within about this long (Kubernetes default 2 s / 3 s as well).
            "--keepalive-time",
            "1s",
            "--keepalive-timeout",
            "2s",
        ],
        log_path,
        # The control plane's namespace as daprd expects it (its default, "default").
        env={k: v for k, v in os.environ.items() if k != "NAMESPACE"},
    ).start()
    proc.wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{healthz}/healthz", timeout=1).status_code == 200,
        60,
        "placement healthy",
    )
    return proc, replace(sentry, placement=f"127.0.0.1:{port}")
