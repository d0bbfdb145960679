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
from collections.abc import Callable
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


class Cipher:
    """AES-256-GCM; each blob is ``nonce (12 bytes) || ciphertext+tag``."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the archive encryption key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)
        #: Names the key in metadata without revealing it, so a wrong key is a clear error.
        self.key_id = hashlib.sha256(b"autoglm-archive-key:" + key).hexdigest()[:16]

    def seal(self, data: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, data, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(blob[:_NONCE], blob[_NONCE:], aad)
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
            cipher = self._cipher()
            if info.key_id and info.key_id != cipher.key_id:
                raise CodecError(f"sealed with key {info.key_id}, current key is {cipher.key_id}")
            blob = cipher.open(blob, aad)
        return decompress(blob, info.compression)
