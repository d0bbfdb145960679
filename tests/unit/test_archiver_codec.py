"""Compression, AES-GCM round trips, settings of the policy, and audit retention."""

from __future__ import annotations

import datetime as dt
import gzip
import os
from pathlib import Path

import pytest

from autoglm.archiver.codec import Cipher, Codec, CodecError
from autoglm.archiver.metrics import ArchiverMetrics
from autoglm.archiver.retention import Retention
from autoglm.archiver.settings import ArchiverSettings, RetentionPolicy
from autoglm.core.settings import SettingsError, load_settings

DATA = b'{"messages": [{"role": "user", "content": "secret plans"}]}' * 20


@pytest.mark.parametrize("method", ["gzip", "zstd", "none"])
def test_round_trip_per_compression(method: str) -> None:
    codec = Codec(method, False, lambda: Cipher(os.urandom(32)))  # type: ignore[arg-type]
    blob, info = codec.encode(DATA, b"aad")
    assert codec.decode(blob, info, b"aad") == DATA
    if method != "none":
        assert len(blob) < len(DATA)


def test_encryption_round_trip_and_binding() -> None:
    key = Cipher(os.urandom(32))
    codec = Codec("zstd", True, lambda: key)
    blob, info = codec.encode(DATA, b"context:t/s/1")
    assert info.encrypted and info.key_id == key.key_id and b"secret" not in blob
    assert codec.decode(blob, info, b"context:t/s/1") == DATA
    with pytest.raises(CodecError):
        codec.decode(blob, info, b"context:t/s/2")  # moved to another version
    with pytest.raises(CodecError):
        codec.decode(blob[:-1] + bytes([blob[-1] ^ 1]), info, b"context:t/s/1")
    other = Codec("zstd", True, lambda: Cipher(os.urandom(32)))
    with pytest.raises(CodecError, match="key"):
        other.decode(blob, info, b"context:t/s/1")


def test_encrypted_data_stays_readable_after_encrypt_is_turned_off() -> None:
    key = Cipher(os.urandom(32))
    blob, info = Codec("gzip", True, lambda: key).encode(DATA, b"a")
    assert Codec("none", False, lambda: key).decode(blob, info, b"a") == DATA


def test_key_must_be_256_bits() -> None:
    with pytest.raises(ValueError):
        Cipher(b"short")


def test_nested_policy_from_env_and_yaml(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("archiver:\n  autosave:\n    max_keep: 3\n    compression: zstd\n")
    settings = load_settings(
        ArchiverSettings,
        {
            "AUTOGLM_CONFIG": str(cfg),
            "AUTOGLM_ARCHIVER_AUTOSAVE__IDLE_MS": "250",
            "AUTOGLM_ARCHIVER_ATTACHMENTS__ALLOWED_CATEGORIES": "[text, images]",
        },
    )
    assert settings.autosave.max_keep == 3 and settings.autosave.compression == "zstd"
    assert settings.autosave.idle_ms == 250
    assert settings.attachments.allowed_categories == ("text", "images")
    with pytest.raises(SettingsError, match="AUTOGLM_ARCHIVER_AUTOSAVE__COMPRESSION"):
        load_settings(ArchiverSettings, {"AUTOGLM_ARCHIVER_AUTOSAVE__COMPRESSION": "lz4"})


def test_retention_compresses_encrypts_and_deletes(tmp_path: Path) -> None:
    base = tmp_path / "audit"
    tenant = base / "acme"
    tenant.mkdir(parents=True)
    for day in ("2024-01-01", "2024-06-01", "2024-06-09", "2024-06-10"):
        (tenant / f"{day}.jsonl").write_bytes(b'{"a": 1}\n')
    (tenant / "notes.txt").write_text("not ours")
    key = Cipher(os.urandom(32))
    policy = RetentionPolicy(compress_after_days=1, delete_after_days=30, encrypt=True)
    retention = Retention(base, policy, Codec("gzip", True, lambda: key), ArchiverMetrics())
    done = retention.run(today=dt.date(2024, 6, 10))
    assert done == {"compressed": 1, "deleted": 1}
    names = sorted(p.name for p in tenant.iterdir())
    assert names == ["2024-06-01.jsonl.gz.enc", "2024-06-09.jsonl", "2024-06-10.jsonl", "notes.txt"]
    sealed = (tenant / "2024-06-01.jsonl.gz.enc").read_bytes()
    assert gzip.decompress(key.open(sealed, b"audit:acme/2024-06-01.jsonl")) == b'{"a": 1}\n'
    # Idempotent: a second pass finds nothing more to do.
    assert retention.run(today=dt.date(2024, 6, 10)) == {"compressed": 0, "deleted": 0}
