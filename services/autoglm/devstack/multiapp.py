"""Dapr Multi-App Run with our own daprd: each app of a ``dapr.yaml`` and its sidecar.

This is what ``dapr run -f dapr.yaml`` does; ``make run`` uses it because the Go module
proxy does not serve the dapr CLI's source (see ``tools/README.md``). It reads the same
run file, so app ids, ports and component paths stay in one place, and it starts the
real daprd built in ``.tools/bin`` — no stand-in for the sidecar.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from autoglm.devstack.mtls import Sentry
from autoglm.devstack.processes import ManagedProcess, free_port, port_open
from autoglm.devstack.secrets import StackSecrets
from autoglm.devstack.sidecars import (
    DrainTimings,
    SidecarPorts,
    start_daprd,
    wait_sidecar_ready,
)


@dataclass
class AppEntry:
    app_id: str
    app_port: int | None
    app_protocol: str
    ports: SidecarPorts
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class RunFile:
    apps: list[AppEntry]
    resources: Path
    config: Path


def read_run_file(path: Path) -> RunFile:
    """Parse a Multi-App Run file (the subset AutoGLM uses: per-app ports, command, env)."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    base = path.parent
    common = doc.get("common", {})
    apps = []
    for app in doc["apps"]:
        ports = SidecarPorts(
            http=int(app["daprHTTPPort"]),
            grpc=int(app["daprGRPCPort"]),
            internal_grpc=free_port(),
            metrics=int(app.get("metricsPort", free_port())),
        )
        env = {**common.get("env", {}), **app.get("env", {})}
        apps.append(
            AppEntry(
                app_id=app["appID"],
                app_port=int(app["appPort"]) if "appPort" in app else None,
                app_protocol=app.get("appProtocol", "http"),
                ports=ports,
                command=list(app["command"]),
                env={k: str(v) for k, v in env.items()},
            )
        )
    return RunFile(apps, base / common["resourcesPath"], base / common["configFilePath"])


def launch(
    entry: AppEntry,
    resources: Path,
    config: Path,
    logs: Path,
    cwd: Path,
    secrets: StackSecrets,
    sentry: Sentry | None = None,
    app_log: Path | None = None,
    started: list[ManagedProcess] | None = None,
    ready_timeout: float = 300,
    name: str | None = None,
    drain: DrainTimings | None = None,
) -> tuple[ManagedProcess, ManagedProcess]:
    """Start daprd, then the app with the sidecar's ports in its environment (as
    ``dapr run`` sets them); return once the app listens and daprd is fully ready.
    Every process started is appended to ``started`` at once, so a failure can still
    stop it. ``name`` (default: the app id) names the app process and its daprd's log;
    replicas of one app id get ``<app id>-<index>``."""
    started = started if started is not None else []
    name = name or entry.app_id
    sidecar = start_daprd(
        entry.app_id,
        resources=resources,
        config=config,
        log_path=logs / f"daprd-{name}.log",
        ports=entry.ports,
        secrets=secrets,
        sentry=sentry,
        app_port=entry.app_port,
        app_protocol=entry.app_protocol,
        drain=drain,
        name=f"daprd-{name}",
    )
    started.append(sidecar)
    env = dict(
        os.environ,
        **entry.env,
        **secrets.app_env(entry.app_id),
        APP_ID=entry.app_id,
        DAPR_HTTP_PORT=str(entry.ports.http),
        DAPR_GRPC_PORT=str(entry.ports.grpc),
    )
    if entry.app_port is not None:
        env["APP_PORT"] = str(entry.app_port)
    app = ManagedProcess(name, entry.command, app_log, env=env, cwd=cwd).start()
    started.append(app)
    if entry.app_port is not None:
        port = entry.app_port
        app.wait_until(lambda: port_open(port), ready_timeout, f"{entry.app_id} listening")
    wait_sidecar_ready(sidecar, entry.ports, ready_timeout)
    return sidecar, app
