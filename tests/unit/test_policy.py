"""The scheduler's policy step and block bookkeeping, without torch or a model."""

from __future__ import annotations

import itertools

import pytest

from autoglm.inference.blocks import BlockManager, BlockTable
from autoglm.inference.policy import (
    Policy,
    PolicyConfig,
    Seq,
    Status,
    StepCost,
    StepPlan,
    TenantLimits,
    step_work,
)

_ids = itertools.count()


def _seq(tenant: str = "a", prompt: int = 8, max_tokens: int = 4) -> Seq:
    """A request whose prompt shares no block with any other's."""
    n = next(_ids)
    return Seq(f"r{n}", tenant, [n * 10_000 + i for i in range(prompt)], max_tokens)


def _policy(blocks: int = 64, block_size: int = 4, **cfg: object) -> Policy:
    return Policy(PolicyConfig(**cfg), BlockManager(blocks, block_size))  # type: ignore[arg-type]


def _apply(policy: Policy, plan: StepPlan) -> list[Seq]:
    """What execute + apply do: tokens computed, a token sampled where due, finished
    sequences released. Returns the sequences that finished."""
    done = []
    for seq, n in plan.scheduled:
        seq.num_cached += n
        assert seq.num_cached <= seq.num_tokens
        assert len(seq.table.blocks) * policy.blocks.block_size >= seq.num_cached
        if seq.num_cached == seq.num_tokens:
            seq.output_ids.append(1000 + len(seq.output_ids))
            if len(seq.output_ids) >= seq.max_tokens:
                done.append(seq)
        policy.blocks.register(seq.table, seq.tokens, seq.num_cached)
    for seq in done:
        policy.finish(seq)
    return done


def _run(policy: Policy, steps: int = 10_000) -> list[Seq]:
    finished: list[Seq] = []
    for _ in range(steps):
        if not policy.running and not len(policy.queue):
            break
        finished += _apply(policy, policy.schedule())
    return finished


# -- blocks ------------------------------------------------------------------------------
def test_blocks_are_allocated_all_or_nothing_and_returned() -> None:
    bm = BlockManager(4, 4, max_cached_blocks=0)
    table = BlockTable()
    assert bm.allocate(table, 9) and len(table.blocks) == 3 and bm.num_free == 1
    other = BlockTable()
    assert not bm.allocate(other, 8) and other.blocks == [] and bm.num_free == 1
    bm.free(table)
    assert bm.num_free == 4 and table.blocks == []


def test_a_sequence_blocks_stay_consecutive_while_others_allocate_between() -> None:
    """Placement: growing in turn (chunks, decodes), each sequence's blocks stay one run
    of the pool (read as a slice by the attention); when the pool is too fragmented for
    a region, any free block serves."""
    bm = BlockManager(64, 4, max_cached_blocks=0)
    long_, short = BlockTable(), BlockTable()
    for step in range(1, 9):  # interleaved growth, each expecting its final size
        assert bm.allocate(long_, 12 * step, expected=100)
        assert bm.allocate(short, 2 * step, expected=20)
    for table in (long_, short):
        first = table.blocks[0]
        assert table.blocks == list(range(first, first + len(table.blocks)))
    assert not set(long_.blocks) & set(short.blocks)
    assert bm.num_free == 64 - len(long_.blocks) - len(short.blocks)
    bm.free(short)
    # Fragmented: every other block taken, no run of 3 is left; still all or nothing.
    rest = [BlockTable() for _ in range(64)]
    for table in rest:
        bm.allocate(table, 4)
    for table in rest[::2]:
        bm.free(table)
    free = bm.num_free
    odd = BlockTable()
    assert bm.allocate(odd, 12, expected=12) and len(set(odd.blocks)) == 3
    assert bm.num_free == free - 3
    for table in [long_, odd, *rest]:
        bm.free(table)
    assert bm.num_free == 64


