"""Compression and AES-GCM sealing of archived bytes.

What was applied is recorded beside the bytes (``CodecInfo`` in metadata), so a change of
settings never makes older snapshots unreadable. The AES-GCM associated data binds a blob
to where it belongs (tenant, session, version): a file moved elsewhere fails to open.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import zstandard
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from autoglm.archiver.settings import Compression

_NONCE = 12


class CodecError(Exception):
    """Bytes that cannot be opened: wrong key, tampered data, unknown compression."""


def compress(data: bytes, method: Compression) -> bytes:
    if method == "gzip":
        return gzip.compress(data, mtime=0)
    if method == "zstd":
        return zstandard.ZstdCompressor(level=3).compress(data)
    return data


def decompress(data: bytes, method: str) -> bytes:
    try:
        if method == "gzip":
            return gzip.decompress(data)
        if method == "zstd":
            return zstandard.ZstdDecompressor().decompress(data)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise CodecError(f"{method} data is corrupt: {exc}") from None
    if method == "none":
        return data
    raise CodecError(f"unknown compression {method!r}")


def key_id(key: bytes) -> str:
    """Names a key in metadata without revealing it, so the right key is picked to open a
    blob and a missing one is a clear error."""
    return hashlib.sha256(b"autoglm-archive-key:" + key).hexdigest()[:16]


def associated_data(purpose: str, tenant: str, name: str, version: int | None = None) -> bytes:
    """The AES-GCM associated data of one archived blob: what it is and where it belongs.

    Built here only, so a writer and its reader can never disagree on the binding (a blob
    moved to another tenant, session, version or part fails to open).
    """
    where = f"{tenant}/{name}" if version is None else f"{tenant}/{name}/{version}"
    return f"{purpose}:{where}".encode()


def _aead(key: bytes) -> AESGCM:
    if len(key) != 32:
        raise ValueError("the archive encryption key must be 32 bytes (AES-256)")
    return AESGCM(key)


class Cipher:
    """AES-256-GCM; each blob is ``nonce (12 bytes) || ciphertext+tag``.

    Seals with the current key; opens with the current key or any ``previous`` one, so a
    key rotation (new key current, old key listed as previous) leaves every older
    snapshot and audit file readable."""

    def __init__(self, key: bytes, previous: Sequence[bytes] = ()) -> None:
        self._current = _aead(key)
        self.key_id = key_id(key)
        self._by_id = {key_id(k): _aead(k) for k in previous}
        self._by_id[self.key_id] = self._current

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._current.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes, sealed_with: str | None = None) -> bytes:
        """Open ``blob``; ``sealed_with`` is the key id its metadata names (the current
        key when unknown, as for blobs written before ids were recorded)."""
        aead = self._by_id.get(sealed_with or self.key_id)
        if aead is None:
            raise CodecError(
                f"sealed with key {sealed_with}, which is neither the current key "
                f"({self.key_id}) nor a previous one: list it in the secret's previous keys"
            )
        try:
            return aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
        except InvalidTag:
            raise CodecError("decryption failed: wrong key or tampered data") from None


@dataclass(frozen=True)
class CodecInfo:
    compression: str
    encrypted: bool
    key_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"compression": self.compression, "encrypted": self.encrypted, "key_id": self.key_id}

    @staticmethod
    def from_json(doc: dict[str, Any]) -> CodecInfo:
        return CodecInfo(str(doc["compression"]), bool(doc["encrypted"]), doc.get("key_id"))


class Codec:
    """Encodes with the configured method; decodes whatever ``CodecInfo`` says was used.

    ``cipher`` is a callable so the key is fetched from the secret store only when some
    blob actually needs it (e.g. restoring an encrypted snapshot after ``encrypt`` was
    turned off)."""

    def __init__(
        self, compression: Compression, encrypt: bool, cipher: Callable[[], Cipher]
    ) -> None:
        self.compression = compression
        self.encrypt = encrypt
        self._cipher = cipher

    def encode(self, data: bytes, aad: bytes) -> tuple[bytes, CodecInfo]:
        blob = compress(data, self.compression)
        if not self.encrypt:
            return blob, CodecInfo(self.compression, False)
        cipher = self._cipher()
        return cipher.seal(blob, aad), CodecInfo(self.compression, True, cipher.key_id)

    def decode(self, blob: bytes, info: CodecInfo, aad: bytes) -> bytes:
        if info.encrypted:
            blob = self._cipher().open(blob, aad, info.key_id)
        return decompress(blob, info.compression)
