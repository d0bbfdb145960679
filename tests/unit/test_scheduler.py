"""Continuous batching: correctness against Hugging Face generate, joins, stops, limits."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from autoglm.core.errors import (
    AutoGLMError,
    DeadlineExceededError,
    InvalidRequestError,
    OverloadedError,
)
from autoglm.core.schemas import ChatMessage, GenerateRequest, SamplingParams
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.kvcache import step_forward
from autoglm.inference.scheduler import StepStats
from tests.support.polling import wait_for

PROMPTS = [
    "Hello there",
    "The quick brown fox jumps over the lazy",
    "a",
    "Return the value of the attribute named by the string",
]


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Iterator[AutoGLMEngine]:
    eng = AutoGLMEngine(demo_model_dir, model_id="demo-glm", prefix_cache_mb=0)
    yield eng
    eng.close()


def _req(prompt: str, max_tokens: int = 16, **kw: object) -> GenerateRequest:
    sampling = SamplingParams(max_tokens=max_tokens, **{"temperature": 0.0, **kw})  # type: ignore[arg-type]
    return GenerateRequest(prompt=prompt, sampling=sampling)


def _hf_greedy(engine: AutoGLMEngine, prompt: str, max_tokens: int) -> str:
    lm = engine.get(None)
    ids = lm.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=lm.eos_token_ids,
            pad_token_id=0,
        )
    return str(lm.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


def test_batched_mixed_lengths_match_hf_generate(engine: AutoGLMEngine) -> None:
    reqs = [_req(p, 10 + 4 * i) for i, p in enumerate(PROMPTS)]
    results = [h.result(60) for h in [engine.submit(r) for r in reqs]]
    for req, res in zip(reqs, results, strict=True):
        assert res.text == _hf_greedy(engine, req.prompt or "", req.sampling.max_tokens)
        assert res.completion_tokens == req.sampling.max_tokens or res.finish_reason == "stop"


def test_request_joins_a_running_batch_and_leaves_early(engine: AutoGLMEngine) -> None:
    solo_long = engine.generate(_req(PROMPTS[1], 60))
    solo_short = engine.generate(_req(PROMPTS[3], 5))
    long_handle = engine.submit(_req(PROMPTS[1], 60), stream=True)
    stream = iter(long_handle)
    next(stream)  # the long request is decoding now
    short = engine.submit(_req(PROMPTS[3], 5)).result(60)
    assert not long_handle.done, "short request should finish while the long one runs"
    assert short.text == solo_short.text
    assert long_handle.result(60).text == solo_long.text


def test_stop_sequence_cuts_text_and_never_streams_it(engine: AutoGLMEngine) -> None:
    full = engine.generate(_req(PROMPTS[0], 40)).text
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), "test needs a visible stop string"
    handle = engine.submit(_req(PROMPTS[0], 40, stop=[stop]))
    streamed = "".join(handle)
    result = handle.result(1)
    assert result.finish_reason == "stop"
    assert result.text == full[: full.find(stop)]
    assert streamed == result.text and stop not in streamed


def test_cancel_frees_the_slot(engine: AutoGLMEngine) -> None:
    handle = engine.submit(_req(PROMPTS[1], 3000), stream=True)
    next(iter(handle))
    handle.cancel()
    result = handle.result(30)
    assert result.finish_reason == "cancelled" and result.completion_tokens < 3000
    wait_for("an empty batch", lambda: engine.get(None).scheduler.batch_size == 0, 5, 0.01)


def test_closing_a_stream_cancels_generation(engine: AutoGLMEngine) -> None:
    stream = engine.stream(_req(PROMPTS[1], 3000))
    next(stream)
    stream.close()  # type: ignore[attr-defined]
    wait_for("an empty batch", lambda: engine.get(None).scheduler.batch_size == 0, 5, 0.01)


def test_seeded_sampling_is_independent_of_batch_company(engine: AutoGLMEngine) -> None:
    seeded = _req(PROMPTS[0], 20, temperature=0.9, top_p=0.9, top_k=50, seed=1234)
    alone = engine.generate(seeded).text
    others = [engine.submit(_req(p, 20, temperature=1.0)) for p in PROMPTS]
    together = engine.submit(seeded).result(60).text
    for h in others:
        h.result(60)
    assert together == alone


def test_full_queue_is_overloaded_not_unbounded(demo_model_dir: Path) -> None:
    eng = AutoGLMEngine(demo_model_dir, max_batch_size=1, max_queue=1, prefix_cache_mb=0)
    try:
        running = eng.submit(_req(PROMPTS[1], 3000), stream=True)
        next(iter(running))
        waiting = eng.submit(_req(PROMPTS[0], 4))
        with pytest.raises(OverloadedError, match="queue is full"):
            eng.submit(_req(PROMPTS[0], 4))
        running.cancel()
        assert waiting.result(30).completion_tokens >= 1
    finally:
        eng.close()


def test_request_timeout_frees_slot_with_504(demo_model_dir: Path) -> None:
    eng = AutoGLMEngine(demo_model_dir, request_timeout_s=0.3, prefix_cache_mb=0)
    try:
        with pytest.raises(DeadlineExceededError):
            eng.submit(_req(PROMPTS[1], 3500)).result(30)
        assert eng.get(None).scheduler.batch_size == 0
    finally:
        eng.close()


def test_caller_timeout_shorter_than_the_engines_is_honoured(engine: AutoGLMEngine) -> None:
    """A caller that gives up (the gateway's HTTP timeout) gets its slot freed too."""
    request = _req(PROMPTS[1], 3500).model_copy(update={"timeout_s": 0.3})
    with pytest.raises(DeadlineExceededError, match=r"0\.3s"):
        engine.submit(request).result(30)
    assert engine.get(None).scheduler.batch_size == 0


def test_prefix_cache_reuses_earlier_turns_without_changing_output(
    demo_model_dir: Path, engine: AutoGLMEngine
) -> None:
    cached = AutoGLMEngine(demo_model_dir, prefix_cache_mb=64)
    try:
        history = [ChatMessage(role="user", content="Tell me about the logging module")]
        for _ in range(3):
            req = GenerateRequest(
                messages=history, sampling=SamplingParams(max_tokens=12, temperature=0)
            )
            with_cache = cached.generate(req)
            without = engine.generate(req)
            assert with_cache.text == without.text
            history = [
                *history,
                ChatMessage(role="assistant", content=with_cache.text),
                ChatMessage(role="user", content="and then?"),
            ]
        prefix = cached.get(None).scheduler.prefix_cache
        assert prefix is not None and prefix.hits >= 2
    finally:
        cached.close()


def test_a_failing_prefill_fails_its_requests_instead_of_stranding_them(
    demo_model_dir: Path,
) -> None:
    """Requests taken off the queue for a prefill that raises get an error at once (a
    streaming caller has no timeout of its own), and the scheduler keeps serving."""
    eng = AutoGLMEngine(demo_model_dir, prefix_cache_mb=0)
    try:
        scheduler = eng.get(None).scheduler
        real_forward = scheduler._forward

        def failing(*_args: object, **_kwargs: object) -> torch.Tensor:
            raise RuntimeError("CUDA out of memory (simulated)")

        scheduler._forward = failing
        handles = [eng.submit(_req(p, 4), stream=True) for p in PROMPTS[:2]]
        for handle in handles:
            with pytest.raises(AutoGLMError, match="generation failed"):
                list(handle)  # ends instead of blocking
            with pytest.raises(AutoGLMError, match="generation failed"):
                handle.result(5)
        scheduler._forward = real_forward
        assert eng.generate(_req(PROMPTS[0], 3)).completion_tokens == 3
    finally:
        eng.close()


def test_queue_waits_are_reported_and_cancelled_waiters_give_their_place_back(
    demo_model_dir: Path,
) -> None:
    seen: list[StepStats] = []
    eng = AutoGLMEngine(
        demo_model_dir,
        max_batch_size=1,
        max_queue=1,
        prefix_cache_mb=0,
        warmup=False,  # its step would be reported too, possibly after construction
        on_step=lambda _model, stats: seen.append(stats),
    )
    try:
        running = eng.submit(_req(PROMPTS[1], 3000), stream=True)
        next(iter(running))
        abandoned = eng.submit(_req(PROMPTS[0], 4))
        abandoned.cancel()
        # The queue holds only the cancelled request: a new one takes its place.
        waiting = eng.submit(_req(PROMPTS[0], 4))
        assert abandoned.result(1).finish_reason == "cancelled"
        time.sleep(0.05)  # ``waiting`` waits at least this long for the slot
        running.cancel()
        assert waiting.result(30).completion_tokens >= 1
        waits = [w for s in seen for w in s.queue_waits]
        assert len(waits) == 2 and all(w >= 0 for w in waits)
        assert max(waits) >= 0.05  # the second one waited for the first to leave
    finally:
        eng.close()


def test_generated_tokens_include_each_requests_first_token(demo_model_dir: Path) -> None:
    """The first token comes from the prefill, and a request that stops there leaves the
    batch before the step is reported: both still count as generated."""
    from autoglm.inference.metrics import InferenceMetrics

    metrics = InferenceMetrics()
    eng = AutoGLMEngine(demo_model_dir, prefix_cache_mb=0, warmup=False, on_step=metrics.on_step)
    try:
        results = [eng.generate(_req(PROMPTS[0], 1)), eng.generate(_req(PROMPTS[1], 6))]
        assert results[0].completion_tokens == 1
        expected = sum(r.completion_tokens for r in results)
        # A step is reported after its requests finish: give the last report a moment.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            counted = metrics.registry.get_sample_value(
                "autoglm_generated_tokens_total", {"model": eng.default_model}
            )
            if counted == expected:
                break
            time.sleep(0.01)
        assert counted == expected
    finally:
        eng.close()


