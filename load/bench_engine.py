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

    python load/bench_engine.py [--model .models/demo-glm] [--requests 32] [--max-tokens 64]
                                [--repeat 3]
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
        with torch.inference_mode():
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=lm.eos_token_ids,
                pad_token_id=0,
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
    with torch.inference_mode():
        out = lm.model.generate(
            **enc,
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=lm.eos_token_ids,
            pad_token_id=0,
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=".models/demo-glm")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--stagger-ms", type=float, default=5.0)
    ap.add_argument("--repeat", type=int, default=3, help="runs per setting; median reported")
    args = ap.parse_args()
    model = Path(args.model)
    if not (model / "config.json").is_file():
        from autoglm.models.demo import create_demo_model

        create_demo_model(model)
    engine = AutoGLMEngine(
        model, device_map=args.device, dtype=args.dtype, max_batch_size=max(32, args.requests)
    )
    texts = prompts(args.requests)
    engine.generate(GenerateRequest(prompt="warm up", sampling=SamplingParams(max_tokens=4)))
    print(
        f"machine: {platform.machine()} {torch.get_num_threads()} threads, "
        f"device {engine.device}, dtype {args.dtype}, model {model}"
    )
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
    engine.close()
    summary = {
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
        "device": str(engine.device),
        "dtype": args.dtype,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
