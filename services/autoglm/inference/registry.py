"""Which models are configured, which are loaded, and what to evict when memory is short.

Priority models are loaded (and warmed) before the app reports ready; the others are
loaded in the background on first use, and callers wait a bounded time for them. When a
load would exceed the memory budget, least recently used non-priority models are unloaded
first. Each model's state is visible, so readiness is per model.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from autoglm.core.errors import AutoGLMError, NotFoundError, UnavailableError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    id: str
    path: Path
    #: Loaded and warmed at start, never evicted.
    priority: bool = False


class ModelState(enum.StrEnum):
    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class Loaded(Protocol):
    """What the registry needs from a loaded model."""

    nbytes: int

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class _Slot:
    spec: ModelSpec
    state: ModelState = ModelState.NOT_LOADED
    loaded: Any = None
    error: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    ready: threading.Event = field(default_factory=threading.Event)


class ModelRegistry:
    def __init__(
        self,
        specs: list[ModelSpec],
        loader: Callable[[ModelSpec], Loaded],
        memory_budget_bytes: int,
    ) -> None:
        self._slots = {s.id: _Slot(s) for s in specs}
        self._loader = loader
        self.memory_budget_bytes = memory_budget_bytes
        self._lock = threading.RLock()

    # -- queries ---------------------------------------------------------------------
    def ids(self) -> list[str]:
        return list(self._slots)

    def status(self) -> list[dict[str, Any]]:
        out = []
        for slot in self._slots.values():
            entry: dict[str, Any] = {
                "id": slot.spec.id,
                "state": slot.state.value,
                "priority": slot.spec.priority,
                "ready": slot.state is ModelState.READY,
            }
            if slot.error:
                entry["error"] = slot.error
            if slot.loaded is not None:
                entry.update(slot.loaded.describe())
            out.append(entry)
        return out

    def priority_ready(self) -> bool:
        return all(s.state is ModelState.READY for s in self._slots.values() if s.spec.priority)

    def loaded_bytes(self) -> int:
        return sum(s.loaded.nbytes for s in self._slots.values() if s.loaded is not None)

    # -- use -------------------------------------------------------------------------
    def get(self, model_id: str, wait_s: float = 60.0) -> Any:
        """The loaded model; starts a background load on first use and waits ``wait_s``."""
        slot = self._slot(model_id)
        with self._lock:
            if slot.state in (ModelState.NOT_LOADED, ModelState.FAILED):
                self._start_load(slot)
        if not slot.ready.wait(wait_s):
            raise UnavailableError(
                f"model {model_id!r} is still loading; retry shortly", code="model_loading"
            )
        if slot.state is not ModelState.READY:
            raise UnavailableError(
                f"model {model_id!r} failed to load: {slot.error}", code="model_load_failed"
            )
        slot.last_used = time.monotonic()
        return slot.loaded

    def load(self, model_id: str) -> None:
        """Load now (blocking); raises if the load fails."""
        slot = self._slot(model_id)
        with self._lock:
            if slot.state is ModelState.READY:
                return
            if slot.state is not ModelState.LOADING:
                slot.state, slot.error = ModelState.LOADING, None
                slot.ready.clear()
                run = True
            else:
                run = False
        if run:
            self._do_load(slot)
        else:
            slot.ready.wait()
        if slot.state is not ModelState.READY:
            raise UnavailableError(
                f"model {model_id!r} failed to load: {slot.error}", code="model_load_failed"
            )

    def unload(self, model_id: str) -> None:
        slot = self._slot(model_id)
        with self._lock:
            loaded, slot.loaded = slot.loaded, None
            slot.state = ModelState.NOT_LOADED
            slot.ready.clear()
        if loaded is not None:
            loaded.close()
            log.info("model unloaded", extra={"model": model_id})

    def close(self) -> None:
        for model_id in self.ids():
            self.unload(model_id)

    # -- internals -------------------------------------------------------------------
    def _slot(self, model_id: str) -> _Slot:
        try:
            return self._slots[model_id]
        except KeyError:
            raise NotFoundError(f"model {model_id!r} is not served here", param="model") from None

    def _start_load(self, slot: _Slot) -> None:
        slot.state, slot.error = ModelState.LOADING, None
        slot.ready.clear()
        threading.Thread(
            target=self._do_load, args=(slot,), name=f"load-{slot.spec.id}", daemon=True
        ).start()

    def _do_load(self, slot: _Slot) -> None:
        try:
            loaded = self._loader(slot.spec)
            with self._lock:
                self._evict_for(loaded.nbytes, keep=slot.spec.id)
                slot.loaded, slot.state = loaded, ModelState.READY
                slot.last_used = time.monotonic()
        except AutoGLMError as exc:
            slot.state, slot.error = ModelState.FAILED, exc.message
            log.error("model load failed", extra={"model": slot.spec.id, "reason": exc.message})
        except Exception as exc:  # a broken checkpoint must not kill the app
            slot.state, slot.error = ModelState.FAILED, type(exc).__name__
            log.exception("model load failed", extra={"model": slot.spec.id})
        finally:
            slot.ready.set()

    def _evict_for(self, incoming: int, keep: str) -> None:
        candidates = sorted(
            (
                s
                for s in self._slots.values()
                if s.loaded is not None and not s.spec.priority and s.spec.id != keep
            ),
            key=lambda s: s.last_used,
        )
        while self.loaded_bytes() + incoming > self.memory_budget_bytes and candidates:
            victim = candidates.pop(0)
            log.info("evicting model to fit memory budget", extra={"model": victim.spec.id})
            self.unload(victim.spec.id)
