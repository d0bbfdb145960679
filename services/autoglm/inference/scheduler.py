"""Continuous batching over a paged KV cache: sequences join the running batch between
steps and leave as soon as they finish, each with its own sampling settings, stops, seed,
deadline and tenant.

The model's compute runs on one thread, the engine's ``ComputeThread`` (loading, warm-up,
every step of every model, embeddings: see its docstring for why only one). Each step of a
scheduler is three parts (as in vLLM):

1. **policy** (``policy.Policy.schedule``, pure Python): drop cancelled and expired
   sequences; decide who runs with how many tokens — every decode, prompt chunks out of a
   per-step token budget, admissions fair across tenants — and who is preempted when the
   KV pool is full;
2. **execute**: one forward pass of the packed tokens over the paged cache
   (``kvcache.PagedKVCache``), logits only where a next token is due;
3. **apply**: next tokens from those logits (``_next_tokens``, the one sampling call
   site), stops and lengths, full blocks registered for prefix sharing, finished
   sequences' blocks returned to the pool.

Callers wait on a ``RequestHandle`` or iterate it for streamed text. Queues are bounded
(globally and per tenant): a full queue is an immediate ``OverloadedError``, never
unbounded memory.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from autoglm.core.errors import (
    AutoGLMError,
    DeadlineExceededError,
    InvalidRequestError,
    OverloadedError,
)
from autoglm.core.schemas import FinishReason, GenerateRequest, GenerateResult
from autoglm.inference.blocks import BlockManager
from autoglm.inference.detokenizer import IncrementalText
from autoglm.inference.kvcache import PagedKVCache, step_forward
from autoglm.inference.policy import Policy, PolicyConfig, Seq, StepPlan, step_work
from autoglm.inference.sampling import (
    SamplingPlan,
    SequenceSampler,
    make_generator,
    next_tokens,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class ComputeThread:
    """The one thread that runs an engine's model compute: loading, warm-up, every step of
    every model's scheduler (in turn, one step each while several have work) and
    embeddings. Other threads hand work over with ``call``.

    Why one: torch's CPU ops run on OpenMP (libgomp), where every thread that runs a
    multi-threaded op becomes the master of its own team of worker threads, kept for the
    thread's life. Once two threads have done so, the process manages more OpenMP threads
    than there are cores and libgomp stops spinning between parallel regions: every small
    op then waits for a futex wake-up, and a decode step of 28 sequences took 8.8 ms on
    the scheduler thread instead of 4.3 ms on the thread that had loaded the model (2
    cores, 2 torch threads). With every model op on this thread its team is the only one.
    """

    def __init__(self, name: str = "autoglm-compute", num_threads: int | None = None) -> None:
        self._cv = threading.Condition()
        self._tasks: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        #: Schedulers' steps: each runs one step if it has work, returns whether it has more.
        self._drivers: list[Callable[[], bool]] = []
        self._woken = False
        self._stop = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        if num_threads:
            self.call(torch.set_num_threads, num_threads)

    @property
    def current(self) -> bool:
        """Whether the calling thread is this one."""
        return threading.current_thread() is self._thread

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on this thread (between steps) and return its result or raise
        its exception; called from this thread, it runs at once."""
        if self.current:
            return fn(*args)
        done: Future[T] = Future()
        with self._cv:
            if self._stop:
                raise RuntimeError("compute thread is closed")
            self._tasks.append((lambda: fn(*args), done))
            self._cv.notify()
        return done.result()

    def attach(self, driver: Callable[[], bool]) -> None:
        with self._cv:
            self._drivers.append(driver)
            self._woken = True
            self._cv.notify()

    def detach(self, driver: Callable[[], bool]) -> None:
        with self._cv:
            if driver in self._drivers:
                self._drivers.remove(driver)

    def wake(self) -> None:
        """A driver has new work."""
        with self._cv:
            self._woken = True
            self._cv.notify()

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify()
        if not self.current:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._tasks or self._woken):
                    self._cv.wait()
                if self._stop and not self._tasks:
                    break
                tasks = list(self._tasks)
                self._tasks.clear()
                self._woken = False
                drivers = list(self._drivers)
            for fn, done in tasks:
                if done.set_running_or_notify_cancel():
                    try:
                        done.set_result(fn())
                    except BaseException as exc:  # the caller re-raises it
                        done.set_exception(exc)
            busy = False
            for driver in drivers:
                busy = driver() or busy
            if busy:
                with self._cv:
                    self._woken = True