#: About 400 tokens: with the short prompts, a mix the paged cache must chunk and share.
LONG = "Return the value of the attribute named by the string, " * 40


def _mixed_prompts() -> list[str]:
    return [
        PROMPTS[0],
        LONG + "first",
        PROMPTS[1],
        PROMPTS[2],
        "Explain the logging module. " + LONG,
        PROMPTS[3],
        LONG + "second",  # shares its first blocks with the first long prompt
    ]


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"interleaved_prefill_tokens": 8, "max_step_tokens": 24},  # many small chunks
        # 512-token pool: preemptions (fixed 48-token chunks: with chunks sized by time
        # the long prompts may get through one after the other without any)
        {"kv_cache_mb": 1, "max_step_tokens": 64, "prefill_tpot_factor": 0},
    ],
    ids=["defaults", "small-chunks", "tiny-pool"],
)
def test_mixed_arrivals_match_hf_generate_alone(
    demo_model_dir: Path, config: dict[str, int]
) -> None:
    """Short and long prompts arriving over time, whatever shares their steps, chunks
    or pool: each greedy output is what ``generate`` gives for that prompt alone."""
    from autoglm.inference.metrics import InferenceMetrics

    metrics = InferenceMetrics()
    eng = AutoGLMEngine(
        demo_model_dir,
        warmup=False,
        on_step=metrics.on_step,
        **config,  # type: ignore[arg-type]
    )
    model = {"model": eng.default_model}
    tiny = "kv_cache_mb" in config
    gate, held = threading.Event(), threading.Event()
    if tiny:  # all arrive before the first step, so the pool surely runs out
        hold = lambda: (held.set(), gate.wait())  # noqa: E731
        threading.Thread(target=eng.compute.call, args=(hold,), daemon=True).start()
        assert held.wait(30)
    try:
        handles = []
        for i, prompt in enumerate(_mixed_prompts()):
            handles.append((prompt, eng.submit(_req(prompt, 12 + i))))
            if not tiny:
                time.sleep(0.01 * (i % 3))
        gate.set()
        for prompt, handle in handles:
            expected = _hf_greedy(eng, prompt, handle.request.sampling.max_tokens)
            assert handle.result(120).text == expected, prompt[:40]
        # The long prefix computed by the others is shared (blocks kept after they ended).
        third = LONG + "third"
        assert eng.generate(_req(third, 8)).text == _hf_greedy(eng, third, 8)
        scheduler = eng.get(None).scheduler
        assert scheduler is not None and scheduler.blocks.num_used == 0
        if "kv_cache_mb" in config:
            assert scheduler.policy.preemptions > 0
            registry = metrics.registry
            assert registry.get_sample_value("autoglm_preemptions_total", model) > 0
        assert scheduler.blocks.hits > 0  # the shared long prefix
        hits = {**model, "outcome": "hit"}
        assert metrics.registry.get_sample_value("autoglm_prefix_blocks_total", hits) > 0
    finally:
        eng.close()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_seeded_sampling_in_a_mixed_batch_matches_itself_alone(
    demo_model_dir: Path, dtype: str
) -> None:
    eng = AutoGLMEngine(
        demo_model_dir, warmup=False, dtype=dtype, kv_cache_mb=1, max_step_tokens=32
    )
    try:
        seeded = [
            _req(p, 16, temperature=0.8, top_p=0.9, seed=7 + i)
            for i, p in enumerate(_mixed_prompts()[:4])
        ]
        alone = [eng.generate(r).text for r in seeded]
        noise = [eng.submit(_req(LONG + str(i), 20, temperature=1.0)) for i in range(2)]
        together = [eng.submit(r) for r in seeded]
        assert [h.result(120).text for h in together] == alone
        for h in noise:
            h.result(120)
    finally:
        eng.close()


