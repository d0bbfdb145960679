"""Secrets seeded into the real Vault are read back through the Dapr secret store API."""

from __future__ import annotations

import hvac
import pytest

from autoglm.core.errors import AutoGLMError
from autoglm.core.sidecar import Sidecar
from autoglm.devstack.backing import DEV_VAULT_TOKEN, VAULT_MOUNT, VAULT_PREFIX
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