@dataclass
class StepStats:
    """Observed by metrics: what the scheduler did in its latest iteration."""

    batch_size: int = 0
    queue_depth: int = 0
    tokens: int = 0
    #: Seconds each request admitted in this iteration had waited in the queue.
    queue_waits: list[float] = field(default_factory=list)
    #: Prompt and recomputed tokens this step ran (besides the decodes).
    prefill_tokens: int = 0
    #: KV pool: blocks referenced by sequences, cached for sharing, in all.
    kv_blocks_used: int = 0
    kv_blocks_cached: int = 0
    kv_blocks_total: int = 0
    #: Sequences preempted this step (their blocks given back; recomputed later).
    preemptions: int = 0
    #: Prompt blocks served from the prefix cache this step / looked up.
    prefix_block_hits: int = 0
    prefix_block_queries: int = 0


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


@dataclass(eq=False)
class _Sequence(Seq):
    handle: RequestHandle | None = None
    #: Logits -> next token: processors, constraint, sampling (sampling.py).
    sampler: SequenceSampler | None = None
    #: None: decode once at the end (no stream, no stops).
    text: IncrementalText | None = None
    deadline: float = 0.0

    @property
    def h(self) -> RequestHandle:
        assert self.handle is not None
        return self.handle

    @property
    def s(self) -> SequenceSampler:
        assert self.sampler is not None
        return self.sampler


def _own(seq: Seq) -> _Sequence:
    """The scheduler's sequence behind the policy's view of it."""
    assert isinstance(seq, _Sequence)
    return seq


