"""The scheduler's policy step: which sequences run this step, with how many tokens, who
is admitted and who gives its cache back. Pure Python (no torch), tested on its own.

One engine step is three parts, as in vLLM: this **policy** decides (``Policy.schedule``
returns a ``StepPlan``), the scheduler **executes** the plan as one forward pass, then
**applies** the outcome (new tokens, stops, finished sequences freeing their blocks).

Rules, in order, every step:

1. Running sequences that decode (one uncomputed token) all run, oldest first. When the
   KV pool has no block for one of them, the newest running sequence is preempted: its
   blocks go back (its full blocks stay cached by content hash), it returns to the front
   of its tenant's queue and is recomputed when readmitted. Nothing is ever allocated
   beyond the pool, so a full pool slows requests down instead of crashing.
2. Prompts are prefilled in chunks out of a per-step token budget: ``max_step_tokens``
   when nothing decodes, else ``interleaved_prefill_tokens`` on top of the decodes, so a
   long prompt being admitted adds a bounded amount of work to every decode step (the
   running sequences' time per output token stays bounded). Waiting requests are
   admitted first (a short prompt does not wait behind a long one's prefill; a prompt
   that fits what is left of ``max_step_tokens`` is admitted whole, so a burst of short
   requests costs one step), then prompts part-way through continue, shortest remaining
   first, with at least a quarter of the budget.
3. Admission is fair across tenants: each tenant has its own queue, and the next request
   comes from the tenant with the least weighted service so far (start-time fair
   queuing on tokens: a request costs its prompt plus ``max_tokens``, divided by the
   tenant's weight; a tenant that was idle starts at the current virtual time, so idling
   earns no credit). A tenant at its cap of running sequences or tokens in flight waits
   while other tenants are waiting; while none is, it may borrow the idle capacity, and
   gives its newest borrowed sequence back (preempted) as soon as another tenant waits
   for a place in a full batch.
4. Latency is shared too: on a CPU every sequence in a step makes the step slower for
   all, so while a *light* tenant (at most ``contended_running`` sequences) has work, a
   heavier tenant decodes at most ``contended_running`` of its sequences per step, in
   turn (least recently stepped first). The others keep their cache and wait a step: no
   recompute, no lost work, and the light tenant's time per token stays near its
   idle figure. Heavy tenants among themselves are not held back.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from autoglm.inference.blocks import BlockManager, BlockTable


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"


class TenantLimits(BaseModel):
    """Per-tenant share of one model's scheduler (settings; overridable per tenant)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Relative share when tenants compete (2.0 gets twice the tokens of 1.0).
    weight: float = Field(default=1.0, gt=0)
    #: Sequences of this tenant in the running batch at most.
    max_running: int = Field(default=24, ge=1)
    #: Prompt plus ``max_tokens`` summed over this tenant's running sequences, at most.
    max_tokens_in_flight: int = Field(default=131072, ge=1)
    #: Requests of this tenant waiting at most; beyond it a request is refused (429).
    #: None: as many as the model's whole queue (``max_queue``).
    max_queued: int | None = Field(default=None, ge=1)
    #: While a light tenant (at most this many sequences) has work, sequences of this
    #: tenant that decode in one step at most (in turn); see the module docstring, 4.
    contended_running: int = Field(default=4, ge=1)


