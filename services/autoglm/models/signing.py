"""Sign a model directory and verify it before any weights are read.

Loading weights runs code paths (pickle-adjacent formats, ``trust_remote_code`` modules,
tokenizer configs) that should only ever see files we shipped. So a model directory carries
a manifest of every file's SHA-256 and an Ed25519 signature over that manifest, and
:func:`verify_model` checks both, and every byte of every file, *before* the caller loads
anything. Anything it cannot vouch for — an unlisted file, a missing one, a symlink that
could point outside the tree — is refused rather than skipped.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from autoglm.core.errors import AutoGLMError

MANIFEST_NAME = "autoglm-manifest.json"
SIGNATURE_NAME = "autoglm-manifest.sig"
MANIFEST_VERSION = 1

#: The files that describe the model rather than belong to it; never listed in the manifest.
_OWN_FILES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
#: Read size for hashing: weights can be many GB, so never read a file whole.
_CHUNK = 1024 * 1024


class IntegrityError(AutoGLMError, status=422, type="integrity_error", code="model_integrity"):
    """The model on disk is not exactly what was signed; nothing from it may be loaded."""


def canonical_bytes(manifest: dict[str, Any]) -> bytes:
    """The one byte form that is signed, so whitespace or key order on disk doesn't matter."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh Ed25519 key pair as (PKCS8 private PEM, SubjectPublicKeyInfo public PEM)."""
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private_pem, public_pem


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """Parse the verifying key; a malformed or non-Ed25519 key is an integrity failure."""
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IntegrityError("public key is not a valid PEM key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise IntegrityError("public key is not an Ed25519 key")
    return key


def _load_private_key(pem: bytes) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise IntegrityError("private key is not a valid unencrypted PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError("private key is not an Ed25519 key")
    return key


def _model_files(model_dir: Path, name: str) -> list[tuple[str, Path]]:
    """Every ``(relative posix path, path)`` for every file in the tree, sorted.

    Symlinks and special files are refused, not skipped: a link could make a signed name
    resolve to content outside the directory, and a skipped entry is one nobody checked.
    """
    stack = [model_dir]
    found: list[tuple[str, Path]] = []
    while stack:
        directory = stack.pop()
        for path in directory.iterdir():
            rel = path.relative_to(model_dir).as_posix()
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                raise IntegrityError(f"model {name!r}: {rel!r} is a symlink; refusing it")
            if stat.S_ISDIR(mode):
                stack.append(path)
            elif stat.S_ISREG(mode):
                if rel not in _OWN_FILES:
                    found.append((rel, path))
            else:
                raise IntegrityError(f"model {name!r}: {rel!r} is not a regular file")
    return sorted(found)


def _digest(path: Path, name: str, rel: str) -> str:
    """SHA-256 of a file, streamed; opened without following links in case one appeared."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise IntegrityError(f"model {name!r}: file {rel!r} cannot be read") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise IntegrityError(f"model {name!r}: {rel!r} is not a regular file")
        h = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(model_dir: Path) -> dict[str, Any]:
    """Digest every file under ``model_dir`` (except the manifest and signature)."""
    name = model_dir.name
    files = {rel: _digest(path, name, rel) for rel, path in _model_files(model_dir, name)}
    return {"version": MANIFEST_VERSION, "files": files}


def sign_model(model_dir: Path, private_key_pem: bytes) -> Path:
    """Write the manifest and its base64 Ed25519 signature into ``model_dir``."""
    key = _load_private_key(private_key_pem)
    manifest = build_manifest(model_dir)
    signature = key.sign(canonical_bytes(manifest))
    manifest_path = model_dir / MANIFEST_NAME
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (model_dir / SIGNATURE_NAME).write_bytes(base64.b64encode(signature) + b"\n")
    return manifest_path


def _signed_file(model_dir: Path, name: str, filename: str) -> bytes:
    path = model_dir / filename
    if path.is_symlink():
        raise IntegrityError(f"model {name!r}: {filename!r} is a symlink; refusing it")
    if not path.is_file():
        raise IntegrityError(f"model {name!r} is not signed: {filename} missing")
    return path.read_bytes()


def _parse_manifest(raw: bytes, name: str) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"model {name!r}: {MANIFEST_NAME} is not valid JSON") from exc
    if not isinstance(manifest, dict):
        raise IntegrityError(f"model {name!r}: {MANIFEST_NAME} is not a JSON object")
    return manifest


def _listed_files(manifest: dict[str, Any], name: str) -> dict[str, str]:
    """The signed ``files`` map, checked for shape so a bad signer can't crash the verifier."""
    files = manifest.get("files")
    if manifest.get("version") != MANIFEST_VERSION or not isinstance(files, dict):
        raise IntegrityError(f"model {name!r}: unsupported manifest format")
    for rel, digest in files.items():
        if not isinstance(digest, str) or not _SHA256_HEX.fullmatch(digest):
            raise IntegrityError(f"model {name!r}: manifest entry {rel!r} has a bad digest")
    return files


def verify_model(model_dir: Path, public_key_pem: bytes) -> None:
    """Raise :class:`IntegrityError` unless ``model_dir`` is exactly what was signed.

    Cheap checks run first (signature, then the file list) so a tampered directory is
    refused before gigabytes are hashed. Returns only when every file's digest matches.
    """
    name = model_dir.name
    if not model_dir.is_dir():
        raise IntegrityError(f"model {name!r}: directory {str(model_dir)!r} missing")
    raw_manifest = _signed_file(model_dir, name, MANIFEST_NAME)
    raw_signature = _signed_file(model_dir, name, SIGNATURE_NAME)
    key = load_public_key(public_key_pem)

    manifest = _parse_manifest(raw_manifest, name)
    try:
        signature = base64.b64decode(raw_signature.strip(), validate=True)
        key.verify(signature, canonical_bytes(manifest))
    except (binascii.Error, InvalidSignature) as exc:
        raise IntegrityError(f"model {name!r}: signature does not match manifest") from exc

    listed = _listed_files(manifest, name)
    present = dict(_model_files(model_dir, name))
    for rel in present:
        if rel not in listed:
            raise IntegrityError(f"model {name!r}: unexpected file {rel!r}")
    for rel in sorted(listed):
        if rel not in present:
            raise IntegrityError(f"model {name!r}: listed file {rel!r} is missing")

    for rel, path in present.items():
        if not hmac.compare_digest(_digest(path, name, rel), listed[rel]):
            raise IntegrityError(f"model {name!r}: file {rel!r} does not match its digest")
