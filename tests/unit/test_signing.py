from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoglm.core.errors import AutoGLMError
from autoglm.models.signing import (
    MANIFEST_NAME,
    SIGNATURE_NAME,
    IntegrityError,
    build_manifest,
    canonical_bytes,
    generate_keypair,
    load_public_key,
    sign_model,
    verify_model,
)

# One key pair for the module: generation is cheap, but there's no need to repeat it.
PRIVATE, PUBLIC = generate_keypair()


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A fake model directory: a few small files, one in a subfolder, signed."""
    model_dir = tmp_path / "tiny-glm"
    (model_dir / "tokenizer").mkdir(parents=True)
    (model_dir / "config.json").write_text('{"hidden_size": 8}')
    (model_dir / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (model_dir / "tokenizer" / "vocab.json").write_text('{"a": 0}')
    sign_model(model_dir, PRIVATE)
    return model_dir


def refused(model_dir: Path, match: str) -> None:
    with pytest.raises(IntegrityError, match=match):
        verify_model(model_dir, PUBLIC)


def test_round_trip(model: Path) -> None:
    verify_model(model, PUBLIC)
    manifest = json.loads((model / MANIFEST_NAME).read_text())
    assert manifest == build_manifest(model)
    assert manifest["version"] == 1
    assert sorted(manifest["files"]) == [
        "config.json",
        "model.safetensors",
        "tokenizer/vocab.json",
    ]


def test_error_shape() -> None:
    err = IntegrityError("x")
    assert isinstance(err, AutoGLMError)
    assert (err.status, err.type, err.code) == (422, "integrity_error", "model_integrity")


def test_canonical_bytes_ignore_key_order() -> None:
    assert canonical_bytes({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'


def test_flipped_byte_names_the_file(model: Path) -> None:
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01
    weights.write_bytes(bytes(data))
    refused(model, "file 'model.safetensors' does not match its digest")


def test_missing_signature(model: Path) -> None:
    (model / SIGNATURE_NAME).unlink()
    refused(model, f"model 'tiny-glm' is not signed: {SIGNATURE_NAME} missing")


def test_missing_manifest(model: Path) -> None:
    (model / MANIFEST_NAME).unlink()
    refused(model, f"model 'tiny-glm' is not signed: {MANIFEST_NAME} missing")


def test_signed_with_another_key(model: Path) -> None:
    other_private, _ = generate_keypair()
    sign_model(model, other_private)
    refused(model, "signature does not match manifest")


def test_unexpected_file(model: Path) -> None:
    (model / "evil.py").write_text("import os\n")
    refused(model, "unexpected file 'evil.py'")


def test_missing_listed_file(model: Path) -> None:
    (model / "tokenizer" / "vocab.json").unlink()
    refused(model, "listed file 'tokenizer/vocab.json' is missing")


def test_symlink_refused(model: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"not ours")
    (model / "extra.bin").symlink_to(outside)
    refused(model, "'extra.bin' is a symlink")
    with pytest.raises(IntegrityError, match="symlink"):
        build_manifest(model)


def test_tampered_manifest(model: Path) -> None:
    path = model / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    manifest["files"]["config.json"] = "0" * 64
    path.write_text(json.dumps(manifest))
    refused(model, "signature does not match manifest")


def test_garbled_signature(model: Path) -> None:
    (model / SIGNATURE_NAME).write_text("not base64!")
    refused(model, "signature does not match manifest")


def test_malformed_public_key(model: Path) -> None:
    with pytest.raises(IntegrityError, match="public key"):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    with pytest.raises(IntegrityError, match="public key"):
        verify_model(model, PRIVATE)
