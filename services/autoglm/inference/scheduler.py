"""Continuous batching: sequences join the running batch between decode steps and leave
as soon as they finish, each with its own sampling settings, stops, seed and deadline.

One scheduler thread owns the model. Per iteration it (1) drops cancelled or expired
sequences, (2) admits waiting requests up to ``max_batch_size`` — each prompt is
prefilled once, reusing a cached prefix when one matches — and (3) runs one batched
decode step for every running sequence. Callers wait on a ``RequestHandle`` or iterate
it for streamed text. The waiting queue is bounded: a full queue is an immediate
``OverloadedError``, never unbounded memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from autoglm.core.errors import AutoGLMError, DeadlineExceededError, OverloadedError
from autoglm.core.schemas import FinishReason, GenerateRequest, GenerateResult
from autoglm.inference.detokenizer import IncrementalText
from autoglm.inference.kvcache import (
    BatchKV,
    LayerKV,
    PrefixCache,
    cache_from_layers,
    cache_layers,
)
from autoglm.inference.sampling import SamplingPlan, SequenceSampler, make_generator

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    """Observed by metrics: what the scheduler did in its latest iteration."""

    batch_size: int = 0
    queue_depth: int = 0
    tokens: int = 0
    #: Seconds each request admitted in this iteration had waited in the queue.
    queue_waits: list[float] = field(default_factory=list)


class RequestHandle:
    """The caller's side of one request: wait for the result, iterate text, or cancel."""

    _END = object()

    def __init__(self, request: GenerateRequest) -> None:
        self.request = request
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self._events: queue.Queue[object] = queue.Queue()
        self._done = threading.Event()
        self._result: GenerateResult | None = None
        self._error: AutoGLMError | None = None
        self.cancelled = False
        self.streaming = False
        #: Sequences in the batch when this one joined it (for traces and metrics).
        self.batch_size_at_join = 0
        #: Prepared by the engine: constraint, log-probability output (sampling.py).
        self.plan = SamplingPlan()

    # scheduler side
    def _emit(self, text: str) -> None:
        if text:
            self._events.put(text)

    def _finish(self, result: GenerateResult | None, error: AutoGLMError | None) -> None:
        if self._done.is_set():
            return  # the first outcome stands (a failed step may report it again)
        self._result, self._error = result, error
        self._done.set()
        self._events.put(self._END)

    # caller side
    def cancel(self) -> None:
        """Free the slot at the next step; the result becomes ``finish_reason='cancelled'``."""
        self.cancelled = True

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds; whether the request has finished."""
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> GenerateResult:
        if not self._done.wait(timeout):
            self.cancel()
            raise DeadlineExceededError("generation did not finish in time")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def __iter__(self) -> Iterator[str]:
        """Text deltas as they are generated; raises the request's error at the end."""
        while True:
            item = self._events.get()
            if item is self._END:
                break
            yield str(item)
        if self._error is not None:
            raise self._error

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.submitted


@dataclass
class _Sequence:
    handle: RequestHandle
    prompt_ids: list[int]
    sampler: SequenceSampler
    text: IncrementalText | None  # None: decode once at the end (no stream, no stops)
    deadline: float
    output_ids: list[int] = field(default_factory=list)
    #: Tokens whose keys/values are in the cache (prompt + all but the pending token).
    cached: int = 0


