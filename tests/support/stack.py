"""Session-wide real backing services and sidecars for integration and e2e tests.

Everything listens on 127.0.0.1 on free ports, runs in its own process group and is
stopped when the session ends. A missing binary fails the test loudly with how to build it.
"""

from __future__ import annotations

import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from autoglm.core.sidecar import Sidecar
from autoglm.devstack.backing import seed_vault, start_redis, start_vault
from autoglm.devstack.mtls import Sentry, start_sentry
from autoglm.devstack.multiapp import AppEntry, launch
from autoglm.devstack.placement import start_placement
from autoglm.devstack.processes import ManagedProcess, free_port
from autoglm.devstack.secrets import StackSecrets
from autoglm.devstack.sidecars import SidecarPorts, render_components, start_daprd
from tests.support.otlp import OTLPReceiver


@dataclass
class Backing:
    redis_port: int
    vault_addr: str
    secrets: dict[str, dict[str, str]]
    resources: Path
    config: Path
    workdir: Path
    #: Receives the spans of every app and daprd started on this backing.
    otlp: OTLPReceiver
    #: API tokens, Redis password and Vault root token of this stack (fresh per stack).
    creds: StackSecrets = field(default_factory=StackSecrets.generate)
    #: The stack's Dapr Sentry: mTLS between its sidecars, access lists by app id.
    sentry: Sentry | None = None
    #: The Redis process, for tests that stop and restart it (tests/chaos/).
    redis: ManagedProcess | None = None

    @property
    def vault_token(self) -> str:
        return self.creds.vault_token

    def redis_client(self) -> Redis:
        """A client of this stack's Redis (with its password), for tests that inspect
        streams and keys."""
        return Redis(port=self.redis_port, password=self.creds.redis_password)


@dataclass
class AppUnderTest:
    app_id: str
    app: ManagedProcess | None
    sidecar: ManagedProcess
    ports: SidecarPorts
    app_port: int | None = None
    extra: dict[str, str] = field(default_factory=dict)
    creds: StackSecrets | None = None

    @property
    def dapr_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def dapr_headers(self) -> dict[str, str]:
        """The Dapr API token this app's daprd requires."""
        return self.creds.dapr_headers(self.app_id) if self.creds else {}

    def client(self) -> Sidecar:
        """A ``Sidecar`` client of this app's daprd, holding its API token."""
        return Sidecar(http_port=self.ports.http, api_token=self.dapr_headers.get("dapr-api-token"))

    def dapr_client(self) -> Any:
        """A Dapr SDK gRPC client of this app's daprd, holding its API token (the SDK
        reads ``DAPR_API_TOKEN`` only once, at import)."""
        from dapr.clients import DaprClient
        from dapr.clients.grpc.interceptors import DaprClientInterceptor

        token = [("dapr-api-token", self.dapr_headers.get("dapr-api-token", ""))]
        return DaprClient(
            f"127.0.0.1:{self.ports.grpc}", interceptors=[DaprClientInterceptor(token)]
        )


def start_backing(
    workdir: Path,
    stack: ExitStack,
    signing_public_key: bytes,
    otlp: OTLPReceiver,
    pubsub_metadata: dict[str, str] | None = None,
) -> Backing:
    logs = workdir / "logs"
    creds = StackSecrets.generate()
    redis_port, vault_port = free_port(), free_port()
    redis_proc = start_redis(
        redis_port, workdir / "redis", logs / "redis.log", creds.redis_password
    )
    stack.callback(redis_proc.stop)
    vault = start_vault(vault_port, logs / "vault.log", creds.vault_token)
    stack.callback(vault.stop)
    sentry_proc, sentry = start_sentry(workdir, logs / "sentry.log")
    stack.callback(sentry_proc.stop)
    placement_proc, sentry = start_placement(sentry, workdir, logs / "placement.log")
    stack.callback(placement_proc.stop)
    vault_addr = f"http://127.0.0.1:{vault_port}"
    secrets = seed_vault(vault_addr, signing_public_key, creds.vault_token)
    resources, config = render_components(
        workdir / "dapr",
        redis_addr=f"127.0.0.1:{redis_port}",
        vault_addr=vault_addr,
        otlp_endpoint=otlp.endpoint,
        pubsub_metadata=pubsub_metadata,
    )
    return Backing(
        redis_port, vault_addr, secrets, resources, config, workdir, otlp, creds, sentry, redis_proc
    )


def start_app(
    backing: Backing,
    stack: ExitStack,
    app_id: str,
    module: str | None,
    *,
    protocol: str = "grpc",
    env: dict[str, str] | None = None,
    resources: Path | None = None,
) -> AppUnderTest:
    """Start ``python -m module`` (if given) and its daprd; wait until both are ready.
    ``resources``: the daprd's resources folder instead of the stack's."""
    logs = backing.workdir / "logs"
    ports = SidecarPorts.allocate()
    if module is None:
        sidecar = start_daprd(
            app_id,
            resources=backing.resources,
            config=backing.config,
            log_path=logs / f"daprd-{app_id}.log",
            ports=ports,
            secrets=backing.creds,
            sentry=backing.sentry,
        )
        stack.callback(sidecar.stop)
        return AppUnderTest(app_id, None, sidecar, ports, creds=backing.creds)
    app_port = free_port()
    entry = AppEntry(
        app_id,
        app_port,
        protocol,
        ports,
        [sys.executable, "-m", module],
        env={
            "PYTHONUNBUFFERED": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{backing.otlp.endpoint}",
            f"AUTOGLM_{app_id.upper()}_PORT": str(app_port),
            **(env or {}),
        },
    )
    started: list[ManagedProcess] = []
    try:
        sidecar, app_proc = launch(
            entry,
            resources or backing.resources,
            backing.config,
            logs,
            Path.cwd(),
            backing.creds,
            backing.sentry,
            app_log=logs / f"{app_id}.log",
            started=started,
        )
    finally:
        for proc in started:
            stack.callback(proc.stop)
    return AppUnderTest(app_id, app_proc, sidecar, ports, app_port, creds=backing.creds)


def wait_http_ok(url: str, proc: ManagedProcess, timeout: float = 120) -> None:
    proc.wait_until(
        lambda: httpx.get(url, timeout=2).status_code == 200, timeout, f"200 from {url}"
    )