def test_full_blocks_are_shared_by_content_and_evicted_lru() -> None:
    bm = BlockManager(6, 4)
    tokens = list(range(10))  # two full blocks and a partial one
    first = BlockTable()
    assert bm.allocate(first, 10)
    bm.register(first, tokens, 10)
    assert first.hashed == 2
    # Shared while the first is still running: same physical blocks, no copy.
    second = BlockTable()
    assert bm.match_prefix(second, [*tokens, 99]) == 8
    assert second.blocks == first.blocks[:2] and bm.hits == 2
    bm.free(first)
    bm.free(second)
    assert bm.num_cached == 2 and bm.num_used == 0
    # A prompt that differs in the first block shares nothing.
    assert bm.match_prefix(BlockTable(), [7, *tokens]) == 0
    # Always one token left to compute, even when everything is cached.
    again = BlockTable()
    assert bm.match_prefix(again, tokens[:8]) == 4
    bm.free(again)
    # Needing the whole pool evicts the cached blocks (least recently used first).
    big = BlockTable()
    assert bm.allocate(big, 24) and bm.num_cached == 0 and bm.evictions == 2
    assert bm.match_prefix(BlockTable(), tokens) == 0


def test_prefix_sharing_off_keeps_nothing() -> None:
    bm = BlockManager(4, 4, max_cached_blocks=0)
    table = BlockTable()
    bm.allocate(table, 8)
    bm.register(table, list(range(8)), 8)
    bm.free(table)
    assert bm.num_cached == 0 and bm.match_prefix(BlockTable(), list(range(9))) == 0


# -- policy ------------------------------------------------------------------------------
def test_every_request_finishes_with_its_tokens() -> None:
    policy = _policy(max_batch_size=4)
    seqs = [_seq(prompt=3 + 5 * i, max_tokens=2 + i) for i in range(10)]
    for s in seqs:
        policy.add(s)
    finished = _run(policy)
    assert {s.request_id for s in finished} == {s.request_id for s in seqs}
    assert all(len(s.output_ids) == s.max_tokens and s.status is Status.FINISHED for s in seqs)
    assert policy.blocks.num_used == 0


def test_long_prompt_is_chunked_while_others_decode() -> None:
    policy = _policy(blocks=256, max_step_tokens=64, interleaved_prefill_tokens=8)
    short = _seq(prompt=4, max_tokens=50)
    policy.add(short)
    _apply(policy, policy.schedule())  # short prefilled, now decoding
    long_ = _seq(prompt=200, max_tokens=2)
    policy.add(long_)
    for _ in range(5):
        plan = policy.schedule()
        assert (short, 1) in plan.scheduled  # the decode never waits
        assert plan.num_tokens <= 1 + 8  # bounded step while a sequence decodes
        _apply(policy, plan)
    assert 0 < long_.num_cached <= 40
    short.max_tokens = len(short.output_ids) + 1  # the short one finishes next step
    _apply(policy, policy.schedule())
    plan = policy.schedule()
    assert plan.scheduled == [(long_, 64)]  # alone: the full step budget


def test_short_prompt_is_not_stuck_behind_a_long_prefill() -> None:
    policy = _policy(blocks=256, max_step_tokens=16, interleaved_prefill_tokens=8)
    long_ = _seq(prompt=300)
    policy.add(long_)
    _apply(policy, policy.schedule())
    short = _seq(prompt=6)
    policy.add(short)
    steps = 0
    while not short.output_ids:
        _apply(policy, policy.schedule())
        steps += 1
    assert steps <= 2 and long_.num_cached < 300


def test_full_pool_preempts_the_newest_and_recomputes_it() -> None:
    policy = _policy(blocks=6, block_size=4, max_batch_size=4)
    old, new = _seq(prompt=7, max_tokens=10), _seq(prompt=7, max_tokens=10)
    policy.add(old)
    policy.add(new)
    seen_preemption = False
    for _ in range(200):
        plan = policy.schedule()
        if plan.preempted:
            assert plan.preempted == [new] and new.status is Status.PREEMPTED
            assert new.num_cached == 0 and new.table.blocks == []
            assert all(s is not new for s, _ in plan.scheduled)
            seen_preemption = True
        _apply(policy, plan)
        if not policy.running and not len(policy.queue):
            break
    assert seen_preemption and policy.preemptions >= 1
    assert len(old.output_ids) == 10 and len(new.output_ids) == 10
    assert policy.blocks.num_used == 0