@dataclass(eq=False)
class Seq:
    """A request as the policy sees it (the scheduler's sequences extend it)."""

    request_id: str
    tenant: str
    prompt_ids: list[int]
    max_tokens: int
    output_ids: list[int] = field(default_factory=list)
    #: Tokens whose keys and values are in the cache.
    num_cached: int = 0
    status: Status = Status.WAITING
    table: BlockTable = field(default_factory=BlockTable)
    #: Order of (re)admission: the newest running sequence is preempted first.
    admitted: int = 0
    preemptions: int = 0
    #: Same prompt as this earlier sequence (``n`` > 1): admitted once that one has
    #: computed the prompt, whose full blocks it then shares instead of computing them.
    after: Seq | None = None
    #: The policy step that last scheduled this sequence (turns while contended).
    last_step: int = 0

    @property
    def waits_for_prompt(self) -> bool:
        first = self.after
        if first is None or first.status is Status.FINISHED:
            return False
        return first.status is not Status.RUNNING or first.num_cached < len(first.prompt_ids)

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def pending(self) -> int:
        """Known tokens not computed yet (1 for a decoding sequence)."""
        return self.num_tokens - self.num_cached

    @property
    def decoding(self) -> bool:
        return self.pending == 1 and bool(self.output_ids)

    @property
    def cost(self) -> int:
        """Tokens this sequence may hold: its share of the tenant's tokens in flight."""
        return len(self.prompt_ids) + self.max_tokens


@dataclass
class StepPlan:
    #: (sequence, tokens computed this step from ``seq.num_cached`` on), packing order.
    scheduled: list[tuple[Seq, int]] = field(default_factory=list)
    admitted: list[Seq] = field(default_factory=list)
    preempted: list[Seq] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)


class FairQueue:
    """Per-tenant FIFO queues served by weighted start-time fair queuing."""

    def __init__(self, limits: Callable[[str], TenantLimits]) -> None:
        self.limits = limits
        self._queues: dict[str, deque[Seq]] = {}
        self._vtime: dict[str, float] = {}
        self._clock = 0.0

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __iter__(self) -> Iterator[Seq]:
        for q in list(self._queues.values()):
            yield from list(q)

    def queued(self, tenant: str) -> int:
        q = self._queues.get(tenant)
        return len(q) if q else 0

    def push(self, seq: Seq, front: bool = False) -> None:
        q = self._queues.get(seq.tenant)
        if not q:
            q = self._queues[seq.tenant] = deque()
            # A tenant coming back from idle starts now: idling earns no credit.
            self._vtime[seq.tenant] = max(self._vtime.get(seq.tenant, 0.0), self._clock)
        seq.status = Status.PREEMPTED if front else Status.WAITING
        if front:
            q.appendleft(seq)
        else:
            q.append(seq)

    def remove(self, keep: Callable[[Seq], bool]) -> list[Seq]:
        """Take out (and return) every waiting sequence ``keep`` rejects."""
        removed: list[Seq] = []
        for tenant, q in list(self._queues.items()):
            kept = deque(s for s in q if keep(s))
            if len(kept) != len(q):
                removed.extend(s for s in q if not keep(s))
                self._queues[tenant] = kept
            if not kept:
                del self._queues[tenant]
        return removed

    def order(self, blocked: set[str]) -> str | None:
        """The tenant to serve next: least virtual time among those not ``blocked``."""
        best: str | None = None
        for tenant in self._queues:
            if tenant in blocked:
                continue
            if best is None or self._vtime[tenant] < self._vtime[best]:
                best = tenant
        return best

    def tenants(self) -> set[str]:
        """Tenants with requests waiting."""
        return set(self._queues)

    def head(self, tenant: str) -> Seq:
        return self._queues[tenant][0]

    def pop(self, tenant: str) -> Seq:
        q = self._queues[tenant]
        seq = q.popleft()
        if not q:
            del self._queues[tenant]
        start = self._vtime[tenant]
        self._clock = max(self._clock, start)
        # A readmitted (preempted) sequence was charged when first admitted.
        if seq.status is not Status.PREEMPTED:
            self._vtime[tenant] = start + seq.cost / self.limits(tenant).weight
        return seq


