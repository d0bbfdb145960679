"""Secrets seeded into the real Vault are read back through the Dapr secret store API."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import hvac
import pytest

from autoglm.archiver.archive_key import ArchiveKeys
from autoglm.archiver.codec import Codec
from autoglm.cli import main as cli_main
from autoglm.core.errors import AutoGLMError
from autoglm.core.sidecar import Sidecar
from autoglm.devstack.backing import (
    VAULT_MOUNT,
    VAULT_PREFIX,
    SigningKeyConflictError,
    store_signing_key,
)
from autoglm.models.signing import generate_keypair
from tests.support.stack import Backing


def test_seeded_secret_reads_back_through_dapr(sidecar: Sidecar, backing: Backing) -> None:
    assert sidecar.get_secret("vault", "jwt") == backing.secrets["jwt"]


def test_rotated_secret_is_seen_on_next_read(sidecar: Sidecar, backing: Backing) -> None:
    client = hvac.Client(url=backing.vault_addr, token=backing.vault_token)
    client.secrets.kv.v2.create_or_update_secret(
        path=f"{VAULT_PREFIX}/rotating", secret={"k": "v1"}, mount_point=VAULT_MOUNT
    )
    assert sidecar.get_secret("vault", "rotating") == {"k": "v1"}
    client.secrets.kv.v2.create_or_update_secret(
        path=f"{VAULT_PREFIX}/rotating", secret={"k": "v2"}, mount_point=VAULT_MOUNT
    )
    assert sidecar.get_secret("vault", "rotating") == {"k": "v2"}
    versions = client.secrets.kv.v2.read_secret_metadata(
        path=f"{VAULT_PREFIX}/rotating", mount_point=VAULT_MOUNT
    )["data"]["versions"]
    assert set(versions) == {"1", "2"}


def test_missing_secret_is_an_error_not_empty(sidecar: Sidecar) -> None:
    with pytest.raises(AutoGLMError):
        sidecar.get_secret("vault", "does-not-exist")


def test_archive_key_rotation_through_vault_and_dapr(sidecar: Sidecar, backing: Backing) -> None:
    """The archiver's keys come from Vault through daprd; after a rotation (new current
    key, old one in previous-keys) blobs sealed before still open."""
    client = hvac.Client(url=backing.vault_addr, token=backing.vault_token)
    old, new = os.urandom(32), os.urandom(32)

    def write(secret: dict[str, str]) -> None:
        client.secrets.kv.v2.create_or_update_secret(
            path=f"{VAULT_PREFIX}/archive-rotation", secret=secret, mount_point=VAULT_MOUNT
        )

    write({"encryption-key": base64.b64encode(old).decode()})
    codec = Codec(
        "gzip", True, ArchiveKeys(sidecar, store="vault", secret="archive-rotation", ttl_s=0)
    )
    blob, info = codec.encode(b"history", b"aad")
    write(
        {
            "encryption-key": base64.b64encode(new).decode(),
            "previous-keys": base64.b64encode(old).decode(),
        }
    )
    fresh, fresh_info = codec.encode(b"history", b"aad")
    assert fresh_info.key_id != info.key_id
    assert codec.decode(blob, info, b"aad") == codec.decode(fresh, fresh_info, b"aad") == b"history"


def test_signing_key_is_stored_where_inference_reads_it(sidecar: Sidecar, backing: Backing) -> None:
    """What ``autoglm models init-demo`` does when the dev Vault is up."""
    # The session's Vault is shared with the e2e apps: write back the key they verify with.
    real = backing.secrets["model-signing"]["public-key"]
    client = hvac.Client(url=backing.vault_addr, token=backing.vault_token)
    client.secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"{VAULT_PREFIX}/model-signing", mount_point=VAULT_MOUNT
    )
    with pytest.raises(AutoGLMError):
        sidecar.get_secret("vault", "model-signing")
    store_signing_key(backing.vault_addr, real.encode(), backing.vault_token)
    assert sidecar.get_secret("vault", "model-signing") == {"public-key": real}


def _stored_signing_key(backing: Backing) -> str:
    client = hvac.Client(url=backing.vault_addr, token=backing.vault_token)
    data = client.secrets.kv.v2.read_secret_version(
        path=f"{VAULT_PREFIX}/model-signing", mount_point=VAULT_MOUNT, raise_on_deleted_version=True
    )["data"]["data"]
    return str(data["public-key"])


def test_a_different_signing_key_is_never_overwritten(backing: Backing) -> None:
    """Another checkout's demo key must not replace the one the running stack's models
    are signed with (the next model load would fail verification)."""
    real = backing.secrets["model-signing"]["public-key"]
    _, other = generate_keypair()
    with pytest.raises(SigningKeyConflictError, match="different model-signing key"):
        store_signing_key(backing.vault_addr, other, backing.vault_token)
    assert _stored_signing_key(backing) == real
    store_signing_key(backing.vault_addr, real.encode(), backing.vault_token)  # same: fine
    assert _stored_signing_key(backing) == real


@pytest.mark.parametrize("same_checkout", [True, False])
def test_init_demo_elsewhere_leaves_the_running_stacks_key(
    backing: Backing,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    same_checkout: bool,
) -> None:
    """``autoglm models init-demo`` while a stack is up: with another key it says so and
    keeps the stack's key, whether it holds that stack's Vault token or not."""
    from autoglm.devstack import run as devrun
    from autoglm.devstack.secrets import StackSecrets
    from autoglm.models import demo

    real = backing.secrets["model-signing"]["public-key"]
    _, other = generate_keypair()
    monkeypatch.setattr(demo, "init_demo_models", lambda *_a, **_k: other)
    monkeypatch.setattr(devrun, "VAULT_PORT", int(backing.vault_addr.rsplit(":", 1)[1]))
    saved = backing.creds if same_checkout else None
    monkeypatch.setattr(StackSecrets, "load", staticmethod(lambda *_a: saved))
    assert cli_main(["models", "init-demo", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert ("different model-signing key" if same_checkout else "left alone") in out
    assert _stored_signing_key(backing) == real


def test_no_stack_secret_on_a_command_line_or_in_a_log(backing: Backing, sidecar: Sidecar) -> None:
    """``ps`` shows every process's command line to every local user, and logs get
    shared: neither may hold the Redis password, the Vault root token or an API token;
    Vault's dev banner lines with the unseal key and root token are not logged."""
    secrets = [
        backing.creds.redis_password,
        backing.creds.vault_token,
        backing.creds.dapr_api_token,
        backing.creds.app_api_token,
        *[backing.creds.dapr_token(app) for app in ("gateway", "inference", "archiver")],
        *[backing.creds.app_token(app) for app in ("gateway", "inference", "archiver")],
    ]
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode(errors="replace")
        except OSError:
            continue  # exited meanwhile
        assert not [s for s in secrets if s in argv], f"secret on the command line of {cmdline}"
    logs = backing.workdir / "logs"
    vault_log = (logs / "vault.log").read_text()
    assert "Api Address" in vault_log  # the banner is there, minus its secret lines
    assert "Unseal Key:" not in vault_log and "Root Token:" not in vault_log
    for log in logs.glob("*.log"):
        text = log.read_text(errors="replace")
        assert not [s for s in secrets if s in text], f"secret in {log.name}"