def test_fair_share_serves_a_quiet_tenant_before_a_noisy_backlog() -> None:
    policy = _policy(blocks=1024, max_batch_size=4, default_limits=TenantLimits(max_running=2))
    noisy = [_seq("noisy", prompt=8, max_tokens=100) for _ in range(12)]
    for s in noisy:
        policy.add(s)
    _apply(policy, policy.schedule())
    assert len(policy.running) == 4  # alone, the noisy tenant may use the whole batch
    quiet = _seq("quiet", prompt=4, max_tokens=3)
    policy.add(quiet)
    plan = policy.schedule()
    # The batch is full of borrowed places: the newest one goes back for the quiet tenant.
    assert quiet in plan.admitted and plan.preempted == [noisy[3]]
    _apply(policy, plan)
    assert _run(policy, 6)[0] is quiet


def test_caps_hold_while_another_tenant_waits() -> None:
    limits = TenantLimits(max_running=2)
    policy = _policy(blocks=1024, max_batch_size=6, default_limits=limits)
    for tenant in ("a", "b"):
        for _ in range(6):
            policy.add(_seq(tenant, max_tokens=50))
    _apply(policy, policy.schedule())
    # Both within their caps first, then the idle places lent to both alike.
    assert policy.tenant_usage() == {"a": (3, 174), "b": (3, 174)}
    policy.add(_seq("c", max_tokens=50))
    plan = policy.schedule()
    assert [s.tenant for s in plan.admitted] == ["c"] and len(plan.preempted) == 1
    assert plan.preempted[0].status is Status.PREEMPTED


def test_weights_and_overrides_share_admissions() -> None:
    cfg = PolicyConfig(
        max_batch_size=1,
        tenant_limits={"gold": TenantLimits(weight=3.0)},
    )
    policy = Policy(cfg, BlockManager(1024, 4))
    for _ in range(8):
        policy.add(_seq("gold", max_tokens=1))
        policy.add(_seq("free", max_tokens=1))
    order = [s.tenant for s in _run(policy)]
    first = order[:8]
    assert first.count("gold") == 6 and first.count("free") == 2


def test_tokens_in_flight_cap() -> None:
    limits = TenantLimits(max_tokens_in_flight=100)
    policy = _policy(blocks=1024, max_batch_size=4, default_limits=limits)
    for _ in range(4):
        policy.add(_seq("a", prompt=10, max_tokens=40))  # 50 tokens each
    policy.add(_seq("b", prompt=10, max_tokens=40))
    _apply(policy, policy.schedule())
    # "a" within its cap (2 x 50), "b", then one more of "a" on borrowed room.
    assert policy.tenant_usage() == {"a": (3, 150), "b": (1, 50)}
    policy.add(_seq("c", prompt=10, max_tokens=40))
    _apply(policy, policy.schedule())
    assert policy.tenant_usage() == {"a": (2, 100), "b": (1, 50), "c": (1, 50)}


@pytest.mark.parametrize("tenant", ["a", "b"])
def test_an_idle_tenant_banks_no_credit(tenant: str) -> None:
    policy = _policy(blocks=1024, max_batch_size=1)
    for _ in range(5):
        policy.add(_seq("a", max_tokens=1))
    _run(policy)
    # "a" was served alone for a while; "b" arriving now gets no backlog of credit.
    for _ in range(4):
        policy.add(_seq("a", max_tokens=1))
        policy.add(_seq("b", max_tokens=1))
    order = [s.tenant for s in _run(policy)]
    assert order[:4].count(tenant) == 2