class StepCost:
    """What a step costs, learned from the steps run: a least-squares fit (over the last
    ``window`` steps, lightly ridged) of its seconds to

        fixed + per_decode x decodes + per_token x prompt tokens + per_pair x pairs

    where *pairs* counts attention (query, key) pairs: a chunk of ``n`` prompt tokens
    after ``c`` cached ones has ``n x (c + n / 2)``, a decode as many as its context. The
    per-step fixed cost and per-row overheads of small batches are captured by the first
    two terms, the compute of prompt chunks by the last two, so the policy can size a
    chunk by its time. Pure Python; the scheduler reports every step (``observe``)."""

    FEATURES = 4
    #: Features are scaled to similar magnitudes (normal equations stay well conditioned).
    SCALE = (1.0, 1e-1, 1e-3, 1e-6)

    def __init__(self, window: int = 64, min_prefill_steps: int = 4) -> None:
        self.window = window
        self.min_prefill_steps = min_prefill_steps
        #: The latest ``window`` steps with prompt tokens and as many without: a long
        #: stretch of decodes does not make the fit forget what prompt tokens cost.
        self._obs: dict[bool, deque[tuple[tuple[float, ...], float]]] = {
            True: deque(),
            False: deque(),
        }
        self._xtx = [[0.0] * self.FEATURES for _ in range(self.FEATURES)]
        self._xty = [0.0] * self.FEATURES
        self.coef: list[float] | None = None

    @classmethod
    def features(cls, decodes: int, tokens: int, pairs: float) -> tuple[float, ...]:
        return tuple(x * k for x, k in zip((1.0, decodes, tokens, pairs), cls.SCALE, strict=True))

    #: A step observed to take more than this multiple of its prediction counts as this
    #: multiple: on a shared machine a step is sometimes slowed 5-10x by other processes
    #: (or a pause of this one), and such a step in the least-squares window made the
    #: chunks of the next dozens of steps several times too small. A lasting change of
    #: cost is still learned, over a few windows.
    OUTLIER = 2.0

    def observe(self, decodes: int, tokens: int, pairs: float, seconds: float) -> None:
        """One executed step: its decodes, prompt tokens, attention pairs and seconds."""
        expected = self.predict(decodes, tokens, pairs)
        if expected is not None and expected > 0:
            seconds = min(seconds, self.OUTLIER * expected)
        x = self.features(decodes, tokens, pairs)
        self._add(x, seconds, 1.0)
        kept = self._obs[tokens > 0]
        kept.append((x, seconds))
        if len(kept) > self.window:
            self._add(*kept.popleft(), -1.0)
        known = len(self._obs[True]) >= self.min_prefill_steps
        self.coef = self._solve() if known else None

    def _add(self, x: tuple[float, ...], t: float, sign: float) -> None:
        for i, xi in enumerate(x):
            self._xty[i] += sign * xi * t
            row = self._xtx[i]
            for j, xj in enumerate(x):
                row[j] += sign * xi * xj

    def _solve(self) -> list[float] | None:
        """Ridge least squares (Gaussian elimination on the 4x4 normal equations); each
        coefficient clipped at 0 (no term makes a step cheaper)."""
        n = self.FEATURES
        a = [[*row, self._xty[i]] for i, row in enumerate(self._xtx)]
        for i in range(n):
            a[i][i] += 1e-9 * (a[i][i] + 1.0)
        for col in range(n):
            pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
            if abs(a[pivot][col]) < 1e-30:
                return None
            a[col], a[pivot] = a[pivot], a[col]
            for r in range(n):
                if r != col:
                    f = a[r][col] / a[col][col]
                    for k in range(col, n + 1):
                        a[r][k] -= f * a[col][k]
        return [max(0.0, a[i][n] / a[i][i]) for i in range(n)]

    def predict(self, decodes: int, tokens: int, pairs: float) -> float | None:
        """Seconds of such a step, or None while too few steps were seen."""
        if self.coef is None:
            return None
        x = self.features(decodes, tokens, pairs)
        return sum(c * xi for c, xi in zip(self.coef, x, strict=True))

    def tokens_within(self, seconds: float, context: int) -> int | None:
        """Prompt tokens of one chunk after ``context`` cached tokens that take at most
        ``seconds`` on top of the rest of the step."""
        if self.coef is None or seconds <= 0:
            return None if self.coef is None else 0
        per_token = self.coef[2] * self.SCALE[2]
        per_pair = self.coef[3] * self.SCALE[3]
        # per_pair * n**2 / 2 + (per_token + per_pair * context) * n = seconds
        b = per_token + per_pair * context
        if per_pair > 0:
            n = (-b + math.sqrt(b * b + 2 * per_pair * seconds)) / per_pair
        elif b > 0:
            n = seconds / b
        else:
            return None
        return int(min(n, 1 << 30))