class Scheduler:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_id: str,
        eos_token_ids: list[int],
        *,
        max_batch_size: int = 32,
        max_queue: int = 256,
        prefix_cache: PrefixCache | None = None,
        request_timeout_s: float = 300.0,
        on_step: Callable[[StepStats], None] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.eos = set(eos_token_ids)
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefix_cache = prefix_cache
        self.request_timeout_s = request_timeout_s
        self.on_step = on_step
        self.device = next(model.parameters()).device
        self._waiting: deque[tuple[RequestHandle, list[int]]] = deque()
        self._running: list[_Sequence] = []
        self._batch = BatchKV()
        #: First tokens taken by prefills in this iteration (decode steps count their own).
        self._prefill_tokens = 0
        self._cv = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(
            target=self._loop, name=f"scheduler-{model_id}", daemon=True
        )
        self._thread.start()

    # -- callers -------------------------------------------------------------------
    def submit(
        self,
        request: GenerateRequest,
        prompt_ids: list[int],
        stream: bool = False,
        plan: SamplingPlan | None = None,
    ) -> RequestHandle:
        """Queue a request. ``stream`` asks for text as it is decoded; without it (and
        without stop strings) text is decoded once at the end, which is cheaper."""
        return self.submit_group([request], prompt_ids, [plan or SamplingPlan()], stream)[0]

    def submit_group(
        self,
        requests: list[GenerateRequest],
        prompt_ids: list[int],
        plans: list[SamplingPlan],
        stream: bool = False,
    ) -> list[RequestHandle]:
        """Queue sequences of one prompt together (``n`` > 1): they are admitted in the
        same iteration when the batch has room, and the prompt is prefilled once."""
        handles = []
        for request, plan in zip(requests, plans, strict=True):
            handle = RequestHandle(request)
            handle.streaming = stream
            handle.plan = plan
            handles.append(handle)
        with self._cv:
            if self._stop:
                raise OverloadedError("model is shutting down", code="shutting_down")
            if len(self._waiting) + len(handles) > self.max_queue:
                self._drop_cancelled()
            if len(self._waiting) + len(handles) > self.max_queue:
                raise OverloadedError(
                    f"inference queue is full ({self.max_queue} waiting); retry later"
                )
            self._waiting.extend((handle, prompt_ids) for handle in handles)
            self._cv.notify()
        return handles

    def _drop_cancelled(self) -> None:
        """Give the places of requests cancelled while waiting back (caller holds _cv)."""
        keep: deque[tuple[RequestHandle, list[int]]] = deque()
        for handle, prompt_ids in self._waiting:
            if handle.cancelled:
                handle._finish(self._result(handle, "", [], "cancelled", len(prompt_ids)), None)
            else:
                keep.append((handle, prompt_ids))
        self._waiting = keep

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def batch_size(self) -> int:
        return len(self._running)

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        self._thread.join(timeout=30)

    # -- loop ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._stop and not self._waiting and not self._running:
                    self._cv.wait()
                if self._stop:
                    break
            try:
                with torch.inference_mode():
                    self._iterate()
            except Exception:  # keep serving: fail the batch, not the process
                log.exception("scheduler step failed; failing running requests")
                for seq in self._running:
                    seq.handle._finish(None, AutoGLMError("generation failed"))
                self._running, self._batch = [], BatchKV()
        shutting = AutoGLMError("model unloaded", code="shutting_down")
        for seq in self._running:
            seq.handle._finish(None, shutting)
        for handle, _ in self._waiting:
            handle._finish(None, shutting)

    def _iterate(self) -> None:
        now = time.monotonic()
        finished = [
            (i, "cancelled" if s.handle.cancelled else "timeout")
            for i, s in enumerate(self._running)
            if s.handle.cancelled or now > s.deadline
        ]
        self._retire(dict(finished))
        self._prefill_tokens = 0
        waits = self._admit()
        stats = StepStats(
            batch_size=len(self._running),
            queue_depth=len(self._waiting),
            queue_waits=waits,
            tokens=self._prefill_tokens,
        )
        if self._running:
            stats.tokens += self._decode_step()
        if self.on_step:
            self.on_step(stats)

    def _admit(self) -> list[float]:
        """Move waiting requests into the batch; return how long each had waited.

        Prompts with a cached prefix are prefilled one by one (each from its own prefix);
        all others together, as one left-padded forward pass. If a prefill fails, the
        requests taken off the queue for it are failed here: they are not all in the
        batch yet, and the loop's error handling only reaches the batch."""
        fresh: list[_Sequence] = []
        waits: list[float] = []
        while len(self._running) + len(fresh) < self.max_batch_size:
            with self._cv:
                if not self._waiting:
                    break
                handle, prompt_ids = self._waiting.popleft()
            if handle.cancelled:
                handle._finish(self._result(handle, "", [], "cancelled", len(prompt_ids)), None)
                continue
            if time.monotonic() > handle.submitted + self._timeout(handle):
                handle._finish(None, DeadlineExceededError("request waited too long in queue"))
                continue
            waits.append(time.monotonic() - handle.submitted)
            fresh.append(
                _Sequence(
                    handle=handle,
                    prompt_ids=prompt_ids,
                    sampler=handle.plan.sampler(
                        handle.request.sampling,
                        make_generator(handle.request.sampling.seed, self.device),
                        self.eos,
                        prompt_ids,
                    ),
                    text=(
                        IncrementalText(self.tokenizer, handle.request.sampling.stop)
                        if handle.streaming or handle.request.sampling.stop
                        else None
                    ),
                    deadline=handle.submitted + self._timeout(handle),
                )
            )
        try:
            self._prefill(fresh)
        except Exception:
            for seq in fresh:
                seq.handle._finish(None, AutoGLMError("generation failed"))
            raise
        return waits

    def _prefill(self, fresh: list[_Sequence]) -> None:
        misses = []
        for seq in fresh:
            reused, prefix = (
                self.prefix_cache.lookup(seq.prompt_ids) if self.prefix_cache else (0, None)
            )
            if prefix is None:
                misses.append(seq)
                continue
            cache = cache_from_layers(prefix)
            ids = torch.tensor([seq.prompt_ids[reused:]], device=self.device)
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            self._join([seq], cache_layers(out.past_key_values), None, out.logits[:, -1])
        if misses:
            self._prefill_together(misses)

    def _prefill_together(self, seqs: list[_Sequence]) -> None:
        # Identical prompts (the n sequences of one group) are computed once and their
        # rows of keys/values copied.
        unique: dict[tuple[int, ...], int] = {}
        rows = [unique.setdefault(tuple(s.prompt_ids), len(unique)) for s in seqs]
        prompts = [list(p) for p in unique]
        width = max(len(p) for p in prompts)
        pad = int(self.tokenizer.pad_token_id or 0)
        ids = torch.tensor(
            [[pad] * (width - len(p)) + p for p in prompts],
            device=self.device,
        )
        mask = torch.tensor(
            [[0] * (width - len(p)) + [1] * len(p) for p in prompts],
            device=self.device,
        )
        positions = (mask.cumsum(dim=-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        layers, logits = cache_layers(out.past_key_values), out.logits[:, -1]
        if len(prompts) < len(seqs):
            index = torch.tensor(rows, device=self.device)
            layers = [(k.index_select(0, index), v.index_select(0, index)) for k, v in layers]
            mask, logits = mask.index_select(0, index), logits.index_select(0, index)
        self._join(seqs, layers, mask, logits)

    def _join(
        self,
        seqs: list[_Sequence],
        layers: LayerKV,
        mask: torch.Tensor | None,
        logits: torch.Tensor,
    ) -> None:
        """Add prefilled sequences to the batch and take their first token."""
        start = len(self._running)
        for seq in seqs:
            seq.cached = len(seq.prompt_ids)
        self._running.extend(seqs)
        for seq in seqs:
            seq.handle.batch_size_at_join = len(self._running)
        self._batch.add(layers, mask)
        self._prefill_tokens += len(seqs)  # each takes its first token below
        done = {}
        for j, seq in enumerate(seqs):
            reason = self._accept(seq, logits[j])
            if reason:
                done[start + j] = reason
        self._retire(done)

    def _decode_step(self) -> int:
        assert self._batch.cache is not None
        pending = [s.output_ids[-1] for s in self._running]
        input_ids = torch.tensor(pending, device=self.device).unsqueeze(1)
        positions = torch.tensor([s.cached for s in self._running], device=self.device)
        mask = self._batch.extend_mask()
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions.unsqueeze(1),
            past_key_values=self._batch.cache,
            use_cache=True,
        )
        logits = out.logits[:, -1]
        greedy = torch.argmax(logits, dim=-1).tolist()
        done: dict[int, str] = {}
        for i, seq in enumerate(self._running):
            seq.cached += 1
            reason = self._accept(seq, logits[i], greedy[i])
            if reason:
                done[i] = reason
        self._retire(done)
        return len(pending)

    def _accept(self, seq: _Sequence, logits: torch.Tensor, greedy: int | None = None) -> str:
        """Choose and record the next token; return a finish reason or ''."""
        params = seq.handle.request.sampling
        token, end = seq.sampler.next_token(logits, greedy)
        if seq.handle.first_token_at is None:
            seq.handle.first_token_at = time.monotonic()
        seq.output_ids.append(token)
        if end == "eos":
            return "stop"
        if seq.text is not None:
            seq.handle._emit(seq.text.push(token))
            if seq.text.stopped:
                return "stop"
        if end:
            return "stop"
        if len(seq.output_ids) >= params.max_tokens:
            return "length"
        return ""

    def _retire(self, done: dict[int, str]) -> None:
        if not done:
            return
        for i, reason in done.items():
            seq = self._running[i]
            if self.prefix_cache is not None and reason != "timeout":
                tokens = seq.prompt_ids + seq.output_ids[:-1]
                self.prefix_cache.put(tokens, self._batch.row_layers(i, seq.cached))
            if reason == "timeout":
                seq.handle._finish(
                    None,
                    DeadlineExceededError(f"generation exceeded {self._timeout(seq.handle):g}s"),
                )
                continue
            if seq.text is not None:
                seq.handle._emit(seq.text.flush())
                text = seq.text.text
            else:
                ended = seq.output_ids and seq.output_ids[-1] in seq.sampler.end_ids
                ids = seq.output_ids[:-1] if ended else seq.output_ids
                text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
                seq.handle._emit(text)
            seq.handle._finish(
                self._result(seq.handle, text, seq.output_ids, reason, len(seq.prompt_ids)),
                None,
            )
        keep = [i for i in range(len(self._running)) if i not in done]
        self._running = [self._running[i] for i in keep]
        self._batch.remove(keep)

    def _timeout(self, handle: RequestHandle) -> float:
        asked = handle.request.timeout_s
        return min(asked, self.request_timeout_s) if asked else self.request_timeout_s

    def _result(
        self,
        handle: RequestHandle,
        text: str,
        output_ids: list[int],
        reason: str,
        prompt_tokens: int,
    ) -> GenerateResult:
        finish: FinishReason = reason  # type: ignore[assignment]
        return GenerateResult(
            request_id=handle.request.request_id,
            model=self.model_id,
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(output_ids),
        )