def test_a_group_computes_its_prompt_once_and_shares_its_blocks() -> None:
    policy = _policy(blocks=64, block_size=4, max_batch_size=8)
    first = _seq(prompt=10, max_tokens=3)
    others = [Seq(f"{first.request_id}-{i}", "a", first.prompt_ids, 3) for i in (1, 2)]
    for seq in others:
        seq.after = first
    for seq in (first, *others):
        policy.add(seq)
    plan = policy.schedule()
    assert plan.admitted == [first]
    _apply(policy, plan)
    plan = policy.schedule()
    assert plan.admitted == others
    # Two full blocks shared; only the partial last block (2 tokens) computed again.
    assert [n for s, n in plan.scheduled if s in others] == [2, 2]
    assert all(s.table.blocks[:2] == first.table.blocks[:2] for s in others)
    _run(policy)
    assert all(len(s.output_ids) == 3 for s in (first, *others))


def test_a_burst_of_short_prompts_is_admitted_whole_while_long_ones_are_chunked() -> None:
    policy = _policy(blocks=1024, max_step_tokens=64, interleaved_prefill_tokens=8)
    running = _seq(prompt=4, max_tokens=50)
    policy.add(running)
    _apply(policy, policy.schedule())
    shorts = [_seq(prompt=6) for _ in range(5)]
    long_ = _seq(prompt=300)
    for s in (*shorts, long_):
        policy.add(s)
    plan = policy.schedule()
    # One step: the decode, every short prompt whole, the long one only a chunk.
    assert (running, 1) in plan.scheduled
    assert all((s, 6) in plan.scheduled for s in shorts)
    assert plan.num_tokens <= 64 and long_.num_cached + dict(plan.scheduled).get(long_, 0) < 64


def test_a_heavy_tenant_decodes_in_turns_while_a_light_one_has_work() -> None:
    """Rule 4: with a light tenant active, a heavy tenant's decodes per step are capped
    (in turn, every sequence keeps progressing, none is preempted); alone it runs all."""
    limits = TenantLimits(max_running=32, contended_running=4)
    policy = _policy(blocks=256, max_batch_size=32, default_limits=limits)
    heavy = [_seq("heavy", prompt=4, max_tokens=64) for _ in range(12)]
    for seq in heavy:
        policy.add(seq)
    _apply(policy, policy.schedule())  # all twelve prefilled together
    alone = policy.schedule()
    assert len(alone.scheduled) == 12  # no light tenant: the whole batch decodes
    _apply(policy, alone)

    light = _seq("light", prompt=4, max_tokens=3)
    policy.add(light)
    stepped: dict[str, int] = {}
    while light.status is not Status.FINISHED:
        plan = policy.schedule()
        heavy_now = [s for s, _ in plan.scheduled if s.tenant == "heavy"]
        assert len(heavy_now) <= 4
        assert not plan.preempted
        for seq in heavy_now:
            stepped[seq.request_id] = stepped.get(seq.request_id, 0) + 1
        _apply(policy, plan)
    # In turn: the light request's few steps went to different heavy sequences.
    assert len(stepped) >= 8
    # Once the light tenant is done, the heavy tenant has the whole batch again.
    assert len(policy.schedule().scheduled) == 12


# -- prompt chunks sized by step time ----------------------------------------------------
def _true_seconds(decodes: int, tokens: int, pairs: float) -> float:
    """A made-up machine: 4 ms a step, 0.1 ms a decode, 50 us a prompt token, 20 ns an
    attention pair."""
    return 0.004 + 1e-4 * decodes + 5e-5 * tokens + 2e-8 * pairs


