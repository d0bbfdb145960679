"""Engine benchmark: our continuous batching against Hugging Face ``generate``.

Same model, same prompts, same ``max_tokens``, greedy, one process:

* ``hf_sequential``  — ``model.generate`` one request at a time;
* ``static_batch``   — ``model.generate`` on one left-padded batch of all prompts at once:
  no scheduling and no arrivals, the ceiling for this model on this machine;
* ``engine@C``       — AutoGLMEngine with C requests in flight; requests arrive
  staggered, join the running batch between steps and leave when done.

Each setting runs ``--repeat`` times and the run with the median tokens/s is
reported, since one run of a few seconds on a shared 2-core machine is noisy. The
prefix cache is cleared before every engine run, so no run is served from an
earlier run's identical prompts.

It also measures the prefix cache: time to first token of turn 5 of a conversation
against turn 1. The last line printed is a JSON object with the headline numbers.

``--scenario noisy`` runs ``noisy_neighbour.py`` in process: one tenant with 24 long
generations in flight and 24 more waiting, another sending short chats.

``--scenario mixed`` measures what a long prompt does to everyone else: 32 short
prompts alone (``short_tok_s``), then 28 short prompts with 4 prompts of ~2,800 tokens
among them (``mixed_tok_s``: every generated token of the run over its wall time;
``short_in_mixed_tok_s``: the short requests' tokens over the time until the last short
one finished), 32 new tokens each, greedy. It reports time per output token of the short
requests while the long ones are admitted and the KV cache's bytes per cached token, and
where the mixed run's time went: its engine steps, the seconds of those that carried the
long prompts' chunks (``mixed_chunk_steps_s``) and of the decode-only steps after them
(``mixed_tail_s``). It also measures what no scheduler can go below on this machine, as
Hugging Face runs the model (``sdpa``) on the engine's compute thread: the long prompts'
prefill, each in one causal forward (``long_prefill_floor_s``), and the one-token decodes
of the last of them that must follow it (``long_decode_floor_s``: whichever long prompt
is prefilled last, all four prefills come before its decodes, which come one after
another). ``mixed_over_short_ceiling`` is the ratio the mixed run would reach in that
time, i.e. if the short requests' work and every other decode cost nothing: the mixed
run's tokens over the two floors, over the short-only run's tokens/s (timed in every
round; the median round's figures are reported). A ceiling under a goal means that only
cheaper arithmetic (a faster machine, a matrix unit, a smaller dtype) reaches it, not
scheduling.

    python load/bench_engine.py [--model .models/demo-glm] [--requests 32] [--max-tokens 64]
                                [--repeat 3] [--scenario all|batching|mixed|noisy]
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from autoglm.core.schemas import ChatMessage, GenerateRequest, GenerateResult, SamplingParams
from autoglm.inference.engine import AutoGLMEngine

TOPICS = ["logging", "threads", "sockets", "json", "paths", "queues", "e-mail", "unit tests"]


def prompts(n: int) -> list[str]:
    return [
        f"Explain {TOPICS[i % len(TOPICS)]} in Python, part {i}: " + "details " * (i % 7)
        for i in range(n)
    ]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def median_run(repeat: int, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    results = sorted((run() for _ in range(repeat)), key=lambda r: float(r["tok_s"]))
    return results[len(results) // 2]


def clear_prefix_cache(engine: AutoGLMEngine) -> None:
    scheduler = engine.get(None).scheduler
    if scheduler is not None and scheduler.prefix_cache is not None:
        scheduler.prefix_cache.clear()


def hf_sequential(engine: AutoGLMEngine, texts: list[str], max_tokens: int) -> dict[str, Any]:
    lm = engine.get(None)
    tokens, latencies = 0, []
    start = time.perf_counter()
    for text in texts:
        ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        ids = ids.to(engine.device)
        t0 = time.perf_counter()
        out = _on_compute(
            engine,
            lambda ids=ids: lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=lm.eos_token_ids,
                pad_token_id=0,
            ),
        )
        latencies.append(time.perf_counter() - t0)
        tokens += _generated(out[0, ids.shape[1] :].tolist(), lm.eos_token_ids)
    elapsed = time.perf_counter() - start
    return {
        "tok_s": tokens / elapsed,
        "tokens": tokens,
        "seconds": elapsed,
        "p50_s": pct(latencies, 0.5),
        "p99_s": pct(latencies, 0.99),
    }


def _on_compute(engine: AutoGLMEngine, run: Callable[[], Any]) -> Any:
    """Run Hugging Face ``generate`` on the engine's compute thread, as the engine runs
    its steps: a second thread running OpenMP ops would slow both (ComputeThread)."""

    def inference() -> Any:
        with torch.inference_mode():
            return run()

    compute = getattr(engine, "compute", None)  # engines before it had none
    return compute.call(inference) if compute is not None else inference()


def _generated(ids: list[int], eos: list[int]) -> int:
    for i, tok in enumerate(ids):
        if tok in eos:
            return i + 1
    return len(ids)


def static_batch(engine: AutoGLMEngine, texts: list[str], max_tokens: int) -> dict[str, Any]:
    lm = engine.get(None)
    lm.tokenizer.padding_side = "left"
    enc = lm.tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True)
    enc = {k: v.to(engine.device) for k, v in enc.items()}
    start = time.perf_counter()
    out = _on_compute(
        engine,
        lambda: lm.model.generate(
            **enc,
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=lm.eos_token_ids,
            pad_token_id=0,
        ),
    )
    elapsed = time.perf_counter() - start
    width = enc["input_ids"].shape[1]
    tokens = sum(_generated(row[width:].tolist(), lm.eos_token_ids) for row in out)
    return {"tok_s": tokens / elapsed, "tokens": tokens, "seconds": elapsed}


def engine_run(
    engine: AutoGLMEngine, texts: list[str], max_tokens: int, concurrency: int, stagger_s: float
) -> dict[str, Any]:
    """``concurrency`` client threads; each sends its next request when the last returns."""
    results: list[tuple[GenerateResult, float, float]] = []
    lock = threading.Lock()
    todo = list(enumerate(texts))

    def client(k: int) -> None:
        time.sleep(k * stagger_s)  # arrivals spread out, not one synchronized batch
        while True:
            with lock:
                if not todo:
                    return
                _, text = todo.pop(0)
            req = GenerateRequest(
                prompt=text, sampling=SamplingParams(max_tokens=max_tokens, temperature=0)
            )
            t0 = time.perf_counter()
            handle = engine.submit(req)
            res = handle.result(600)
            with lock:
                results.append((res, time.perf_counter() - t0, handle.ttft or 0.0))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r, _, _ in results)
    lat = [x for _, x, _ in results]
    ttft = [x for _, _, x in results]
    return {
        "tok_s": tokens / elapsed,
        "tokens": tokens,
        "seconds": elapsed,
        "p50_s": pct(lat, 0.5),
        "p99_s": pct(lat, 0.99),
        "ttft_p50_s": pct(ttft, 0.5),
        "ttft_p99_s": pct(ttft, 0.99),
    }


def prefix_cache_ttft(engine: AutoGLMEngine, turns: int = 5) -> dict[str, float]:
    """TTFT per turn of one conversation; later turns reuse the cached earlier ones."""
    history = [ChatMessage(role="system", content="You are a helpful assistant. " * 40)]
    ttfts = []
    for turn in range(turns):
        history.append(ChatMessage(role="user", content=f"Question {turn}: " + "why? " * 30))
        req = GenerateRequest(
            messages=history, sampling=SamplingParams(max_tokens=16, temperature=0)
        )
        handle = engine.submit(req)
        res = handle.result(120)
        ttfts.append(handle.ttft or 0.0)
        history.append(ChatMessage(role="assistant", content=res.text))
    return {
        "ttft_turn1_s": ttfts[0],
        f"ttft_turn{turns}_s": ttfts[-1],
        "prompt_tokens_last_turn": float(res.prompt_tokens),
    }


def long_floor(
    engine: AutoGLMEngine, path: Path, texts: list[str], decodes: int
) -> Callable[[], tuple[float, float]]:
    """A timer of the least compute the mixed run's long prompts need, whatever the
    scheduler, as Hugging Face runs the model (``sdpa``) on the engine's compute thread:
    ``texts`` prefilled one after another, each in one causal forward (logits of the
    last token only), and then ``decodes`` one-token steps of the last one over its
    cache. Whichever long prompt is prefilled last, all four prefills precede its
    decodes, and its decodes follow one another. Each call times one such pass (warmed
    up): (prefill seconds, decode seconds)."""
    from transformers import AutoModelForCausalLM

    lm = engine.get(None)
    model: Any = AutoModelForCausalLM.from_pretrained(
        path, dtype=lm.model.dtype, attn_implementation="sdpa"
    )
    model.to(engine.device)
    model.eval()
    ids = [
        lm.tokenizer(t, add_special_tokens=False, return_tensors="pt")["input_ids"].to(
            engine.device
        )
        for t in texts
    ]

    def one_pass() -> tuple[float, float]:
        start = time.perf_counter()
        for x in ids[:-1]:
            hidden = model.model(input_ids=x, use_cache=False).last_hidden_state
            model.lm_head(hidden[:, -1:]).float().cpu()
        out = model.model(input_ids=ids[-1], use_cache=True)
        token = model.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)
        token.cpu()
        prefilled = time.perf_counter()
        cache = out.past_key_values
        for _ in range(decodes):
            out = model.model(input_ids=token, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            token = model.lm_head(out.last_hidden_state[:, -1:]).argmax(-1)
            token.cpu()
        return prefilled - start, time.perf_counter() - prefilled

    _on_compute(engine, one_pass)  # warm up
    return lambda: _on_compute(engine, one_pass)  # type: ignore[no-any-return]


def long_prompts(tokenizer: Any, n: int, tokens: int) -> list[str]:
    """``n`` distinct prompts of about ``tokens`` tokens each (stdlib docstrings)."""
    from autoglm.models.demo import _corpus

    ids: list[int] = tokenizer("\n\n".join(_corpus()), add_special_tokens=False)["input_ids"]
    step = max(1, (len(ids) - tokens) // max(1, n))
    out = []
    for i in range(n):
        text = str(tokenizer.decode(ids[i * step : i * step + tokens]))
        out.append(f"Document {i}. Summarise it.\n{text}")
    return out


class StepLog:
    """The engine's steps as its ``on_step`` hook reports them (end time, prompt tokens),
    for the mixed scenario's breakdown of where a run's time went."""

    def __init__(self) -> None:
        self.steps: list[tuple[float, int]] = []

    def __call__(self, model_id: str, stats: Any) -> None:
        self.steps.append((time.monotonic(), int(getattr(stats, "prefill_tokens", 0))))

    def breakdown(self, start: float, end: float, chunk_tokens: int = 128) -> dict[str, float]:
        """Steps that ended in ``(start, end]``, each timed from the end of the one before
        (or ``start``): how many, and seconds in steps carrying at least ``chunk_tokens``
        prompt tokens (long prompts' chunks) and in the decode-only steps after the last
        of them (the tail)."""
        steps = [(t, n) for t, n in list(self.steps) if start < t <= end]
        timed = []
        last = start
        for t, n in steps:
            timed.append((t - last, n))
            last = t
        chunked = [i for i, (_, n) in enumerate(timed) if n >= chunk_tokens]
        tail_from = chunked[-1] + 1 if chunked else len(timed)
        return {
            "steps": len(timed),
            "chunk_steps": len(chunked),
            "chunk_steps_s": sum(timed[i][0] for i in chunked),
            "tail_steps": len(timed) - tail_from,
            "tail_s": sum(d for d, _ in timed[tail_from:]),
        }


def kv_stats(engine: AutoGLMEngine) -> tuple[int, int]:
    """(bytes the KV cache holds for running sequences, tokens they have cached)."""
    scheduler: Any = engine.get(None).scheduler
    if hasattr(scheduler, "kv_usage"):
        used: tuple[int, int] = scheduler.kv_usage()
        return used
    batch = getattr(scheduler, "_batch", None)  # the left-padded cache before issue 17
    if batch is None or batch.cache is None or batch.mask is None:
        return 0, 0
    nbytes = sum(
        t.numel() * t.element_size()
        for layer in batch.cache.layers
        for t in (layer.keys, layer.values)
    )
    return nbytes, int(batch.mask.sum())


def mixed_scenario(
    engine: AutoGLMEngine,
    path: Path,
    max_tokens: int,
    repeat: int,
    long_tokens: int,
    steps: StepLog | None = None,
) -> dict[str, Any]:
    lm = engine.get(None)
    shorts = prompts(32)
    longs = long_prompts(lm.tokenizer, 4, long_tokens)
    long_lens = [len(lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in longs]
    # 28 short and 4 long, the long ones spread among the short ones' arrivals.
    mixed = list(shorts[:28])
    for k, text in enumerate(longs):
        mixed.insert(k * 8 + 2, text)
    is_long = [t in longs for t in mixed]

    def run(texts: list[str], longs_mask: list[bool]) -> dict[str, Any]:
        clear_prefix_cache(engine)
        finished: dict[int, float] = {}
        handles = []
        samples: list[tuple[int, int]] = []
        stop = threading.Event()

        def sampler() -> None:
            while not stop.wait(0.01):
                samples.append(kv_stats(engine))

        watch = threading.Thread(target=sampler, daemon=True)
        start = time.monotonic()
        watch.start()
        waiters = []

        def wait(i: int) -> None:
            handles[i].wait(600)
            finished[i] = time.monotonic()

        # One blocked waiter per request notes when it ends: polling every handle in a
        # loop (as this did before) keeps taking the GIL from the engine's thread and
        # slowed every step by a few milliseconds.
        for i, text in enumerate(texts):
            req = GenerateRequest(
                prompt=text, sampling=SamplingParams(max_tokens=max_tokens, temperature=0)
            )
            handles.append(engine.submit(req))
            waiters.append(threading.Thread(target=wait, args=(i,), daemon=True))
            waiters[-1].start()
            time.sleep(0.005)
        for waiter in waiters:
            waiter.join()
        elapsed = max(finished.values()) - start
        stop.set()
        watch.join()
        results = [h.result(1) for h in handles]
        short_ids = [i for i, long_ in enumerate(longs_mask) if not long_]
        short_end = max(finished[i] for i in short_ids) - start
        tpot = [
            (finished[i] - (handles[i].first_token_at or finished[i]))
            / max(1, results[i].completion_tokens - 1)
            for i in short_ids
        ]
        kv = [(b, t) for b, t in samples if t]
        peak = max(kv, key=lambda x: x[1]) if kv else (0, 0)
        split = steps.breakdown(start, start + elapsed) if steps else {}
        return {
            **split,
            "tokens": sum(r.completion_tokens for r in results),
            "tok_s": sum(r.completion_tokens for r in results) / elapsed,
            "short_tok_s": sum(results[i].completion_tokens for i in short_ids) / short_end,
            "seconds": elapsed,
            "tpot_p50_s": pct(tpot, 0.5),
            "tpot_p99_s": pct(tpot, 0.99),
            "kv_bytes_peak": peak[0],
            "kv_tokens_peak": peak[1],
        }

    # Alternate the two, so that both see the same (shared, noisy) machine.
    shorts_runs, mixed_runs = [], []
    # The floor is timed in each round too, and the ceiling is each round's (its
    # short-only run against its floor), so that both share that round's machine.
    time_floor = long_floor(engine, path, longs, max_tokens - 1)
    ceilings: list[tuple[float, float, float]] = []
    for _ in range(repeat):
        shorts_runs.append(run(shorts, [False] * len(shorts)))
        mixed_runs.append(run(mixed, is_long))
        prefill_s, decode_s = time_floor()
        tokens = mixed_runs[-1]["tokens"]
        ceiling = tokens / (prefill_s + decode_s) / shorts_runs[-1]["tok_s"]
        ceilings.append((ceiling, prefill_s, decode_s))
    short = median_run(repeat, iter(shorts_runs).__next__)
    mix = median_run(repeat, iter(mixed_runs).__next__)
    per_token = mix["kv_bytes_peak"] / mix["kv_tokens_peak"] if mix["kv_tokens_peak"] else 0.0
    ceiling, prefill_s, decode_s = sorted(ceilings)[len(ceilings) // 2]
    return {
        "long_prompt_tokens": long_lens,
        "short_tok_s": round(short["tok_s"], 1),
        "short_tpot_p50_ms": round(short["tpot_p50_s"] * 1000, 2),
        "mixed_tok_s": round(mix["tok_s"], 1),
        "mixed_over_short": round(mix["tok_s"] / short["tok_s"], 3),
        "short_in_mixed_tok_s": round(mix["short_tok_s"], 1),
        "short_in_mixed_over_short": round(mix["short_tok_s"] / short["tok_s"], 3),
        "mixed_seconds": round(mix["seconds"], 2),
        "long_prefill_floor_s": round(prefill_s, 3),
        "long_decode_floor_s": round(decode_s, 3),
        "mixed_over_short_ceiling": round(ceiling, 3),
        "mixed_short_tpot_p50_ms": round(mix["tpot_p50_s"] * 1000, 2),
        "mixed_short_tpot_p99_ms": round(mix["tpot_p99_s"] * 1000, 2),
        "kv_bytes_per_cached_token": round(per_token, 1),
        "kv_peak_mb": round(mix["kv_bytes_peak"] / 2**20, 2),
        "kv_peak_tokens": mix["kv_tokens_peak"],
        **(
            {
                "short_steps": short["steps"],
                "mixed_steps": mix["steps"],
                "mixed_chunk_steps": mix["chunk_steps"],
                "mixed_chunk_steps_s": round(mix["chunk_steps_s"], 3),
                "mixed_tail_steps": mix["tail_steps"],
                "mixed_tail_s": round(mix["tail_s"], 3),
            }
            if "steps" in mix
            else {}
        ),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=".models/demo-glm")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--dtypes",
        default="",
        help="mixed: the dtypes to run it in, comma-separated (default: --dtype, and "
        "bfloat16 after float32); the first one's figures are the summary's goal keys "
        "(mixed_over_short, ...), the others' are prefixed with their name",
    )
    ap.add_argument("--max-step-tokens", type=int, default=None, help="engine setting")
    ap.add_argument("--prefill-tpot-factor", type=float, default=None, help="engine setting")
    ap.add_argument("--prefill-step-floor-ms", type=float, default=None, help="engine setting")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stagger-ms", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting; median reported")
    ap.add_argument("--scenario", choices=["all", "batching", "mixed", "noisy"], default="all")
    ap.add_argument("--long-tokens", type=int, default=2800, help="mixed: long prompt size")
    ap.add_argument("--mixed-max-tokens", type=int, default=32)
    ap.add_argument(
        "--structured",
        action="store_true",
        help="also: 32 in flight, half constrained by a JSON schema (bench_structured.py)",
    )
    args = ap.parse_args()
    model = Path(args.model)
    if not (model / "config.json").is_file():
        from autoglm.models.demo import create_demo_model

        create_demo_model(model)
    settings: dict[str, Any] = {}
    if args.max_step_tokens:
        settings["max_step_tokens"] = args.max_step_tokens
    if args.prefill_tpot_factor is not None:
        settings["prefill_tpot_factor"] = args.prefill_tpot_factor
    if args.prefill_step_floor_ms is not None:
        settings["prefill_step_floor_ms"] = args.prefill_step_floor_ms

    def start(dtype: str, on_step: StepLog | None = None) -> AutoGLMEngine:
        engine = AutoGLMEngine(
            model,
            device_map=args.device,
            dtype=dtype,
            max_batch_size=max(32, args.requests),
            on_step=on_step,
            **settings,
        )
        engine.generate(GenerateRequest(prompt="warm up", sampling=SamplingParams(max_tokens=4)))
        return engine

    summary: dict[str, Any] = {"device": "", "dtype": args.dtype}
    if args.scenario in ("all", "mixed"):
        dtypes = [d for d in args.dtypes.split(",") if d] or [args.dtype]
        if not args.dtypes and args.dtype == "float32" and args.scenario == "mixed":
            dtypes.append("bfloat16")
        for k, dtype in enumerate(dtypes):
            log = StepLog()
            engine = start(dtype, log)
            print(
                f"machine: {platform.machine()} {torch.get_num_threads()} threads, "
                f"device {engine.device}, dtype {dtype}, model {model}"
            )
            mixed = mixed_scenario(
                engine, model, args.mixed_max_tokens, args.repeat, args.long_tokens, log
            )
            engine.close()
            print(
                f"mixed {dtype:<13} short only {mixed['short_tok_s']:.1f} tok/s, 28 short + "
                f"4 long {mixed['mixed_tok_s']:.1f} tok/s (x{mixed['mixed_over_short']}), "
                f"short requests among them {mixed['short_in_mixed_tok_s']:.1f} tok/s "
                f"(x{mixed['short_in_mixed_over_short']}); short TPOT p50 "
                f"{mixed['mixed_short_tpot_p50_ms']}ms p99 "
                f"{mixed['mixed_short_tpot_p99_ms']}ms; "
                f"KV {mixed['kv_bytes_per_cached_token']} bytes/cached token"
            )
            print(
                f"mixed {dtype:<13} floor: the long prompts' prefill (one causal forward "
                f"each) {mixed['long_prefill_floor_s']}s, then the last one's decodes "
                f"{mixed['long_decode_floor_s']}s: mixed_over_short cannot exceed "
                f"x{mixed['mixed_over_short_ceiling']} here"
            )
            if "mixed_steps" in mixed:
                print(
                    f"mixed {dtype:<13} {mixed['mixed_steps']} steps ({mixed['short_steps']} "
                    f"short only): {mixed['mixed_chunk_steps']} with long prompts' chunks "
                    f"{mixed['mixed_chunk_steps_s']}s, then {mixed['mixed_tail_steps']} "
                    f"decode-only {mixed['mixed_tail_s']}s"
                )
            if k == 0:
                summary.update(mixed, dtype=dtype, device=str(engine.device))
            else:
                summary.update({f"{dtype}_{key}": value for key, value in mixed.items()})
    if args.scenario == "mixed":
        print(json.dumps(summary))
        return
    engine = start(args.dtype)
    summary["device"] = str(engine.device)
    texts = prompts(args.requests)
    if args.scenario != "all":
        print(
            f"machine: {platform.machine()} {torch.get_num_threads()} threads, "
            f"device {engine.device}, dtype {args.dtype}, model {model}"
        )
    if args.scenario in ("all", "noisy"):
        try:
            from load.noisy_neighbour import in_process
        except ImportError:  # run as a script from load/
            from noisy_neighbour import in_process  # type: ignore[no-redef]

        noisy = in_process(engine)
        print(
            f"noisy neighbour     quiet p99 idle {noisy['noisy_neighbour_quiet_idle_p99_ms']}ms, "
            f"beside 48 long generations of another tenant "
            f"{noisy['noisy_neighbour_quiet_p99_ms']}ms "
            f"(x{noisy['noisy_neighbour_quiet_p99_ratio']}); noisy tenant "
            f"{noisy['noisy_neighbour_noisy_tok_s']} tok/s"
        )
        summary.update(noisy)
    if args.scenario == "noisy":
        engine.close()
        print(json.dumps(summary))
        return
    hf = median_run(args.repeat, lambda: hf_sequential(engine, texts, args.max_tokens))
    print(
        f"hf_sequential       {hf['tok_s']:8.1f} tok/s  p50 {hf['p50_s']:.3f}s  "
        f"p99 {hf['p99_s']:.3f}s"
    )
    static = median_run(args.repeat, lambda: static_batch(engine, texts, args.max_tokens))
    print(f"static_batch@{args.requests:<3}    {static['tok_s']:8.1f} tok/s  (ceiling)")
    runs = {}
    for c in (1, 8, 32):

        def one_run(c: int = c) -> dict[str, Any]:
            clear_prefix_cache(engine)
            return engine_run(engine, texts, args.max_tokens, c, args.stagger_ms / 1000)

        r = median_run(args.repeat, one_run)
        runs[c] = r
        print(
            f"engine@{c:<3}          {r['tok_s']:8.1f} tok/s  p50 {r['p50_s']:.3f}s  "
            f"p99 {r['p99_s']:.3f}s  ttft p50 {r['ttft_p50_s'] * 1000:.1f}ms "
            f"p99 {r['ttft_p99_s'] * 1000:.1f}ms"
        )
    clear_prefix_cache(engine)
    prefix = prefix_cache_ttft(engine)
    print(
        f"prefix cache        ttft turn1 {prefix['ttft_turn1_s'] * 1000:.1f}ms  "
        f"turn5 {prefix['ttft_turn5_s'] * 1000:.1f}ms "
        f"({int(prefix['prompt_tokens_last_turn'])} prompt tokens)"
    )
    if args.structured:
        try:
            from load.bench_structured import compare
        except ImportError:  # run as a script: load/ itself is on sys.path
            from bench_structured import compare  # type: ignore[no-redef]

        structured = compare(engine, 2 * args.requests, args.max_tokens, args.repeat)
        summary.update(structured)
        print(
            f"structured@32       free {structured['free_tok_s_at_32']:.1f} tok/s  half "
            f"constrained {structured['half_constrained_tok_s_at_32']:.1f} tok/s  ratio "
            f"{structured['constrained_ratio']:.3f}"
        )
    engine.close()
    summary |= {
        "hf_sequential_tok_s": round(hf["tok_s"], 1),
        "static_batch_tok_s": round(static["tok_s"], 1),
        "engine_tok_s_at_1": round(runs[1]["tok_s"], 1),
        "engine_tok_s_at_8": round(runs[8]["tok_s"], 1),
        "engine_tok_s_at_32": round(runs[32]["tok_s"], 1),
        "speedup_at_32": round(runs[32]["tok_s"] / hf["tok_s"], 2),
        "efficiency_vs_static": round(runs[32]["tok_s"] / static["tok_s"], 3),
        "p50_s_at_32": round(runs[32]["p50_s"], 3),
        "p99_s_at_32": round(runs[32]["p99_s"], 3),
        "ttft_p50_ms_at_32": round(runs[32]["ttft_p50_s"] * 1000, 1),
        "prefix_ttft_turn1_ms": round(prefix["ttft_turn1_s"] * 1000, 1),
        "prefix_ttft_turn5_ms": round(prefix["ttft_turn5_s"] * 1000, 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