def step_work(scheduled: list[tuple[Seq, int]]) -> tuple[int, int, float]:
    """(decodes, prompt tokens, attention pairs) of a step's scheduled sequences, before
    their ``num_cached`` is advanced."""
    decodes, tokens, pairs = 0, 0, 0.0
    for seq, n in scheduled:
        if n == 1 and seq.decoding:
            decodes += 1
            pairs += seq.num_cached + 1
        else:
            tokens += n
            pairs += n * (seq.num_cached + n / 2)
    return decodes, tokens, pairs


@dataclass
class PolicyConfig:
    max_batch_size: int = 32
    #: Tokens per forward pass at most (prompt chunks when no sequence decodes).
    max_step_tokens: int = 2048
    #: Prefill tokens per step on top of the decodes while sequences decode, at least
    #: (and all of them while the step cost is not known yet).
    interleaved_prefill_tokens: int = 48
    #: While sequences decode, prompt chunks are sized so that a step takes at most this
    #: multiple of the time of its decodes alone (``StepCost``); 0: always
    #: ``interleaved_prefill_tokens``.
    prefill_tpot_factor: float = 3.0
    #: ... but a step carrying prompt chunks may always take this long (seconds): a
    #: few sequences decoding alone make very short steps, and chunks sized to a small
    #: multiple of them would spend most of the time in per-step overhead.
    prefill_step_floor_s: float = 0.08
    default_limits: TenantLimits = field(default_factory=TenantLimits)
    tenant_limits: dict[str, TenantLimits] = field(default_factory=dict)

    def limits(self, tenant: str) -> TenantLimits:
        return self.tenant_limits.get(tenant, self.default_limits)


