"""Archive key rotation: sealed with the current key, opened with whichever key sealed it,
re-read from the secret store without a restart."""

from __future__ import annotations

import base64
import os

import pytest

from autoglm.archiver.archive_key import ArchiveKeys, cipher_from_secret
from autoglm.archiver.codec import Codec, CodecError
from autoglm.core.errors import AutoGLMError, UnavailableError
from tests.support.fakes import FakeSidecar

DATA = b"conversation history " * 50


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def keys(sidecar: FakeSidecar, ttl_s: float = 60.0) -> ArchiveKeys:
    return ArchiveKeys(sidecar, store="vault", secret="archive", ttl_s=ttl_s)


def test_rotation_keeps_older_blobs_readable_without_a_restart() -> None:
    old, new = os.urandom(32), os.urandom(32)
    sidecar = FakeSidecar()
    sidecar.secrets["archive"] = {"encryption-key": b64(old)}
    source = keys(sidecar, ttl_s=0)  # re-read on every use
    codec = Codec("gzip", True, source)
    old_blob, old_info = codec.encode(DATA, b"context:t/s/1")
    # The operator rotates: a new current key, the old one moved to previous-keys.
    sidecar.secrets["archive"] = {"encryption-key": b64(new), "previous-keys": b64(old)}
    new_blob, new_info = codec.encode(DATA, b"context:t/s/2")
    assert new_info.key_id == source().key_id != old_info.key_id
    assert codec.decode(old_blob, old_info, b"context:t/s/1") == DATA
    assert codec.decode(new_blob, new_info, b"context:t/s/2") == DATA
    # Without the old key listed, its blobs are a clear error naming what to do.
    sidecar.secrets["archive"] = {"encryption-key": b64(new)}
    with pytest.raises(CodecError, match="previous keys"):
        codec.decode(old_blob, old_info, b"context:t/s/1")


def test_keys_are_cached_for_their_ttl_and_kept_through_a_store_outage() -> None:
    first, second = os.urandom(32), os.urandom(32)
    sidecar = FakeSidecar()
    sidecar.secrets["archive"] = {"encryption-key": b64(first)}
    cached = keys(sidecar, ttl_s=3600)
    known = cached().key_id
    sidecar.secrets["archive"] = {"encryption-key": b64(second)}
    assert cached().key_id == known  # within the TTL: no secret store call

    class Down(FakeSidecar):
        def get_secret(self, store: str, name: str) -> dict[str, str]:
            raise UnavailableError("secret store down")

    down = Down()
    down.secrets["archive"] = {"encryption-key": b64(first)}
    flaky = keys(down, ttl_s=0)
    with pytest.raises(UnavailableError):
        flaky()  # nothing known yet: the error is the caller's
    flaky._cipher = cipher_from_secret({"encryption-key": b64(first)}, "encryption-key", "x")
    assert flaky().key_id == known  # known keys outlive an outage


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ({}, "'encryption-key' is missing"),
        ({"encryption-key": "not base64!"}, "not base64"),
        ({"encryption-key": b64(b"short")}, "5 bytes"),
        ({"encryption-key": b64(os.urandom(32)), "previous-keys": "AAAA, !!"}, "entry 0"),
    ],
)
def test_a_malformed_secret_names_the_field(secret: dict[str, str], message: str) -> None:
    sidecar = FakeSidecar()
    sidecar.secrets["archive"] = secret
    with pytest.raises(AutoGLMError, match=message):
        keys(sidecar)()
