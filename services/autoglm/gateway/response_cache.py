"""Cache of deterministic completions (temperature 0): an in-memory LRU in front of
the Dapr state store, so every gateway replica shares hits. Off by default."""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections import OrderedDict
from typing import Any

from autoglm.core.errors import AutoGLMError
from autoglm.core.sidecar import SidecarAPI


class ResponseCache:
    def __init__(self, sidecar: SidecarAPI, *, max_entries: int, ttl_s: int) -> None:
        self.sidecar = sidecar
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._local: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(tenant: str, request: dict[str, Any]) -> str:
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
        return f"respcache:{tenant}:{hashlib.sha256(canonical.encode()).hexdigest()}"

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            local = self._local.get(key)
            if local is not None and local[0] > time.monotonic():
                self._local.move_to_end(key)
                return local[1]
        try:
            entry = self.sidecar.get_state(key)
        except AutoGLMError:
            return None  # a cache that is down is a miss, never an error
        if entry is None or not isinstance(entry.value, dict):
            return None
        self._remember(key, entry.value)
        return entry.value

    def put(self, key: str, response: dict[str, Any]) -> None:
        self._remember(key, response)
        with contextlib.suppress(AutoGLMError):  # the local copy still serves hits
            self.sidecar.save_state(key, response, ttl_s=self.ttl_s)

    def _remember(self, key: str, response: dict[str, Any]) -> None:
        with self._lock:
            self._local[key] = (time.monotonic() + self.ttl_s, response)
            self._local.move_to_end(key)
            while len(self._local) > self.max_entries:
                self._local.popitem(last=False)
