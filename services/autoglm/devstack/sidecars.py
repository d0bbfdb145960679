"""Real daprd sidecars for local runs and tests, configured from ``components/``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from autoglm.core import contracts
from autoglm.devstack.layout import COMPONENTS_DIR, DATA_DIR, REPO_ROOT, tool
from autoglm.devstack.mtls import Sentry
from autoglm.devstack.processes import ManagedProcess, free_port
from autoglm.devstack.secrets import StackSecrets


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
    otlp_endpoint: str | None = None,
    pubsub_metadata: dict[str, str] | None = None,
) -> tuple[Path, Path]:
    """Copy ``components/`` to ``dst`` with the given backing-service addresses.

    Tests run their own Redis and Vault on free ports; everything else (names, types,
    options, and credentials read from daprd's environment) stays exactly as in the
    checked-in files, except ``pubsub_metadata`` (e.g. a short ``processingTimeout`` for
    tests that kill a consumer). Returns (resources dir, config file).
    """
    resources = dst / "resources"
    resources.mkdir(parents=True, exist_ok=True)
    overrides = {"redisHost": redis_addr, "vaultAddr": vault_addr}
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


def render_app_config(config: Path, app_id: str, dst: Path, *, mtls: bool) -> Path:
    """``config`` with ``app_id``'s own lists from the contract table
    (``autoglm.core.contracts``), written to ``dst``: the secrets it may read and, when
    its daprd runs with mTLS, which app may call which of its methods (Dapr knows the
    caller only from its certificate, so without mTLS the list would deny everything).
    Apps outside the table (test clients) get ``config`` as it is."""
    if app_id not in contracts.APPS:
        return config
    doc = yaml.safe_load(config.read_text())
    doc["metadata"]["name"] = f"{doc['metadata']['name']}-{app_id}"
    doc["spec"]["secrets"] = {"scopes": contracts.secret_scopes(app_id)}
    if mtls:
        doc["spec"]["accessControl"] = contracts.access_control(app_id)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def start_daprd(
    app_id: str,
    *,
    resources: Path,
    config: Path,
    log_path: Path,
    ports: SidecarPorts,
    secrets: StackSecrets,
    sentry: Sentry | None = None,
    app_port: int | None = None,
    app_protocol: str = "http",
    drain: DrainTimings | None = None,
    name: str | None = None,
) -> ManagedProcess:
    """Start daprd for ``app_id`` and wait until its outbound API is up. ``drain``: how
    it shuts down on SIGTERM (see ``DrainTimings``); ``name``: its process name
    (default ``daprd-<app id>``).

    Its API requires the app's Dapr API token; it sends the app's app token to its app;
    its components read the Redis password and Vault token from its environment (never
    from its command line). With ``sentry``, calls between sidecars use mTLS and the
    app's access list from the contract table applies."""
    config = render_app_config(
        config, app_id, log_path.with_suffix(".config.yaml"), mtls=sentry is not None
    )
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
    if sentry is not None:
        argv += sentry.daprd_args(app_id)
    # cwd = repo root, so relative paths in components/ resolve as in `make run`.
    (DATA_DIR / "dapr").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **secrets.daprd_env(app_id), **(sentry.daprd_env() if sentry else {})}
    proc = ManagedProcess(name or f"daprd-{app_id}", argv, log_path, env=env, cwd=REPO_ROOT).start()
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
