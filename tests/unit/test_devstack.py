from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from autoglm.devstack import backing
from autoglm.devstack.processes import ManagedProcess, free_port
from autoglm.devstack.secrets import (
    REDIS_PASSWORD_ENV,
    VAULT_TOKEN_ENV,
    StackSecrets,
)
from autoglm.devstack.sidecars import COMPONENTS_DIR, render_components
from tests.support.polling import wait_for


def test_stop_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    proc = ManagedProcess(
        "sh", ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"], tmp_path / "log"
    ).start()
    wait_for("the child's pid", lambda: pidfile.exists() and pidfile.read_text().strip(), 10)
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
    )
    docs = {p.stem: yaml.safe_load(p.read_text()) for p in resources.glob("*.yaml")}
    assert set(docs) == {"statestore", "actorstore", "pubsub", "vault", "resiliency"}
    # Only the addresses change: the resiliency policy is copied as checked in.
    assert docs["resiliency"] == yaml.safe_load((COMPONENTS_DIR / "resiliency.yaml").read_text())
    meta = {m["name"]: m.get("value") for m in docs["pubsub"]["spec"]["metadata"]}
    assert meta["redisHost"] == "127.0.0.1:1111" and meta["processingTimeout"] == "150s"
    vault = {m["name"]: m for m in docs["vault"]["spec"]["metadata"]}
    assert vault["vaultAddr"]["value"] == "http://127.0.0.1:2222"
    # Credentials are never written into the files: daprd reads them from its env.
    assert vault["vaultToken"] == {"name": "vaultToken", "envRef": VAULT_TOKEN_ENV}
    assert yaml.safe_load(config.read_text())["kind"] == "Configuration"


def test_free_port_never_hands_out_a_port_twice() -> None:
    """Ports are bound later by the servers they go to; until then the OS may offer the
    same one again, and two servers of one stack would collide."""
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)


def test_no_credential_is_committed_in_components() -> None:
    """Redis' password and Vault's token come from daprd's environment (generated per
    run), never from a value in components/."""
    refs = {}
    for path in COMPONENTS_DIR.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            for item in (doc or {}).get("spec", {}).get("metadata", []) or []:
                if item["name"] in ("redisPassword", "vaultToken"):
                    assert "value" not in item, f"{path.name}: {item['name']} has a value"
                    refs[(path.stem, item["name"])] = item["envRef"]
    assert refs == {
        ("statestore", "redisPassword"): REDIS_PASSWORD_ENV,
        ("actorstore", "redisPassword"): REDIS_PASSWORD_ENV,
        ("pubsub", "redisPassword"): REDIS_PASSWORD_ENV,
        ("vault", "vaultToken"): VAULT_TOKEN_ENV,
    }


def test_stack_secrets_are_fresh_private_and_split_by_need(tmp_path: Path) -> None:
    one, two = StackSecrets.generate(), StackSecrets.generate()
    assert len({*vars(one).values(), *vars(two).values()}) == 8  # all distinct
    path = one.save(tmp_path / "s" / "dev.env")
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert StackSecrets.load(path) == one
    assert StackSecrets.load(tmp_path / "missing") is None
    # Apps get the two API tokens, never the backing services' credentials.
    assert set(one.app_env("gateway")) == {"DAPR_API_TOKEN", "APP_API_TOKEN"}
    assert one.redis_password not in one.app_env("gateway").values()
    assert one.daprd_env("gateway")[REDIS_PASSWORD_ENV] == one.redis_password
    # Each app its own tokens: one app's token opens neither another's daprd nor app.
    assert one.app_env("gateway") != one.app_env("archiver")
    assert one.daprd_env("archiver")["APP_API_TOKEN"] == one.app_env("archiver")["APP_API_TOKEN"]
    assert one.dapr_token("gateway") != two.dapr_token("gateway")


def test_backing_services_get_credentials_off_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ps`` shows every process's command line to every local user: neither Redis'
    password nor Vault's root token may be on one, and Vault's dev banner lines with
    the unseal key and root token never reach its log."""
    started: list[ManagedProcess] = []

    def fake_start(self: ManagedProcess) -> ManagedProcess:
        started.append(self)
        return self

    monkeypatch.setattr(ManagedProcess, "start", fake_start)
    monkeypatch.setattr(ManagedProcess, "wait_until", lambda *a, **k: None)
    monkeypatch.setattr(backing, "tool", lambda name: Path(f"/bin/{name}"))
    creds = StackSecrets.generate()
    backing.start_redis(1, tmp_path / "redis", tmp_path / "redis.log", creds.redis_password)
    backing.start_vault(2, tmp_path / "vault.log", creds.vault_token)
    redis, vault = started
    for proc, secret in ((redis, creds.redis_password), (vault, creds.vault_token)):
        assert not [arg for arg in proc.argv if secret in arg], proc.name
    conf = Path(redis.argv[1])
    assert conf.stat().st_mode & 0o777 == 0o600
    assert conf.read_text() == f"requirepass {creds.redis_password}\n"
    assert vault.env is not None and vault.env["VAULT_DEV_ROOT_TOKEN_ID"] == creds.vault_token
    # The log filter drops exactly the banner's credential lines.
    script = vault.argv[2].split(" | ", 1)[1]
    banner = "Unseal Key: abc\nRoot Token: xyz\nApi Address: http://127.0.0.1:2\n"
    out = subprocess.run(["sh", "-c", script], input=banner, capture_output=True, text=True)
    assert out.stdout == "Api Address: http://127.0.0.1:2\n"


def test_generated_stack_secrets_are_safe_on_any_command_line() -> None:
    from autoglm.devstack.secrets import StackSecrets

    for _ in range(200):
        for value in dataclasses.astuple(StackSecrets.generate()):
            assert len(value) >= 64 and not value.startswith("-") and value.isalnum()
