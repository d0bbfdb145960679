"""Secrets seeded into the real Vault are read back through the Dapr secret store API."""

from __future__ import annotations

import base64
import os

import hvac
import pytest

from autoglm.archiver.archive_key import ArchiveKeys
from autoglm.archiver.codec import Codec
from autoglm.core.errors import AutoGLMError
from autoglm.core.sidecar import Sidecar
from autoglm.devstack.backing import DEV_VAULT_TOKEN, VAULT_MOUNT, VAULT_PREFIX, store_signing_key
from tests.support.stack import Backing


def test_seeded_secret_reads_back_through_dapr(sidecar: Sidecar, backing: Backing) -> None:
    assert sidecar.get_secret("vault", "jwt") == backing.secrets["jwt"]


def test_rotated_secret_is_seen_on_next_read(sidecar: Sidecar, backing: Backing) -> None:
    client = hvac.Client(url=backing.vault_addr, token=DEV_VAULT_TOKEN)
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
    client = hvac.Client(url=backing.vault_addr, token=DEV_VAULT_TOKEN)
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
    client = hvac.Client(url=backing.vault_addr, token=DEV_VAULT_TOKEN)
    client.secrets.kv.v2.delete_metadata_and_all_versions(
        path=f"{VAULT_PREFIX}/model-signing", mount_point=VAULT_MOUNT
    )
    with pytest.raises(AutoGLMError):
        sidecar.get_secret("vault", "model-signing")
    store_signing_key(backing.vault_addr, real.encode())
    assert sidecar.get_secret("vault", "model-signing") == {"public-key": real}
