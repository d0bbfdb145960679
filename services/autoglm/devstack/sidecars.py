"""Real daprd sidecars for local runs and tests, configured from ``components/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from autoglm.devstack.layout import COMPONENTS_DIR, DATA_DIR, REPO_ROOT, tool
from autoglm.devstack.processes import ManagedProcess, free_port


@dataclass(frozen=True)
class SidecarPorts:
    http: int
    grpc: int
    internal_grpc: int
    metrics: int

    @staticmethod
    def allocate() -> SidecarPorts:
        return SidecarPorts(free_port(), free_port(), free_port(), free_port())


@dataclass(frozen=True)
class DrainTimings:
    """How a replica is stopped gracefully. Taken out of name resolution, it keeps
    serving for ``settle_s`` (calls in flight finish while its sidecar still serves
    the app's own calls: state, publish); then daprd gets SIGTERM: it stops its
    subscriptions and lets calls still in flight finish within ``grace_s`` (the app's
    own shutdown grace) before it exits. (daprd's ``--dapr-block-shutdown-duration``
    waits for the app's health check to fail; without app health checks, which would
    mark a busy app unhealthy on this small machine, it ends at once, so the launcher
    does the waiting.)"""

    settle_s: float = 3.0
    grace_s: float = 30.0


def render_components(
    dst: Path,
    *,
    redis_addr: str,
    vault_addr: str,
    vault_token: str,
    otlp_endpoint: str | None = None,
    pubsub_metadata: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """Copy ``components/`` to ``dst`` with the given backing-service addresses.

    Tests run their own Redis and Vault on free ports; everything else (names, types,
    options) stays exactly as in the checked-in files, except ``pubsub_metadata`` (e.g. a
    short ``processingTimeout`` for tests that kill a consumer). Returns (resources dir,
    config file).
    """
    resources = dst / "resources"
    resources.mkdir(parents=True, exist_ok=True)
    overrides = {"redisHost": redis_addr, "vaultAddr": vault_addr, "vaultToken": vault_token}
    for src in sorted(COMPONENTS_DIR.glob("*.yaml")):
        docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all(src.read_text()) if d]
        for doc in docs:
            extra = pubsub_metadata if doc.get("metadata", {}).get("name") == "pubsub" else {}
            for item in doc.get("spec", {}).get("metadata", []) or []:
                if item.get("name") in overrides:
                    item["value"] = overrides[item["name"]]
                if extra and item.get("name") in extra:
                    item["value"] = extra[item["name"]]
        (resources / src.name).write_text(yaml.safe_dump_all(docs, sort_keys=False))
    config = dst / "config.yaml"
    doc = yaml.safe_load((COMPONENTS_DIR / "configuration" / "autoglm.yaml").read_text())
    doc["spec"]["nameResolution"]["configuration"]["connectionString"] = str(
        dst / "nameresolution.db"
    )
    if otlp_endpoint:
        doc["spec"]["tracing"]["otel"]["endpointAddress"] = otlp_endpoint
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return resources, config


def start_daprd(
    app_id: str,
    *,
    resources: Path,
    config: Path,
    log_path: Path,
    ports: SidecarPorts,
    app_port: int | None = None,
    app_protocol: str = "http",
    drain: DrainTimings | None = None,
    name: str | None = None,
) -> ManagedProcess:
    """Start daprd for ``app_id`` and wait until its outbound API is up. ``drain``: how
    it shuts down on SIGTERM (see ``DrainTimings``); ``name``: its process name
    (default ``daprd-<app id>``)."""
    argv = [
        str(tool("daprd")),
        "--app-id",
        app_id,
        "--dapr-http-port",
        str(ports.http),
        "--dapr-grpc-port",
        str(ports.grpc),
        "--dapr-internal-grpc-port",
        str(ports.internal_grpc),
        "--metrics-port",
        str(ports.metrics),
        # Every listener on loopback only (metrics default to 0.0.0.0).
        "--dapr-listen-addresses",
        "127.0.0.1",
        "--dapr-internal-grpc-listen-address",
        "127.0.0.1",
        "--dapr-public-listen-address",
        "127.0.0.1",
        "--metrics-listen-address",
        "127.0.0.1",
        "--resources-path",
        str(resources),
        "--config",
        str(config),
        "--log-as-json",
    ]
    if app_port is not None:
        argv += ["--app-port", str(app_port), "--app-protocol", app_protocol]
    if drain is not None:
        argv += ["--dapr-graceful-shutdown-seconds", str(int(drain.grace_s))]
    # cwd = repo root, so relative paths in components/ resolve as in `make run`.
    (DATA_DIR / "dapr").mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(name or f"daprd-{app_id}", argv, log_path, cwd=REPO_ROOT).start()
    proc.wait_until(
        lambda: (
            httpx.get(f"http://127.0.0.1:{ports.http}/v1.0/healthz/outbound", timeout=1).status_code
            == 204
        ),
        60,
        "sidecar outbound health",
    )
    return proc


def wait_sidecar_ready(proc: ManagedProcess, ports: SidecarPorts, timeout: float = 120) -> None:
    """Wait for full readiness: components loaded and the app channel connected."""
    proc.wait_until(
        lambda: (
            httpx.get(f"http://127.0.0.1:{ports.http}/v1.0/healthz", timeout=1).status_code == 204
        ),
        timeout,
        "sidecar readiness (app connected)",
    )
