"""Redis and the Vault-API server as real processes, plus the dev secrets seeded into Vault."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import httpx
import hvac

from autoglm.devstack.layout import tool
from autoglm.devstack.processes import ManagedProcess, port_open

#: Dev Vault's root token; dev mode only (in-memory, 127.0.0.1). Clusters use k8s auth.
DEV_VAULT_TOKEN = "autoglm-dev-root"
#: KV v2 mount and path prefix holding AutoGLM's secrets (DESIGN.md).
VAULT_MOUNT = "secret"
VAULT_PREFIX = "autoglm"


def start_redis(port: int, data_dir: Path, log_path: Path) -> ManagedProcess:
    """redis-server on 127.0.0.1 with append-only persistence (acknowledged writes survive)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    proc = ManagedProcess(
        "redis",
        [
            str(tool("redis-server")),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--dir",
            str(data_dir),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ],
        log_path,
    ).start()
    proc.wait_until(lambda: _redis_ping(port), 20, "PING reply")
    return proc


def _redis_ping(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(16).startswith(b"+PONG")


def start_vault(port: int, log_path: Path, token: str = DEV_VAULT_TOKEN) -> ManagedProcess:
    """The Vault server in dev mode (in-memory, KV v2 at ``secret/``) on 127.0.0.1."""
    proc = ManagedProcess(
        "vault",
        [
            str(tool("vault")),
            "server",
            "-dev",
            f"-dev-listen-address=127.0.0.1:{port}",
            f"-dev-root-token-id={token}",
            "-dev-no-store-token",
        ],
        log_path,
        env={"HOME": str(log_path.parent), "PATH": "/usr/bin:/bin", "VAULT_LOG_FORMAT": "json"},
    ).start()
    proc.wait_until(
        lambda: (
            port_open(port)
            and httpx.get(f"http://127.0.0.1:{port}/v1/sys/health", timeout=1).status_code == 200
        ),
        60,
        "healthy Vault",
    )
    return proc


def store_signing_key(addr: str, public_key: bytes, token: str = DEV_VAULT_TOKEN) -> None:
    """Put the model-signing public key where inference reads it (``model-signing``)."""
    client = hvac.Client(url=addr, token=token)
    client.secrets.kv.v2.create_or_update_secret(
        path=f"{VAULT_PREFIX}/model-signing",
        secret={"public-key": public_key.decode()},
        mount_point=VAULT_MOUNT,
    )


def seed_vault(
    addr: str, signing_public_key: bytes, token: str = DEV_VAULT_TOKEN
) -> dict[str, dict[str, str]]:
    """Write the secrets the apps read (fresh random values each dev start)."""
    client = hvac.Client(url=addr, token=token)
    store_signing_key(addr, signing_public_key, token)
    values: dict[str, dict[str, str]] = {
        "model-signing": {"public-key": signing_public_key.decode()},
        "jwt": {
            "hs256-key": secrets.token_urlsafe(48),
            "issuer": "autoglm-dev",
            "audience": "autoglm",
        },
        # sha256-hex of an API key -> "tenant:role:subject"; none until one is issued.
        "api-keys": {},
        "archive": {"encryption-key": base64.b64encode(secrets.token_bytes(32)).decode()},
    }
    for name, data in values.items():
        if name == "model-signing":
            continue  # written above
        client.secrets.kv.v2.create_or_update_secret(
            path=f"{VAULT_PREFIX}/{name}", secret=data, mount_point=VAULT_MOUNT
        )
    return values