def test_lean_step_forward_gives_the_models_own_logits(engine: AutoGLMEngine) -> None:
    """A step through the model's modules without its ``forward`` wrappers computes
    exactly (bitwise) what its ``forward`` computes: decodes and a chunk after cached
    tokens in one packed row, in blocks of the pool's far end (no sequence uses them)."""
    lm = engine.get(None)
    scheduler = lm.scheduler
    assert scheduler is not None
    cache = scheduler.cache
    bs = cache.block_size
    ids = lm.tokenizer(LONG, add_special_tokens=False)["input_ids"][:100]
    far = list(range(cache.num_blocks - 8, cache.num_blocks))
    prefill = (far[:7], 40, 60)  # 40 tokens cached (written by the first step), 60 new
    decode = ([far[7]], 9)  # 8 cached + 1

    def run(lean: bool) -> list[torch.Tensor]:
        forward = step_forward(lm.model, cache, lean=lean)
        out = []
        with torch.inference_mode():
            first = cache.plan([(far[:7], 0, 40), ([far[7]], 0, 8)], [])
            tokens = torch.tensor([ids[:40] + ids[:8]])
            positions = torch.tensor([list(range(40)) + list(range(8))])
            out.append(forward(tokens, positions, torch.tensor([39, 47]), first))
            second = cache.plan([prefill], [decode])
            tokens = torch.tensor([[ids[8], *ids[40:100]]])
            positions = torch.tensor([[8, *range(40, 100)]])
            out.append(forward(tokens, positions, torch.tensor([0, 60]), second))
        return out

    assert len(far) * bs >= 100
    full, lean = engine.compute.call(run, False), engine.compute.call(run, True)
    for a, b in zip(full, lean, strict=True):
        assert a.shape == (2, lm.model.config.vocab_size)
        assert torch.equal(a, b)


