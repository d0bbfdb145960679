"""Constrained decoding's cost in the batched engine (``bench_engine.py --structured``).

32 requests in flight, half of them constrained by a JSON schema (llguidance masks
computed per sequence, overlapped with the forward pass), against the same 32 requests
all free. Every request runs to ``max_tokens`` (``ignore_eos`` for the free ones; the
schema is an unbounded array of integers, so the constrained ones never end early), so
both runs generate the same number of tokens (checked: the summary has both counts).
The goal is a ratio >= 0.9. Constrained outputs cut at max_tokens are prefixes of valid
documents; the schema check of complete ones runs in ``run``.

    python load/bench_structured.py [--model .models/demo-glm] [--requests 64]
                                    [--max-tokens 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import jsonschema

from autoglm.core.schemas import GenerateRequest
from autoglm.inference.engine import AutoGLMEngine

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 9999},
        "kind": {"enum": ["a", "b", "c"]},
        # At least 64 items: a constrained request cannot finish before max_tokens, so
        # both runs generate the same number of tokens.
        "values": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 999},
            "minItems": 64,
        },
    },
    "required": ["id", "kind", "values"],
    "additionalProperties": False,
}


def request(
    i: int, max_tokens: int, constrained: bool, temperature: float = 0.0
) -> GenerateRequest:
    sampling = {"max_tokens": max_tokens, "temperature": temperature, "seed": i}
    body: dict[str, Any] = {
        "prompt": f"Record {i}: describe item number {i} as JSON. ",
        "sampling": {**sampling, "ignore_eos": not constrained},
    }
    if constrained:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "record", "schema": SCHEMA},
        }
    return GenerateRequest.model_validate(body)


def run(
    engine: AutoGLMEngine,
    requests: int,
    max_tokens: int,
    concurrency: int,
    half: bool,
    temperature: float = 0.0,
) -> dict[str, Any]:
    """``concurrency`` clients; with ``half``, every other request is constrained."""
    todo = list(range(requests))
    lock = threading.Lock()
    tokens = [0]
    checked = [0]

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop(0)
            constrained = half and i % 2 == 0
            handle = engine.submit(request(i, max_tokens, constrained, temperature))
            result = engine.finish(handle, handle.result(600))
            if constrained and result.finish_reason == "stop":
                jsonschema.validate(json.loads(result.text), SCHEMA)
                checked[0] += 1
            with lock:
                tokens[0] += result.completion_tokens

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {"tok_s": tokens[0] / elapsed, "tokens": tokens[0], "seconds": elapsed}


def sampling_overhead(engine: AutoGLMEngine, rows: int = 32, steps: int = 64) -> dict[str, Any]:
    """The sampling call alone (no forward pass) for one step of ``rows`` greedy rows, all
    free or half constrained: the constraint's own cost, far less noisy than end-to-end
    throughput on a shared machine."""
    import torch

    from autoglm.inference.outputs import prepare
    from autoglm.inference.sampling import next_tokens

    loaded = engine.get(None)
    vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
    out: dict[str, Any] = {}
    for label, half in (("free", False), ("half_constrained", True)):
        reqs = [request(i, steps + 1, half and i % 2 == 0) for i in range(rows)]
        samplers = [
            prepare(loaded, r).sampler(r.sampling, None, set(loaded.eos_token_ids), [1])
            for r in reqs
        ]
        logits = torch.randn(steps, rows, vocab)
        start = time.perf_counter()
        for step in range(steps):
            next_tokens(samplers, logits[step])
        out[f"{label}_sampling_ms_per_step"] = round(
            (time.perf_counter() - start) / steps * 1000, 3
        )
    return out


def compare(
    engine: AutoGLMEngine,
    requests: int,
    max_tokens: int,
    repeat: int,
    concurrency: int = 32,
    temperature: float = 0.0,
) -> dict[str, Any]:
    """Median tok/s of free and half-constrained runs, interleaved so that machine
    noise hits both alike."""
    run(engine, concurrency, 8, concurrency, True)  # warm the grammar cache and pool
    free, mixed, tokens = [], [], set()
    for _ in range(repeat):
        for runs, half in ((free, False), (mixed, True)):
            result = run(engine, requests, max_tokens, concurrency, half, temperature)
            runs.append(result["tok_s"])
            tokens.add(result["tokens"])
    overhead = sampling_overhead(engine)
    free_tok_s = sorted(free)[len(free) // 2]
    mixed_tok_s = sorted(mixed)[len(mixed) // 2]
    return {
        "free_tok_s_at_32": round(free_tok_s, 1),
        "half_constrained_tok_s_at_32": round(mixed_tok_s, 1),
        "constrained_ratio": round(mixed_tok_s / free_tok_s, 3),
        "tokens_per_run": sorted(tokens),
        **overhead,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=".models/demo-glm")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    args = ap.parse_args()
    engine = AutoGLMEngine(
        Path(args.model), device_map=args.device, dtype=args.dtype, max_batch_size=32
    )
    try:
        summary = compare(
            engine, args.requests, args.max_tokens, args.repeat, temperature=args.temperature
        )
    finally:
        engine.close()
    summary.update(device=str(engine.device), dtype=args.dtype, temperature=args.temperature)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