class Scheduler:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_id: str,
        eos_token_ids: list[int],
        cache: PagedKVCache,
        *,
        max_queue: int = 256,
        policy: PolicyConfig | None = None,
        prefix_cache_blocks: int | None = None,
        request_timeout_s: float = 300.0,
        on_step: Callable[[StepStats], None] | None = None,
        compute: ComputeThread | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = model_id
        self.eos = set(eos_token_ids)
        self.cache = cache
        self.max_queue = max_queue
        self.request_timeout_s = request_timeout_s
        self.on_step = on_step
        self.device = cache.device
        #: One step's forward pass (kvcache.step_forward).
        self._forward = step_forward(model, cache)
        #: Blocks of the pool; also the prefix cache (``hits``, ``clear``).
        self.blocks = BlockManager(cache.num_blocks, cache.block_size, prefix_cache_blocks)
        self.policy = Policy(policy or PolicyConfig(), self.blocks)
        self.max_batch_size = self.policy.config.max_batch_size
        self._cv = threading.Condition()
        self._stop = False
        #: Steps run on the engine's compute thread (a scheduler alone gets its own).
        self._owns_compute = compute is None
        self.compute = compute or ComputeThread(f"scheduler-{model_id}")
        self.compute.attach(self.step)

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
        """Queue sequences of one prompt together (``n`` > 1): the first computes the
        prompt, the others are admitted once it has and share its full blocks (prefix
        sharing; only a last partial block is computed again per sequence)."""
        need = len(prompt_ids) + max(r.sampling.max_tokens for r in requests)
        if need > self.blocks.capacity_tokens:
            raise InvalidRequestError(
                f"prompt and max_tokens need {need} tokens of KV cache; this model's cache "
                f"holds {self.blocks.capacity_tokens}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        seqs = []
        for request, plan in zip(requests, plans, strict=True):
            handle = RequestHandle(request)
            handle.streaming = stream
            handle.plan = plan
            params = request.sampling
            generator = make_generator(params.seed, self.device)
            seqs.append(
                _Sequence(
                    request_id=request.request_id,
                    tenant=request.tenant,
                    prompt_ids=prompt_ids,
                    max_tokens=params.max_tokens,
                    handle=handle,
                    sampler=plan.sampler(params, generator, self.eos, prompt_ids),
                    text=(
                        IncrementalText(self.tokenizer, params.stop)
                        if stream or params.stop
                        else None
                    ),
                    deadline=handle.submitted + self._timeout(handle),
                )
            )
        for seq in seqs[1:]:
            seq.after = seqs[0]  # the prompt is computed once, then its blocks shared
        tenant = requests[0].tenant
        max_queued = self.policy.config.limits(tenant).max_queued or self.max_queue
        with self._cv:
            if self._stop:
                raise OverloadedError("model is shutting down", code="shutting_down")
            queue = self.policy.queue
            n = len(seqs)
            if len(queue) + n > self.max_queue or queue.queued(tenant) + n > max_queued:
                self._drop_cancelled()
            if len(queue) + n > self.max_queue:
                raise OverloadedError(
                    f"inference queue is full ({self.max_queue} waiting); retry later"
                )
            if queue.queued(tenant) + n > max_queued:
                raise OverloadedError(
                    f"tenant {tenant!r} has {max_queued} requests waiting; retry later"
                )
            for seq in seqs:
                self.policy.add(seq)
        self.compute.wake()
        return [seq.h for seq in seqs]

    def _drop_cancelled(self) -> None:
        """Give the places of requests cancelled while waiting back (caller holds _cv)."""
        for seq in self.policy.queue.remove(lambda s: not _own(s).h.cancelled):
            self._finish(seq, "cancelled")

    @property
    def queue_depth(self) -> int:
        return len(self.policy.queue)

    @property
    def batch_size(self) -> int:
        return len(self.policy.running)

    @property
    def prefix_cache(self) -> BlockManager:
        return self.blocks

    def kv_usage(self) -> tuple[int, int]:
        """(bytes of the blocks running sequences hold, tokens cached in them)."""
        with self._cv:
            tokens = sum(s.num_cached for s in self.policy.running)
            return self.blocks.num_used * self.cache.bytes_per_block, tokens

    def close(self) -> None:
        """Fail what is running or queued (``shutting_down``) and stop stepping."""
        with self._cv:
            if self._stop:
                return
            self._stop = True
        try:
            self.compute.call(self._shutdown)
        finally:
            if self._owns_compute:
                self.compute.close()

    def _shutdown(self) -> None:
        self.compute.detach(self.step)
        shutting = AutoGLMError("model unloaded", code="shutting_down")
        with self._cv:
            for seq in [*self.policy.running, *self.policy.queue]:
                self._finish(seq, "error", shutting)

    # -- steps (on the compute thread) --------------------------------------------------
    def step(self) -> bool:
        """One step if there is work; whether there is more (the compute thread's driver)."""
        with self._cv:
            if self._stop or not (len(self.policy.queue) or self.policy.running):
                return False
        plan = StepPlan()
        try:
            with torch.inference_mode():
                plan = self._iterate()
        except Exception:  # keep serving: fail the batch, not the process
            log.exception("scheduler step failed; failing running requests")
            failed = AutoGLMError("generation failed")
            for seq in {*self.policy.running, *(s for s, _ in plan.scheduled)}:
                self._finish(seq, "error", failed)
        return bool(len(self.policy.queue) or self.policy.running)

    def _iterate(self) -> StepPlan:
        now = time.monotonic()
        for seq in map(_own, list(self.policy.running)):
            if seq.h.cancelled or now > seq.deadline:
                self._finish(seq, "cancelled" if seq.h.cancelled else "timeout")
        hits, queries = self.blocks.hits, self.blocks.queries
        preempted = self.policy.preemptions
        with self._cv:
            expired = self.policy.queue.remove(
                lambda s: not _own(s).h.cancelled and time.monotonic() <= _own(s).deadline
            )
            for seq in map(_own, expired):
                self._finish(seq, "cancelled" if seq.h.cancelled else "queue_timeout")
            plan = self.policy.schedule()
            queue_depth = len(self.policy.queue)
        stats = StepStats(
            queue_depth=queue_depth,
            queue_waits=[now - _own(s).h.submitted for s in plan.admitted if not s.preemptions],
        )
        for seq in map(_own, plan.admitted):
            if seq.h.batch_size_at_join == 0:
                seq.h.batch_size_at_join = len(self.policy.running)
        if plan.scheduled:
            self._execute(plan, stats)
        stats.batch_size = len(self.policy.running)
        stats.kv_blocks_used = self.blocks.num_used
        stats.kv_blocks_cached = self.blocks.num_cached
        stats.kv_blocks_total = self.blocks.num_blocks
        stats.preemptions = self.policy.preemptions - preempted
        stats.prefix_block_hits = self.blocks.hits - hits
        stats.prefix_block_queries = self.blocks.queries - queries
        if self.on_step:
            self.on_step(stats)
        return plan

    def _execute(self, plan: StepPlan, stats: StepStats) -> None:
        """One forward pass: decodes first (by length, for the attention's grouping),
        then prompt chunks; logits where a sequence's next token is due."""
        decodes = sorted(
            (s for s, n in plan.scheduled if n == 1 and s.decoding), key=lambda s: s.num_tokens
        )
        chunks = [(s, n) for s, n in plan.scheduled if not (n == 1 and s.decoding)]
        ids: list[int] = []
        positions: list[int] = []
        rows: list[int] = []
        due: list[_Sequence] = []
        for seq in decodes:
            ids.append(seq.output_ids[-1])
            positions.append(seq.num_cached)
            rows.append(len(ids) - 1)
            due.append(_own(seq))
        for seq, n in chunks:
            start = seq.num_cached
            ids.extend(seq.tokens[start : start + n])
            positions.extend(range(start, start + n))
            if start + n == seq.num_tokens:
                rows.append(len(ids) - 1)
                due.append(_own(seq))
        work = step_work(plan.scheduled)
        started = time.perf_counter()
        kv_plan = self.cache.plan(
            [(s.table.blocks, s.num_cached, n) for s, n in chunks],
            [(s.table.blocks, s.num_cached + 1) for s in decodes],
        )
        logits = self._forward(
            torch.tensor([ids], device=self.device),
            torch.tensor([positions], device=self.device),
            # Logits only where a token is due (one row at least: the forward wants one).
            torch.tensor(rows or [len(ids) - 1], device=self.device),
            kv_plan,
        )
        stats.prefill_tokens = len(ids) - len(decodes)
        for seq, n in plan.scheduled:
            seq.num_cached += n
        tokens = self._next_tokens(due, logits) if due else []
        # The step's time teaches the policy what a prompt chunk costs (chunk sizing).
        self.policy.observe(work, time.perf_counter() - started)
        stats.tokens = len(tokens)
        for seq, (token, end) in zip(due, tokens, strict=True):
            reason = self._accept(seq, token, end)
            if reason:
                self._finish(seq, reason)
        for seq, _ in plan.scheduled:
            table = seq.table
            if table.blocks and seq.num_cached // self.blocks.block_size > table.hashed:
                self.blocks.register(table, seq.tokens, seq.num_cached)

    def _next_tokens(self, seqs: list[_Sequence], logits: torch.Tensor) -> list[tuple[int, str]]:
        """The next token of each sequence from its row of ``logits`` ``[rows, vocab]``,
        and whether it ends the sequence: the one place where logits become tokens (each
        sequence's sampler; plain greedy rows take the batch's one argmax, greedy
        grammar-masked rows one batched mask)."""
        return list(next_tokens([seq.s for seq in seqs], logits))

    def _accept(self, seq: _Sequence, token: int, end: str) -> str:
        """Record the next token; return a finish reason or ''."""
        handle = seq.h
        if handle.first_token_at is None:
            handle.first_token_at = time.monotonic()
        seq.output_ids.append(token)
        if end == "eos":
            return "stop"
        if seq.text is not None:
            handle._emit(seq.text.push(token))
            if seq.text.stopped:
                return "stop"
        if end:
            return "stop"
        if len(seq.output_ids) >= seq.max_tokens:
            return "length"
        return ""

    def _finish(self, done: Seq, reason: str, error: AutoGLMError | None = None) -> None:
        """End a sequence: answer its caller and give its blocks back."""
        self.policy.finish(done)
        seq = _own(done)
        handle = seq.h
        if error is not None:
            handle._finish(None, error)
            return
        if reason in ("timeout", "queue_timeout"):
            handle._finish(
                None,
                DeadlineExceededError(
                    "request waited too long in queue"
                    if reason == "queue_timeout"
                    else f"generation exceeded {self._timeout(handle):g}s"
                ),
            )
            return
        if seq.text is not None:
            handle._emit(seq.text.flush())
            text = seq.text.text
        else:
            ended = seq.output_ids and seq.output_ids[-1] in seq.s.end_ids
            ids = seq.output_ids[:-1] if ended else seq.output_ids
            text = str(self.tokenizer.decode(ids, skip_special_tokens=True))
            handle._emit(text)
        handle._finish(
            self._result(handle, text, seq.output_ids, reason, len(seq.prompt_ids)), None
        )

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