def test_kv_memory_follows_the_tokens_held(engine: AutoGLMEngine) -> None:
    scheduler = engine.get(None).scheduler
    assert scheduler is not None
    handles = [engine.submit(_req(p, 200), stream=True) for p in (LONG, PROMPTS[2])]
    for h in handles:
        next(iter(h))
    nbytes, tokens = scheduler.kv_usage()
    # Blocks are allocated per sequence: no padding of the short one to the long one.
    per_token = scheduler.cache.bytes_per_token
    assert tokens > 400 and nbytes <= per_token * (tokens + 2 * 16 * 2)
    for h in handles:
        h.cancel()
        h.result(30)


def test_a_request_larger_than_the_pool_is_refused(demo_model_dir: Path) -> None:
    eng = AutoGLMEngine(demo_model_dir, warmup=False, kv_cache_mb=1)
    try:
        with pytest.raises(InvalidRequestError, match="KV cache"):
            eng.submit(_req(LONG, 1000))
    finally:
        eng.close()


@pytest.mark.parametrize(
    "config",
    [{}, {"interleaved_prefill_tokens": 8, "max_step_tokens": 24}],
    ids=["whole-prompts", "small-chunks"],
)
def test_bfloat16_alone_matches_hf_generate_in_bfloat16(
    demo_model_dir: Path, config: dict[str, int]
) -> None:
    """``dtype=bfloat16`` on CPU: weights, activations and the KV pool in bfloat16. A
    request alone, its prompt whole or in chunks, gives exactly what ``generate`` gives
    in bfloat16. (In a batch, bfloat16 matrix products round differently with the number
    of rows, so greedy tokens can differ at near-ties; float32 is the exact default.)"""
    eng = AutoGLMEngine(
        demo_model_dir,
        warmup=False,
        dtype="bfloat16",
        prefix_cache_mb=0,
        **config,  # type: ignore[arg-type]
    )
    try:
        scheduler = eng.get(None).scheduler
        assert scheduler is not None and scheduler.cache.pool.dtype == torch.bfloat16
        cache = scheduler.cache
        assert cache.bytes_per_token == cache.layers * 2 * cache.kv_heads * cache.head_dim * 2
        for prompt in _mixed_prompts():
            assert eng.generate(_req(prompt, 12)).text == _hf_greedy(eng, prompt, 12), prompt[:40]
    finally:
        eng.close()
