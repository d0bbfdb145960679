"""Which models are configured, which are loaded, and what to evict when memory is short.

Priority models are loaded (and warmed) before the app reports ready and are never
evicted or unloaded; the others are loaded in the background on first use, and callers
wait a bounded time for them. Before a load starts, its size is estimated and least
recently used idle non-priority models are unloaded to make room; a load that cannot fit
even then is refused (``memory_budget_exceeded``) rather than pushing memory over the
budget or killing requests in flight. Each model's state is visible, so readiness is per
model.
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

from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    NotFoundError,
    OverloadedError,
    UnavailableError,
)

log = logging.getLogger(__name__)

_MIB = 2**20


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

    @property
    def busy(self) -> bool:
        """Whether requests are running or queued on it (it must not be evicted)."""
        ...

    def close(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...


@dataclass
class _Slot:
    spec: ModelSpec
    state: ModelState = ModelState.NOT_LOADED
    loaded: Any = None
    error: str | None = None
    last_used: float = field(default_factory=time.monotonic)
    #: Set when the current load attempt is over (ready, failed or unloaded).
    ready: threading.Event = field(default_factory=threading.Event)
    #: The estimate of a load in progress, counted against the budget so that two loads
    #: started together do not both count the same free memory.
    reserved: int = 0
    #: Bumped by every load and unload: a load finishing under an older number was
    #: unloaded meanwhile, and its result is discarded.
    generation: int = 0


class ModelRegistry:
    def __init__(
        self,
        specs: list[ModelSpec],
        loader: Callable[[ModelSpec], Loaded],
        memory_budget_bytes: int,
        estimate: Callable[[ModelSpec], int] | None = None,
    ) -> None:
        self._slots = {s.id: _Slot(s) for s in specs}
        self._loader = loader
        #: Bytes a model will take once loaded, known before loading it (0: unknown).
        self._estimate = estimate or (lambda _spec: 0)
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
            loaded = slot.loaded  # read once: an unload may clear it meanwhile
            if loaded is not None:
                entry.update(loaded.describe())
            out.append(entry)
        return out

    def priority_ready(self) -> bool:
        return all(s.state is ModelState.READY for s in self._slots.values() if s.spec.priority)

    def loaded_bytes(self) -> int:
        return sum(s.loaded.nbytes for s in self._slots.values() if s.loaded is not None)

    def committed_bytes(self) -> int:
        """Loaded models plus the estimates of loads in progress."""
        return self.loaded_bytes() + sum(s.reserved for s in self._slots.values())

    # -- use -------------------------------------------------------------------------
    def get(self, model_id: str, wait_s: float = 60.0) -> Any:
        """The loaded model; starts a background load on first use and waits ``wait_s``."""
        slot = self._slot(model_id)
        started: int | None = None
        with self._lock:
            if slot.state in (ModelState.NOT_LOADED, ModelState.FAILED):
                started, victims = self._begin_load(slot)
        if started is not None:
            _close_all(victims)
            threading.Thread(
                target=self._do_load,
                args=(slot, started),
                name=f"load-{model_id}",
                daemon=True,
            ).start()
        slot.ready.wait(wait_s)
        return self._use(slot)

    def load(self, model_id: str) -> None:
        """Load now (blocking); raises if the load fails or cannot fit the budget."""
        slot = self._slot(model_id)
        started: int | None = None
        with self._lock:
            if slot.state is ModelState.READY:
                return
            if slot.state is not ModelState.LOADING:
                started, victims = self._begin_load(slot)
        if started is not None:
            _close_all(victims)
            self._do_load(slot, started)
        else:
            slot.ready.wait()
        self._use(slot)

    def unload(self, model_id: str) -> None:
        """Unload a model (or abandon its load in progress); priority models refuse."""
        slot = self._slot(model_id)
        if slot.spec.priority:
            # Readiness depends on every priority model: unloading one takes the app out
            # of service, which is what a rollout is for, not an admin call.
            raise ConflictError(
                f"model {model_id!r} is a priority model: it is loaded at start and never unloaded",
                code="priority_model",
                param="model",
            )
        self._unload(slot)

    def close(self) -> None:
        for slot in self._slots.values():
            self._unload(slot)

    # -- internals -------------------------------------------------------------------
    def _slot(self, model_id: str) -> _Slot:
        try:
            return self._slots[model_id]
        except KeyError:
            raise NotFoundError(f"model {model_id!r} is not served here", param="model") from None

    def _use(self, slot: _Slot) -> Any:
        """The loaded model, or why there is none (read together, under the lock)."""
        with self._lock:
            if slot.state is not ModelState.READY:
                raise self._not_ready(slot)
            slot.last_used = time.monotonic()
            return slot.loaded

    def _not_ready(self, slot: _Slot) -> UnavailableError:
        model_id = slot.spec.id
        if slot.state is ModelState.LOADING:
            return UnavailableError(
                f"model {model_id!r} is still loading; retry shortly", code="model_loading"
            )
        if slot.state is ModelState.NOT_LOADED:
            return UnavailableError(
                f"model {model_id!r} was unloaded before it could serve this request",
                code="model_unloaded",
            )
        return UnavailableError(
            f"model {model_id!r} failed to load: {slot.error}", code="model_load_failed"
        )

    def _begin_load(self, slot: _Slot) -> tuple[int, list[Any]]:
        """Make room and mark ``slot`` loading (lock held): its load number and the models
        evicted for it, to close before the load starts so they are never both in memory."""
        estimate = max(0, self._estimate(slot.spec))
        victims = self._make_room(slot, estimate, strict=True)
        slot.state, slot.error, slot.reserved = ModelState.LOADING, None, estimate
        slot.generation += 1
        slot.ready.clear()
        return slot.generation, victims

    def _make_room(self, slot: _Slot, incoming: int, *, strict: bool) -> list[Any]:
        """Evict least recently used idle non-priority models until ``incoming`` more
        bytes fit (lock held). ``strict``: evict nothing and raise if they cannot fit."""
        over = self.committed_bytes() + incoming - self.memory_budget_bytes
        if over <= 0:
            return []
        # Busy models are never candidates: closing one fails the requests it is serving.
        candidates = sorted(
            (
                s
                for s in self._slots.values()
                if s is not slot
                and s.state is ModelState.READY
                and s.loaded is not None
                and not s.spec.priority
                and not s.loaded.busy
            ),
            key=lambda s: s.last_used,
        )
        evictable = sum(s.loaded.nbytes for s in candidates)
        if strict and evictable < over:
            raise self._budget_error(slot, incoming, evictable)
        victims = []
        for victim in candidates:
            if over <= 0:
                break
            over -= victim.loaded.nbytes
            log.info("evicting model to fit memory budget", extra={"model": victim.spec.id})
            victims.append(self._detach(victim))
        if over > 0:
            # Only after a load whose estimate was low: the memory is already in use.
            log.warning(
                "memory budget exceeded after load",
                extra={"model": slot.spec.id, "over_bytes": over},
            )
        return victims

    def _budget_error(self, slot: _Slot, incoming: int, evictable: int) -> OverloadedError:
        budget, committed = self.memory_budget_bytes, self.committed_bytes()
        return OverloadedError(
            f"model {slot.spec.id!r} needs about {incoming / _MIB:.0f} MiB, but the memory "
            f"budget is {budget / _MIB:.0f} MiB, {committed / _MIB:.0f} MiB of it in use, and "
            f"only {evictable / _MIB:.0f} MiB can be evicted (the rest is priority models, "
            "models serving requests, or loads in progress)",
            code="memory_budget_exceeded",
            details={
                "model": slot.spec.id,
                "required_bytes": incoming,
                "budget_bytes": budget,
                "in_use_bytes": committed,
                "evictable_bytes": evictable,
            },
        )

    def _detach(self, slot: _Slot) -> Any:
        """Mark ``slot`` not loaded (lock held); return what the caller must close."""
        loaded, slot.loaded = slot.loaded, None
        if slot.state is ModelState.LOADING:
            slot.ready.set()  # waiters wake and see it unloaded
        else:
            slot.ready.clear()
        slot.state, slot.error, slot.reserved = ModelState.NOT_LOADED, None, 0
        slot.generation += 1  # a load still running discards its result
        return loaded

    def _unload(self, slot: _Slot) -> None:
        with self._lock:
            loaded = self._detach(slot)
        if loaded is not None:
            loaded.close()
            log.info("model unloaded", extra={"model": slot.spec.id})

    def _do_load(self, slot: _Slot, generation: int) -> None:
        try:
            loaded = self._loader(slot.spec)
        except AutoGLMError as exc:
            self._fail(slot, generation, exc.message)
            log.error("model load failed", extra={"model": slot.spec.id, "reason": exc.message})
            return
        except Exception as exc:  # a broken checkpoint must not kill the app
            self._fail(slot, generation, type(exc).__name__)
            log.exception("model load failed", extra={"model": slot.spec.id})
            return
        victims: list[Any] = []
        with self._lock:
            current = slot.generation == generation
            if current:
                slot.reserved = 0
                # The estimate may have been low; settle up with the real size.
                victims = self._make_room(slot, loaded.nbytes, strict=False)
                slot.loaded, slot.state = loaded, ModelState.READY
                slot.last_used = time.monotonic()
                slot.ready.set()
        _close_all(victims)
        if not current:
            loaded.close()
            log.info("model unloaded while loading; load discarded", extra={"model": slot.spec.id})

    def _fail(self, slot: _Slot, generation: int, reason: str) -> None:
        with self._lock:
            if slot.generation != generation:
                return  # unloaded meanwhile: not_loaded stands
            slot.state, slot.error, slot.reserved = ModelState.FAILED, reason, 0
            slot.ready.set()


def _close_all(models: list[Any]) -> None:
    for loaded in models:
        if loaded is not None:
            loaded.close()
