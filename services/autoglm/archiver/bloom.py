"""A Bloom filter of archived session keys: "definitely never archived" without disk I/O.

Restores of ids that never existed (cache penetration: scans, typos, attacks) are
answered from memory; a false positive only costs one directory lookup.
"""

from __future__ import annotations

import hashlib
import math
import threading


class BloomFilter:
    def __init__(self, capacity: int, error_rate: float) -> None:
        bits = math.ceil(-capacity * math.log(error_rate) / (math.log(2) ** 2))
        self.size = max(bits, 8)
        self.hashes = max(1, round(self.size / capacity * math.log(2)))
        self._bits = bytearray((self.size + 7) // 8)
        self._lock = threading.Lock()

    def _positions(self, key: str) -> list[int]:
        # Kirsch-Mitzenmacher: k positions from two independent 64-bit hashes.
        digest = hashlib.blake2b(key.encode(), digest_size=16).digest()
        h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little")
        return [(h1 + i * h2) % self.size for i in range(self.hashes)]

    def add(self, key: str) -> None:
        with self._lock:
            for pos in self._positions(key):
                self._bits[pos >> 3] |= 1 << (pos & 7)

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return all(self._bits[pos >> 3] & (1 << (pos & 7)) for pos in self._positions(key))