class Policy:
    def __init__(self, config: PolicyConfig, blocks: BlockManager) -> None:
        self.config = config
        self.blocks = blocks
        self.queue = FairQueue(config.limits)
        self.running: list[Seq] = []
        self._admissions = 0
        self.preemptions = 0
        self._steps = 0
        #: Learned from the executed steps (``observe``): sizes prompt chunks by time.
        self.cost = StepCost()

    def observe(self, work: tuple[int, int, float], seconds: float) -> None:
        """The scheduler ran a step of ``work`` (``step_work``) in ``seconds``."""
        self.cost.observe(*work, seconds)

    # -- bookkeeping ---------------------------------------------------------------------
    def add(self, seq: Seq) -> None:
        self.queue.push(seq)

    def finish(self, seq: Seq) -> None:
        """Release a sequence that ended (stopped, cancelled, failed, timed out)."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        self.blocks.free(seq.table)
        seq.status = Status.FINISHED

    def _preempt(self, seq: Seq, plan: StepPlan) -> None:
        self.running.remove(seq)
        plan.scheduled = [(s, n) for s, n in plan.scheduled if s is not seq]
        plan.admitted = [s for s in plan.admitted if s is not seq]
        self.blocks.free(seq.table)
        seq.num_cached = 0
        seq.preemptions += 1
        self.preemptions += 1
        self.queue.push(seq, front=True)
        plan.preempted.append(seq)

    def tenant_usage(self) -> dict[str, tuple[int, int]]:
        """Per tenant: (running sequences, tokens in flight)."""
        usage: dict[str, tuple[int, int]] = {}
        for seq in self.running:
            n, tokens = usage.get(seq.tenant, (0, 0))
            usage[seq.tenant] = (n + 1, tokens + seq.cost)
        return usage

    # -- the policy step -----------------------------------------------------------------
    def schedule(self) -> StepPlan:
        plan = StepPlan()
        cfg = self.config
        self._steps += 1
        decoding = self._in_turn([s for s in self.running if s.decoding])
        # Shortest remaining prompt first: a short prompt admitted part-way does not wait
        # for a long one's whole prefill.
        continuing = sorted(
            (s for s in self.running if not s.decoding), key=lambda s: (s.pending, s.admitted)
        )
        timed = False
        if decoding:
            prefill = self._prefill_budget(decoding, continuing)
            timed = prefill is not None
            prefill = max(cfg.interleaved_prefill_tokens, prefill or 0)
            budget = min(cfg.max_step_tokens, len(decoding) + prefill)
        else:
            budget = cfg.max_step_tokens
        # 1. every decode, oldest first; preempt the newest when the pool is full.
        for seq in sorted(decoding, key=lambda s: s.admitted):
            if seq.status is not Status.RUNNING:
                continue  # preempted for an older one in this loop
            if not self._grow(seq, 1, plan):
                continue
            plan.scheduled.append((seq, 1))
            seq.last_step = self._steps
        budget -= len(plan.scheduled)
        # 2. admissions, fairly across tenants (none while the pool forced a preemption);
        # a quarter of the budget stays for prompts already part-way through. Without a
        # step time to keep, a prompt that fits the step's full size goes in whole.
        if not plan.preempted:
            reserve = max(1, budget // 4) if continuing else 0
            whole = None if timed else cfg.max_step_tokens - len(plan.scheduled) - reserve
            budget -= self._admit(plan, budget - reserve, whole)
        # 3. prompts part-way through their prefill.
        for seq in continuing:
            if budget <= 0 or seq.status is not Status.RUNNING:
                continue
            n = min(seq.pending, budget)
            room = (len(seq.table.blocks) + self.blocks.num_free) * self.blocks.block_size
            n = min(n, room - seq.num_cached) or n  # what fits, else preempt for it
            if not self._grow(seq, n, plan):
                continue
            plan.scheduled.append((seq, n))
            budget -= n
        return plan

    def _prefill_budget(self, decoding: list[Seq], continuing: list[Seq]) -> int | None:
        """Prompt tokens that keep this step within ``prefill_tpot_factor`` times the
        time of its decodes alone (None while the step cost is not known yet)."""
        factor = self.config.prefill_tpot_factor
        if factor <= 1:
            return None
        pairs = sum(s.num_cached + 1 for s in decoding)
        alone = self.cost.predict(len(decoding), 0, pairs)
        if alone is None:
            return None
        # Priced as a chunk of the next prompt in line (waiting ones start from scratch).
        context = continuing[0].num_cached if continuing else 0
        target = max(factor * alone, self.config.prefill_step_floor_s)
        return self.cost.tokens_within(target - alone, context)

    def _in_turn(self, decoding: list[Seq]) -> list[Seq]:
        """The decodes of this step (rule 4): all of them, unless a light tenant has
        work; then each heavier tenant's ``contended_running`` least recently stepped."""
        count: dict[str, int] = {}
        for seq in self.running:
            count[seq.tenant] = count.get(seq.tenant, 0) + 1
        for tenant in self.queue.tenants():
            count.setdefault(tenant, 0)
        light = [t for t, n in count.items() if n <= self.config.limits(t).contended_running]
        if len(count) < 2 or not light:
            return decoding
        kept: list[Seq] = []
        taken: dict[str, int] = {}
        for seq in sorted(decoding, key=lambda s: (s.last_step, s.admitted)):
            n = taken.get(seq.tenant, 0)
            if n < self.config.limits(seq.tenant).contended_running:
                kept.append(seq)
                taken[seq.tenant] = n + 1
        return kept

    def _grow(self, seq: Seq, n: int, plan: StepPlan) -> bool:
        """Blocks for ``n`` more tokens of ``seq``; preempting newer sequences if needed."""
        while not self.blocks.allocate(seq.table, seq.num_cached + n, seq.cost):
            victim = max(self.running, key=lambda s: s.admitted)
            self._preempt(victim, plan)
            if victim is seq:
                return False
        return True

    def _admit(self, plan: StepPlan, budget: int, whole: int | None = None) -> int:
        """Admit waiting sequences within ``budget`` tokens; returns the tokens used.
        A prompt that fits ``whole`` (the step's full size left) is admitted in one
        piece even beyond ``budget``: a burst of short requests costs one step, and
        only long prompts are cut into ``budget``-sized chunks.

        First tenants within their caps, fairly; a tenant within its caps that finds the
        batch full takes the place of the newest sequence of a tenant beyond its caps.
        Then, with room left, tenants beyond their caps borrow it, fairly too."""
        usage = self.tenant_usage()
        # Keep one block per running sequence free, so admitting never forces the next
        # decode step to preempt.
        state = {"used": 0, "reserve": len(self.running), "whole": max(budget, whole or 0)}
        if self._admit_phase(plan, budget, usage, state, borrow=False):
            self._admit_phase(plan, budget, usage, state, borrow=True)
        return min(state["used"], budget)

    def _admit_phase(
        self,
        plan: StepPlan,
        budget: int,
        usage: dict[str, tuple[int, int]],
        state: dict[str, int],
        borrow: bool,
    ) -> bool:
        """One pass of admissions; whether the next pass may still find room."""
        blocked: set[str] = set()
        while state["used"] < state["whole"]:
            tenant = self.queue.order(blocked)
            if tenant is None:
                return True
            seq = self.queue.head(tenant)
            over = self._over(tenant, usage, seq.cost)
            if (over and not borrow) or seq.waits_for_prompt:
                blocked.add(tenant)
                continue
            if len(self.running) >= self.config.max_batch_size:
                victim = None if over else self._lender(usage)
                if victim is None:
                    return False
                self._preempt(victim, plan)
                n_v, tokens_v = usage[victim.tenant]
                usage[victim.tenant] = (n_v - 1, tokens_v - victim.cost)
                state["reserve"] -= 1
            if not seq.table.blocks:
                seq.num_cached = self.blocks.match_prefix(seq.table, seq.tokens)
            n = seq.pending if seq.pending <= state["whole"] - state["used"] else 0
            if not n:
                n = min(seq.pending, budget - state["used"])
                if n <= 0:  # only a chunk would fit, and the chunk budget is spent
                    self.blocks.free(seq.table)
                    seq.num_cached = 0
                    return False
            need = self.blocks.missing(seq.table, seq.num_cached + n)
            busy = need + state["reserve"] > self.blocks.num_free and self.running
            if busy or not self.blocks.allocate(seq.table, seq.num_cached + n, seq.cost):
                # The pool is busy: wait for running sequences to finish.
                self.blocks.free(seq.table)
                seq.num_cached = 0
                return False
            self.queue.pop(tenant)
            seq.status = Status.RUNNING
            self._admissions += 1
            seq.admitted = self._admissions
            self.running.append(seq)
            plan.admitted.append(seq)
            plan.scheduled.append((seq, n))
            n_running, in_flight = usage.get(tenant, (0, 0))
            usage[tenant] = (n_running + 1, in_flight + seq.cost)
            state["used"] += n
            state["reserve"] += 1
        return False

    def _over(self, tenant: str, usage: dict[str, tuple[int, int]], extra: int = 0) -> bool:
        """Whether ``tenant`` is at its caps (before adding ``extra`` tokens in flight)."""
        limits = self.config.limits(tenant)
        n_running, in_flight = usage.get(tenant, (0, 0))
        return n_running >= limits.max_running or (
            n_running > 0 and in_flight + extra > limits.max_tokens_in_flight
        )

    def _lender(self, usage: dict[str, tuple[int, int]]) -> Seq | None:
        """The newest running sequence of a tenant beyond its caps (borrowed capacity)."""
        over = {
            t
            for t, (n, tokens) in usage.items()
            if n > self.config.limits(t).max_running
            or tokens > self.config.limits(t).max_tokens_in_flight
        }
        lent = [s for s in self.running if s.tenant in over]
        return max(lent, key=lambda s: s.admitted) if lent else None
