"""Dapr Sentry for a local stack: mTLS between the sidecars, as in Kubernetes.

Dapr's access lists (Configuration ``accessControl``) know a caller only by the SPIFFE
id in its certificate; without mTLS every caller is anonymous and a deny-by-default list
refuses everything, while daprd's internal gRPC port would take calls from any local
process. So each stack runs Sentry (self-signed CA, generated at start into a 0700
folder), and each daprd gets its workload certificate from it, with the namespace of
``k8s/`` (``autoglm``), so the same access lists apply locally and in a cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from autoglm.core import contracts
from autoglm.devstack.layout import tool
from autoglm.devstack.processes import ManagedProcess, free_port

_SENTRY_CONFIG = """\
apiVersion: dapr.io/v1alpha1
kind: Configuration
metadata:
  name: daprsystem
spec:
  mtls:
    enabled: true
    workloadCertTTL: 24h
    allowedClockSkew: 15m
"""


@dataclass(frozen=True)
class Sentry:
    """Where the stack's Sentry listens and the CA certificate that anchors trust."""

    address: str
    trust_anchors: str
    #: The stack's placement service (``autoglm.devstack.placement``), once started:
    #: every daprd then runs the actor runtime (inference hosts session actors, the
    #: gateway calls them).
    placement: str | None = None

    def daprd_args(self, app_id: str) -> list[str]:
        """daprd's flags; the placement service only for the apps that host or call
        actors (``contracts.actor_apps``): Dapr's access lists do not cover actor
        calls, so the other sidecars get no actor runtime at all."""
        args = ["--enable-mtls", "--sentry-address", self.address]
        if self.placement and app_id in contracts.actor_apps():
            args += ["--placement-host-address", self.placement]
        return args

    def daprd_env(self) -> dict[str, str]:
        return {"DAPR_TRUST_ANCHORS": self.trust_anchors, "NAMESPACE": contracts.NAMESPACE}


def sentry_available() -> bool:
    try:
        tool("sentry")
    except FileNotFoundError:
        return False
    return True


def control_plane_listeners(port: int, healthz: int, metrics: int) -> list[str]:
    """Flags of a Dapr control-plane service (Sentry, placement): its API, health and
    metrics ports, each on loopback only."""
    return [
        "--port",
        str(port),
        "--listen-address",
        "127.0.0.1",
        "--healthz-port",
        str(healthz),
        "--healthz-listen-address",
        "127.0.0.1",
        "--metrics-port",
        str(metrics),
        "--metrics-listen-address",
        "127.0.0.1",
        "--log-as-json",
    ]


def start_sentry(workdir: Path, log_path: Path) -> tuple[ManagedProcess, Sentry]:
    """Start Sentry on free loopback ports; return once it serves, with its CA."""
    creds = workdir / "sentry"
    creds.mkdir(parents=True, exist_ok=True)
    creds.chmod(0o700)
    config = creds / "config.yaml"
    config.write_text(_SENTRY_CONFIG)
    port, healthz, metrics = free_port(), free_port(), free_port()
    proc = ManagedProcess(
        "sentry",
        [
            str(tool("sentry")),
            "--issuer-credentials",
            str(creds),
            "--config",
            str(config),
            *control_plane_listeners(port, healthz, metrics),
        ],
        log_path,
    ).start()
    proc.wait_until(
        lambda: httpx.get(f"http://127.0.0.1:{healthz}/healthz", timeout=1).status_code == 200,
        60,
        "Sentry healthy",
    )
    anchors = (creds / "ca.crt").read_text()
    return proc, Sentry(f"127.0.0.1:{port}", anchors)