def test_step_cost_learns_the_machine_and_sizes_a_chunk_by_time() -> None:
    cost = StepCost()
    assert cost.predict(4, 0, 100) is None  # nothing seen yet: no estimate
    work = [
        (d, t, t * (c + t / 2) + d * 50)
        for d, t, c in itertools.product((1, 8, 32), (0, 16, 200, 900), (0, 1000, 2500))
    ]
    for d, t, p in work:
        cost.observe(d, t, p, _true_seconds(d, t, p))
    for d, t, p in work:
        assert cost.predict(d, t, p) == pytest.approx(_true_seconds(d, t, p), rel=1e-3)
    # A chunk after 2,000 cached tokens that adds 30 ms to a step.
    n = cost.tokens_within(0.030, 2000)
    assert n is not None and 200 < n < 1000
    assert 5e-5 * n + 2e-8 * n * (2000 + n / 2) == pytest.approx(0.030, rel=1e-2)
    # The same time buys fewer tokens deeper into a long prompt (attention grows).
    wide, deep = cost.tokens_within(0.030, 0), cost.tokens_within(0.030, 20_000)
    assert wide is not None and deep is not None and wide > n > deep


def test_step_cost_is_not_thrown_off_by_a_few_steps_slowed_by_others() -> None:
    """A shared machine sometimes slows one step 10x: the chunks after it stay near
    their size (without the cap they shrank several times for the whole window)."""
    cost = StepCost()
    work = [
        (d, t, t * (c + t / 2) + d * 50)
        for d, t, c in itertools.product((1, 8, 32), (0, 16, 200, 900), (0, 1000, 2500))
    ]
    for d, t, p in work:
        cost.observe(d, t, p, _true_seconds(d, t, p))
    before = cost.tokens_within(0.030, 2000)
    for d, t, p in work[-3:]:
        cost.observe(d, t, p, 10 * _true_seconds(d, t, p))
    after = cost.tokens_within(0.030, 2000)
    # (Without the cap: 321 -> 100 tokens; with it: 248.)
    assert before is not None and after is not None and after > 0.7 * before
    # A lasting change of the machine is still learned.
    for _ in range(8):  # (the cap makes it take a few windows)
        for d, t, p in work:
            cost.observe(d, t, p, 2 * _true_seconds(d, t, p))
    for d, t, p in work:
        assert cost.predict(d, t, p) == pytest.approx(2 * _true_seconds(d, t, p), rel=0.05)


def test_prefill_chunks_keep_a_step_within_its_time_budget() -> None:
    """While sequences decode, a long prompt's chunks are sized so that the step takes at
    most ``prefill_tpot_factor`` x (its decodes alone), or the floor, whichever is more."""
    policy = _policy(
        blocks=2048,
        block_size=16,
        max_step_tokens=4096,
        prefill_tpot_factor=3.0,
        prefill_step_floor_s=0.0,
    )
    for d, t, c in itertools.product((1, 4, 16), (0, 64, 512), (0, 2000)):
        p = t * (c + t / 2)
        policy.observe((d, t, p), _true_seconds(d, t, p))
    decoding = [_seq(prompt=4, max_tokens=500) for _ in range(16)]
    for s in decoding:
        policy.add(s)
    _apply(policy, policy.schedule())
    long_ = _seq(prompt=6000, max_tokens=2)
    policy.add(long_)
    chunks = []
    while long_.num_cached < 6000:
        plan = policy.schedule()
        decodes, tokens, pairs = step_work(plan.scheduled)
        assert decodes == 16  # the decodes never wait
        alone = _true_seconds(16, 0, sum(s.num_cached + 1 for s in decoding))
        assert _true_seconds(decodes, tokens, pairs) <= 3.0 * alone * 1.02
        chunks.append(tokens)
        _apply(policy, plan)
    # Much more than the fixed 48 tokens a step, and shrinking as the context grows.
    assert chunks[0] > 200 and chunks[-2] < chunks[0]
    # The floor: a step may always take 25 ms, here well above 3x the decodes' time.
    policy.config.prefill_step_floor_s = 0.025
    other = _seq(prompt=6000, max_tokens=2)
    policy.add(other)
    plan = policy.schedule()
    work = step_work(plan.scheduled)
    assert work[1] > chunks[0] and _true_seconds(*work) == pytest.approx(0.025, rel=0.05)
