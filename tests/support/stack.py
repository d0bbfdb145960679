"""Session-wide real backing services and sidecars for integration and e2e tests.

Everything listens on 127.0.0.1 on free ports, runs in its own process group and is
stopped when the session ends. A missing binary fails the test loudly with how to build it.
"""

from __future__ import annotations

import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from autoglm.devstack.backing import DEV_VAULT_TOKEN, seed_vault, start_redis, start_vault
from autoglm.devstack.processes import ManagedProcess, free_port, port_open
from autoglm.devstack.sidecars import (
    SidecarPorts,
    render_components,
    start_daprd,
    wait_sidecar_ready,
)


@dataclass
class Backing:
    redis_port: int
    vault_addr: str
    secrets: dict[str, dict[str, str]]
    resources: Path
    config: Path
    workdir: Path


@dataclass
class AppUnderTest:
    app_id: str
    app: ManagedProcess | None
    sidecar: ManagedProcess
    ports: SidecarPorts
    app_port: int | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def dapr_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"


def start_backing(workdir: Path, stack: ExitStack, signing_public_key: bytes) -> Backing:
    logs = workdir / "logs"
    redis_port, vault_port = free_port(), free_port()
    redis = start_redis(redis_port, workdir / "redis", logs / "redis.log")
    stack.callback(redis.stop)
    vault = start_vault(vault_port, logs / "vault.log")
    stack.callback(vault.stop)
    vault_addr = f"http://127.0.0.1:{vault_port}"
    secrets = seed_vault(vault_addr, signing_public_key)
    resources, config = render_components(
        workdir / "dapr",
        redis_addr=f"127.0.0.1:{redis_port}",
        vault_addr=vault_addr,
        vault_token=DEV_VAULT_TOKEN,
    )
    return Backing(redis_port, vault_addr, secrets, resources, config, workdir)


def start_app(
    backing: Backing,
    stack: ExitStack,
    app_id: str,
    module: str | None,
    *,
    protocol: str = "grpc",
    env: dict[str, str] | None = None,
) -> AppUnderTest:
    """Start ``python -m module`` (if given) and its daprd; wait until both are ready."""
    logs = backing.workdir / "logs"
    ports = SidecarPorts.allocate()
    app_port = free_port() if module is not None else None
    # daprd first, as in Kubernetes: its outbound API is up before the app listens,
    # and it waits for the app's port before delivering anything.
    sidecar = start_daprd(
        app_id,
        resources=backing.resources,
        config=backing.config,
        log_path=logs / f"daprd-{app_id}.log",
        ports=ports,
        app_port=app_port,
        app_protocol=protocol,
    )
    stack.callback(sidecar.stop)
    app_proc = None
    if module is not None:
        prefix = f"AUTOGLM_{app_id.upper()}_"
        app_env = dict(
            os.environ,
            PYTHONUNBUFFERED="1",
            DAPR_HTTP_PORT=str(ports.http),
            DAPR_GRPC_PORT=str(ports.grpc),
            **{f"{prefix}PORT": str(app_port)},
            **(env or {}),
        )
        app_proc = ManagedProcess(
            app_id, [sys.executable, "-m", module], logs / f"{app_id}.log", env=app_env
        ).start()
        stack.callback(app_proc.stop)
        app_proc.wait_until(lambda: port_open(app_port or 0), 180, f"{app_id} listening")
    wait_sidecar_ready(sidecar, ports)
    return AppUnderTest(app_id, app_proc, sidecar, ports, app_port)


def wait_http_ok(url: str, proc: ManagedProcess, timeout: float = 120) -> None:
    proc.wait_until(
        lambda: httpx.get(url, timeout=2).status_code == 200, timeout, f"200 from {url}"
    )
