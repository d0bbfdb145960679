"""The archive encryption keys, read from the secret store (Vault via Dapr).

The secret holds ``encryption-key`` (the current key: base64 of 32 bytes) and optionally
``previous-keys`` (earlier keys, base64, separated by commas or whitespace). Rotating is:
write a new current key and move the old one into ``previous-keys``. The archiver seals
with the current key and opens with whichever key a blob's metadata names, and it
re-reads the secret every ``ttl_s`` seconds, so a rotation takes effect without a
restart and never makes an older snapshot or audit file unreadable.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
import time

from autoglm.archiver.codec import Cipher
from autoglm.core.errors import AutoGLMError
from autoglm.core.sidecar import SidecarAPI

log = logging.getLogger(__name__)

_SEPARATORS = re.compile(r"[\s,]+")


def _decode(value: str, what: str) -> bytes:
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if len(key) != 32:
        raise ValueError(f"{what} is {len(key)} bytes, not 32")
    return key


def cipher_from_secret(secret: dict[str, str], current_field: str, previous_field: str) -> Cipher:
    """The ``Cipher`` of a secret's current and previous keys; ValueError naming the
    field that is missing or malformed."""
    if current_field not in secret:
        raise ValueError(f"field {current_field!r} is missing")
    current = _decode(secret[current_field], repr(current_field))
    previous = [
        _decode(value, f"entry {i} of {previous_field!r}")
        for i, value in enumerate(_SEPARATORS.split(secret.get(previous_field, "").strip()))
        if value
    ]
    return Cipher(current, previous)


class ArchiveKeys:
    """Fetched on first use, then re-read every ``ttl_s`` seconds. A failed re-read keeps
    the keys already known (a secret store outage must not stop the archive)."""

    def __init__(
        self,
        sidecar: SidecarAPI,
        *,
        store: str,
        secret: str,
        current_field: str = "encryption-key",
        previous_field: str = "previous-keys",
        ttl_s: float = 60.0,
    ) -> None:
        self.sidecar = sidecar
        self.store, self.secret = store, secret
        self.current_field, self.previous_field = current_field, previous_field
        self.ttl_s = ttl_s
        self._cipher: Cipher | None = None
        self._fetched = 0.0
        self._lock = threading.Lock()

    def __call__(self) -> Cipher:
        with self._lock:
            if self._cipher is None or time.monotonic() - self._fetched >= self.ttl_s:
                try:
                    self._cipher = self._fetch()
                    self._fetched = time.monotonic()
                except AutoGLMError as exc:
                    if self._cipher is None:
                        raise
                    log.warning("archive key not re-read; keeping the known keys",
                                extra={"reason": exc.message})  # fmt: skip
            return self._cipher

    def _fetch(self) -> Cipher:
        values = self.sidecar.get_secret(self.store, self.secret)
        try:
            cipher = cipher_from_secret(values, self.current_field, self.previous_field)
        except ValueError as exc:
            raise AutoGLMError(
                f"secret {self.secret!r} has no valid archive key: {exc} "
                "(base64 of 32 bytes expected)"
            ) from None
        if self._cipher is not None and cipher.key_id != self._cipher.key_id:
            log.info("archive key rotated", extra={"key_id": cipher.key_id})
        return cipher
