"""Redis and the Vault-API server as real processes, plus the dev secrets seeded into Vault."""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import httpx
import hvac
import hvac.exceptions

from autoglm.devstack.layout import tool
from autoglm.devstack.processes import ManagedProcess, port_open
from autoglm.devstack.secrets import private_file

#: KV v2 mount and path prefix holding AutoGLM's secrets (DESIGN.md).
VAULT_MOUNT = "secret"
VAULT_PREFIX = "autoglm"


class SigningKeyConflictError(RuntimeError):
    """Vault already holds another model-signing key (another checkout's stack)."""


def start_redis(port: int, data_dir: Path, log_path: Path, password: str) -> ManagedProcess:
    """redis-server on 127.0.0.1 with append-only persistence (acknowledged writes survive),
    requiring ``password``. The password is in a 0600 config file, not on the command
    line, where ``ps`` would show it to every local user."""
    data_dir.mkdir(parents=True, exist_ok=True)
    conf = private_file(data_dir / "auth.conf", f"requirepass {password}\n")
    proc = ManagedProcess(
        "redis",
        [
            str(tool("redis-server")),
            str(conf),
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
    proc.wait_until(lambda: redis_ping(port, password), 20, "PING reply")
    return proc


def redis_ping(port: int, password: str) -> bool:
    """True once Redis on ``port`` answers an authenticated PING."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
        sock.sendall(b"AUTH %s\r\nPING\r\n" % password.encode())
        reply = b""
        while reply.count(b"\r\n") < 2:
            chunk = sock.recv(64)
            if not chunk:
                break
            reply += chunk
        return reply == b"+OK\r\n+PONG\r\n"


#: Lines of Vault's dev banner that carry a credential; never written to the log.
_VAULT_SECRET_LINES = "^(Unseal Key|Root Token):"


def start_vault(port: int, log_path: Path, token: str) -> ManagedProcess:
    """The Vault server in dev mode (in-memory, KV v2 at ``secret/``) on 127.0.0.1.

    The root token comes from the environment (``VAULT_DEV_ROOT_TOKEN_ID``), not the
    command line, and the dev banner's ``Unseal Key:`` / ``Root Token:`` lines are
    filtered out of the log. The filter runs in the same process group, so stopping
    the group stops both."""
    vault = tool("vault")
    proc = ManagedProcess(
        "vault",
        [
            "/bin/sh",
            "-c",
            f'"$0" server -dev -dev-listen-address=127.0.0.1:{port} -dev-no-store-token 2>&1'
            f' | grep --line-buffered -v -E "{_VAULT_SECRET_LINES}"',
            str(vault),
        ],
        log_path,
        env={
            "HOME": str(log_path.parent),
            "PATH": "/usr/bin:/bin",
            "VAULT_LOG_FORMAT": "json",
            "VAULT_DEV_ROOT_TOKEN_ID": token,
        },
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


def store_signing_key(addr: str, public_key: bytes, token: str, *, replace: bool = False) -> None:
    """Put the model-signing public key where inference reads it (``model-signing``).

    A different key already stored is kept unless ``replace``: it verifies the models the
    running stack loads (another checkout's ``init-demo`` must not break them), and a
    ``SigningKeyConflictError`` says so."""
    client = hvac.Client(url=addr, token=token)
    if not replace:
        try:
            current = client.secrets.kv.v2.read_secret_version(
                path=f"{VAULT_PREFIX}/model-signing",
                mount_point=VAULT_MOUNT,
                raise_on_deleted_version=True,
            )["data"]["data"].get("public-key")
        except hvac.exceptions.InvalidPath:
            current = None
        if current == public_key.decode():
            return
        if current is not None:
            raise SigningKeyConflictError(
                f"the Vault at {addr} already holds a different model-signing key; "
                "it verifies the models of the stack that uses this Vault, so it was kept"
            )
    client.secrets.kv.v2.create_or_update_secret(
        path=f"{VAULT_PREFIX}/model-signing",
        secret={"public-key": public_key.decode()},
        mount_point=VAULT_MOUNT,
    )


def seed_vault(addr: str, signing_public_key: bytes, token: str) -> dict[str, dict[str, str]]:
    """Write the secrets the apps read (fresh random values each dev start)."""
    client = hvac.Client(url=addr, token=token)
    store_signing_key(addr, signing_public_key, token, replace=True)
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
