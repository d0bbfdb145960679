"""Inference's handlers for Dapr invocation, streaming and pub/sub, free of Dapr types.

Each handler takes the raw request bytes and returns what the edge sends back, so the
logic is unit-tested with a fake sidecar. Failures are structured error payloads, never
tracebacks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field

from opentelemetry import trace
from pydantic import BaseModel

from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    InternalError,
    InvalidRequestError,
    OverloadedError,
    PermissionDeniedError,
)
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import (
    CancelReply,
    CancelRequest,
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    GenerateResult,
    InferenceRequestEvent,
    InferenceResultEvent,
    ModelRef,
    ModelsReply,
    ModelState,
    parse,
)
from autoglm.core.sidecar import SidecarAPI, error_reply
from autoglm.inference import outputs
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.metrics import InferenceMetrics
from autoglm.inference.scheduler import RequestHandle

log = logging.getLogger(__name__)

#: Value of a request id's idempotency record while a delivery is generating it.
_CLAIMED = {"state": "claimed"}


def cancel_key(request_id: str) -> str:
    """Where a cancel of a pub/sub request is recorded for every inference replica."""
    return f"cancel:inference:{request_id}"


def _is_claim(record: object) -> bool:
    return isinstance(record, dict) and record.get("state") == "claimed"


class StopSignal:
    """Set once, from any thread, to stop a stream; callbacks registered before or
    after run exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._callbacks: list[Callable[[], None]] = []

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def on_set(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if not self._set:
                self._callbacks.append(callback)
                return
        callback()

    @property
    def is_set(self) -> bool:
        return self._set


@dataclass(eq=False)
class InferenceService:
    engine: AutoGLMEngine
    sidecar: SidecarAPI
    _: KW_ONLY
    metrics: InferenceMetrics = field(default_factory=InferenceMetrics)
    #: Dapr app ids allowed to call ``load_model`` / ``unload_model``.
    admin_callers: tuple[str, ...] = ("gateway",)
    idempotency_ttl_s: int = 86400
    claim_ttl_s: float = 10.0
    #: Injected latency before each generation (chaos tests only; 0 in any real run).
    fault_delay_s: float = 0.0
    #: How often a pub/sub generation looks for a cancel recorded by another replica.
    cancel_poll_s: float = 1.0
    #: Pub/sub generations running here, by request id (``cancel`` finds them).
    _running: dict[str, RequestHandle] = field(default_factory=dict, init=False, repr=False)

    # -- invocation (``autoglm.inference.app`` serves these through the contract table) --
    def observe(self, method: str, request: BaseModel | None, outcome: str, seconds: float) -> None:
        """Count and time a call under the model it used (``_model_label``). Listings and
        health probes are no work of a model and are not counted."""
        if method in ("models", "health"):
            return
        label = self._model_label(method, request)
        self.metrics.requests.labels(label, method, outcome).inc()
        self.metrics.latency.labels(label, method).observe(seconds)

    def _model_label(self, method: str, request: BaseModel | None) -> str:
        """An embedding counts under the model it resolved to; only served ids become
        labels (arbitrary names sent by clients would grow the metrics without bound).
        Everything else counts under the default generative model."""
        if method == "embed":
            named = request.model if isinstance(request, EmbedRequest) else None
            resolved = named or self.engine.default_embedding_model
            if resolved is not None:
                return resolved if resolved in self.engine.registry.ids() else "unknown"
        return self.engine.default_model

    def generate(
        self,
        request: GenerateRequest,
        keep_alive: Callable[[], None] | None = None,
        cancelled: Callable[[], bool] | None = None,
    ) -> GenerateResult:
        """Run one generation; ``keep_alive`` is called every ``claim_ttl_s / 3`` while
        it runs (the pub/sub path renews its claim on the request id with it), and
        ``cancelled`` every ``cancel_poll_s``: once true, the generation is cancelled and
        its batch slot freed."""
        if self.fault_delay_s:
            self._sleep(self.fault_delay_s, keep_alive)
        handle = self.engine.submit(request)
        deadline = time.monotonic() + self.engine.request_timeout_s + 5
        if keep_alive is not None:
            self._running[request.request_id] = handle
            try:
                self._watch(handle, deadline, keep_alive, cancelled)
            finally:
                self._running.pop(request.request_id, None)
        result = self.engine.finish(handle, handle.result(max(0.0, deadline - time.monotonic())))
        if handle.ttft is not None:
            self.metrics.ttft.labels(result.model).observe(handle.ttft)
        trace.get_current_span().set_attributes(
            {
                "gen_ai.request.model": result.model,
                "gen_ai.usage.input_tokens": result.prompt_tokens,
                "gen_ai.usage.output_tokens": result.completion_tokens,
                "gen_ai.response.finish_reasons": [result.finish_reason],
                "autoglm.batch_size": handle.batch_size_at_join,
                "autoglm.ttft_ms": round((handle.ttft or 0.0) * 1000, 2),
            }
        )
        return result

    def _watch(
        self,
        handle: RequestHandle,
        deadline: float,
        keep_alive: Callable[[], None],
        cancelled: Callable[[], bool] | None,
    ) -> None:
        renew_every = self.claim_ttl_s / 3
        step = min(renew_every, self.cancel_poll_s) if cancelled else renew_every
        next_renew = time.monotonic() + renew_every
        stopped = False
        while not handle.wait(step) and (now := time.monotonic()) < deadline:
            if now >= next_renew:
                keep_alive()
                next_renew = now + renew_every
            if cancelled is not None and not stopped and cancelled():
                handle.cancel()
                stopped = True

    def _sleep(self, seconds: float, keep_alive: Callable[[], None] | None) -> None:
        """The injected delay, keeping a claim alive through it as a generation would."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            time.sleep(min(left, self.claim_ttl_s / 3) if keep_alive else left)
            if keep_alive and time.monotonic() < end:
                keep_alive()

    def stream(self, body: bytes, stop: StopSignal | None = None) -> Iterator[bytes]:
        """JSON lines: ``{"delta": text}`` as decoded (with ``"logprobs"`` when asked),
        ``{"tool_calls": [...]}`` deltas when the model calls tools, then
        ``{"result": ...}`` or ``{"error": ...}``. Abandoning the iterator cancels the
        generation; so does ``stop``, after which the stream still ends normally with
        the (cancelled) result, so that the call ends with OK."""
        try:
            request = parse(GenerateRequest, body)
            handle = self.engine.submit(request, stream=True)
        except AutoGLMError as exc:
            yield error_reply(exc).encode()
            return
        if stop is not None:
            stop.on_set(handle.cancel)
        try:
            for frame in outputs.stream_frames(handle):
                yield json.dumps(frame).encode()
            result = self.engine.finish(handle, handle.result(1))
            if handle.ttft is not None:
                self.metrics.ttft.labels(result.model).observe(handle.ttft)
            yield json.dumps({"result": result.model_dump(mode="json")}).encode()
        except AutoGLMError as exc:
            yield error_reply(exc).encode()
        finally:
            if not handle.done:
                handle.cancel()

    def cancel(self, ref: CancelRequest) -> CancelReply:
        """Cancel a request sent through ``inference.requests``: recorded in the state
        store, where the replica generating it (or about to) finds it within
        ``cancel_poll_s``, and cancelled at once when it runs here."""
        if self.sidecar.get_state(cancel_key(ref.request_id)) is None:
            with contextlib.suppress(ConflictError):  # recorded already
                self.sidecar.save_state(
                    cancel_key(ref.request_id),
                    {"at": time.time()},
                    create_only=True,
                    ttl_s=self.idempotency_ttl_s,
                )
        handle = self._running.get(ref.request_id)
        if handle is not None:
            handle.cancel()
        return CancelReply(request_id=ref.request_id, cancelled=True)

    def _cancelled(self, request_id: str) -> bool:
        try:
            return self.sidecar.get_state(cancel_key(request_id)) is not None
        except AutoGLMError:
            return False  # the store is down: keep generating, look again later

    def embed(self, request: EmbedRequest) -> EmbedResult:
        vectors, tokens = self.engine.embed(request.input, request.model)
        model = request.model or self.engine.default_embedding_model or ""
        return EmbedResult(model=model, data=vectors, prompt_tokens=tokens)

    def models(self) -> ModelsReply:
        return ModelsReply(data=self.engine.models())

    def health(self) -> dict[str, object]:
        return self.engine.health()

    def load_model(self, ref: ModelRef, caller: str | None) -> ModelState:
        self._admin(caller)
        self.engine.load_model(ref.model)
        return ModelState(model=ref.model, state="ready")

    def unload_model(self, ref: ModelRef, caller: str | None) -> ModelState:
        self._admin(caller)
        self.engine.unload_model(ref.model)
        return ModelState(model=ref.model, state="not_loaded")

    def _admin(self, caller: str | None) -> None:
        if caller not in self.admin_callers:
            raise PermissionDeniedError(
                f"app {caller or 'unknown'!r} may not manage models; allowed: "
                f"{', '.join(self.admin_callers)}"
            )

    # -- pub/sub ---------------------------------------------------------------------
    def on_request_event(self, body: bytes) -> Ack:
        """Handle one ``inference.requests`` message; publish its result to its reply topic.

        Invalid messages cannot succeed on redelivery, so they are dropped (Dapr routes
        them to the dead-letter topic). A message is acknowledged only once its result is
        published. Deliveries of one request id are made exclusive by a claim in the
        state store (``idempotency:inference:{id}``): created first-write-wins with a
        short TTL and renewed while the generation runs, so a second delivery while the
        first is still working is asked to come back later (RETRY), a claim of a crashed
        replica lapses within ``claim_ttl_s``, and once the result is out the record says
        so and every later duplicate is acknowledged without a second result.
        """
        try:
            event = parse(InferenceRequestEvent, body)
        except InvalidRequestError as exc:
            log.warning("invalid inference request dropped", extra={"reason": exc.message})
            return Ack.DROP
        rid = event.request_id
        key = f"idempotency:inference:{rid}"
        try:
            entry = self.sidecar.get_state(key)
            if entry is not None and not _is_claim(entry.value):
                log.info("duplicate delivery ignored", extra={"request_id": rid})
                return Ack.SUCCESS
            if entry is not None:
                log.info("request is being served by another delivery", extra={"request_id": rid})
                return Ack.RETRY
            self.sidecar.save_state(key, _CLAIMED, create_only=True, ttl_s=self._claim_ttl)
        except AutoGLMError as exc:
            # Store down, or another delivery claimed it first: either way, later.
            log.warning(
                "request not claimed; will be redelivered",
                extra={"request_id": rid, "reason": exc.message},
            )
            return Ack.RETRY

        if self._cancelled(rid):
            # Cancelled before it started: nothing is generated and nothing published
            # (the canceller has already recorded the outcome).
            log.info("cancelled request skipped", extra={"request_id": rid})
            self._overwrite_quietly(key, {"state": "cancelled", "at": time.time()})
            return Ack.SUCCESS

        def renew() -> None:
            try:
                self._overwrite(key, _CLAIMED, self._claim_ttl)
            except AutoGLMError as exc:
                log.warning("claim not renewed", extra={"request_id": rid, "reason": exc.message})

        try:
            outcome = InferenceResultEvent(
                request_id=rid,
                result=self.generate(
                    event.request, keep_alive=renew, cancelled=lambda: self._cancelled(rid)
                ),
            )
        except OverloadedError:
            self._release(key)
            return Ack.RETRY  # a full queue is temporary: take it again later
        except AutoGLMError as exc:
            outcome = InferenceResultEvent(request_id=rid, error=exc.to_payload())
        except Exception:
            log.exception("generation failed", extra={"request_id": rid})
            err = InternalError("generation failed")
            outcome = InferenceResultEvent(request_id=rid, error=err.to_payload())
        try:
            self.sidecar.publish(event.reply_topic, outcome.model_dump(mode="json"))
        except AutoGLMError as exc:
            log.error(
                "result not published; will be redelivered",
                extra={"request_id": rid, "reason": exc.message},
            )
            self._release(key)
            return Ack.RETRY
        self._overwrite_quietly(key, {"state": "published", "at": time.time()})
        return Ack.SUCCESS

    def _overwrite_quietly(self, key: str, value: Mapping[str, object]) -> None:
        try:
            self._overwrite(key, value, self.idempotency_ttl_s)
        except AutoGLMError as exc:
            # The result is out; the claim lapses and a redelivery could publish again.
            log.warning("idempotency record not saved", extra={"key": key, "reason": exc.message})

    @property
    def _claim_ttl(self) -> int:
        return max(1, math.ceil(self.claim_ttl_s))  # the state store counts whole seconds

    def _overwrite(self, key: str, value: Mapping[str, object], ttl_s: int) -> None:
        """Replace the record we hold. It was created first-write, and state.redis then
        refuses any write without its current ETag, so read the ETag first."""
        entry = self.sidecar.get_state(key)
        self.sidecar.save_state(
            key, value, etag=entry.etag if entry else None, create_only=entry is None, ttl_s=ttl_s
        )

    def _release(self, key: str) -> None:
        """Drop a claim whose work did not happen, so a redelivery need not wait it out."""
        try:
            entry = self.sidecar.get_state(key)
            if entry is not None and _is_claim(entry.value):
                self.sidecar.delete_state(key, etag=entry.etag)
        except AutoGLMError as exc:
            log.warning("claim not released; it lapses", extra={"key": key, "reason": exc.message})
