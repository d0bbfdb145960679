"""Noisy neighbour: one tenant saturates a model with long generations while another
sends short chats. The quiet tenant's p99 latency under that load is compared with its
p99 on an idle model (goal: within 3x), and the noisy tenant's throughput shows that it
still gets the rest of the capacity.

Two forms, same shape:

* ``in_process(engine)``: the engine alone (``bench_engine.py --scenario noisy``);
* ``through_gateway(url, headers_for)``: the whole stack over HTTP (``make bench``,
  ``summary.json``'s ``noisy_neighbour_*``).

The noisy tenant keeps ``noisy_concurrency`` generations of ``noisy_max_tokens`` in flight
and ``noisy_backlog`` more waiting; the quiet tenant sends ``quiet_requests`` chats one
after the other, each with ``quiet_max_tokens``.

    python -m load.noisy_neighbour [--model .models/demo-glm]    # in-process
"""

from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time
from collections.abc import Callable
from typing import Any

QUIET_TENANT, NOISY_TENANT = "quiet", "noisy"
QUIET_MESSAGES = [{"role": "user", "content": "Say one word."}]
NOISY_MESSAGES = [{"role": "user", "content": "Write a very long story about threads."}]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def summarise(
    idle: list[float], loaded: list[float], noisy_tokens: int, seconds: float, errors: int
) -> dict[str, Any]:
    idle_p99, loaded_p99 = pct(idle, 0.99), pct(loaded, 0.99)
    return {
        "noisy_neighbour_quiet_idle_p50_ms": round(pct(idle, 0.5) * 1000, 1),
        "noisy_neighbour_quiet_idle_p99_ms": round(idle_p99 * 1000, 1),
        "noisy_neighbour_quiet_p50_ms": round(pct(loaded, 0.5) * 1000, 1),
        "noisy_neighbour_quiet_p99_ms": round(loaded_p99 * 1000, 1),
        "noisy_neighbour_quiet_p99_ratio": round(loaded_p99 / idle_p99, 2) if idle_p99 else None,
        "noisy_neighbour_quiet_errors": errors,
        "noisy_neighbour_noisy_tok_s": round(noisy_tokens / seconds, 1) if seconds else 0.0,
    }


def in_process(
    engine: Any,
    *,
    quiet_requests: int = 30,
    quiet_max_tokens: int = 8,
    noisy_concurrency: int = 24,
    noisy_backlog: int = 24,
    noisy_max_tokens: int = 4032,
    quiet_timeout_s: float = 5.0,
) -> dict[str, Any]:
    from autoglm.core.errors import AutoGLMError
    from autoglm.core.schemas import ChatMessage, GenerateRequest, SamplingParams

    # Engines from before fair share (the baseline) know no tenant.
    tenanted = "tenant" in GenerateRequest.model_fields

    def chat(tenant: str, messages: list[dict[str, str]], max_tokens: int) -> GenerateRequest:
        return GenerateRequest(
            messages=[ChatMessage(**m) for m in messages],  # type: ignore[arg-type]
            sampling=SamplingParams(max_tokens=max_tokens, temperature=0),
            **({"tenant": tenant} if tenanted else {}),
        )

    def quiet_round() -> tuple[list[float], int]:
        latencies, errors = [], 0
        for _ in range(quiet_requests):
            t0 = time.perf_counter()
            try:
                engine.generate(
                    chat(QUIET_TENANT, QUIET_MESSAGES, quiet_max_tokens), timeout=quiet_timeout_s
                )
            except AutoGLMError:
                errors += 1
            latencies.append(time.perf_counter() - t0)
        return latencies, errors

    quiet_round()  # warm-up
    idle, _ = quiet_round()
    t0 = time.perf_counter()
    noisy = [
        engine.submit(chat(NOISY_TENANT, NOISY_MESSAGES, noisy_max_tokens))
        for _ in range(noisy_concurrency + noisy_backlog)
    ]
    time.sleep(2.0)  # the noisy tenant is decoding at full batch
    loaded, errors = quiet_round()
    for handle in noisy:
        handle.cancel()
    # Every noisy generation ends cancelled: its tokens are what the tenant got.
    tokens = 0
    for handle in noisy:
        # An engine without fair share may time it out instead.
        with contextlib.suppress(AutoGLMError):
            tokens += handle.result(60).completion_tokens
    seconds = time.perf_counter() - t0
    return summarise(idle, loaded, tokens, seconds, errors)


def through_gateway(
    url: str,
    headers_for: Callable[[str], dict[str, str]],
    *,
    quiet_requests: int = 30,
    quiet_max_tokens: int = 8,
    noisy_concurrency: int = 24,
    noisy_max_tokens: int = 256,
    settle_s: float = 3.0,
) -> dict[str, Any]:
    """The same through the gateway. Noisy clients loop (each sends its next long
    completion when the last returns) until the quiet tenant is done; then they stop
    sending and their last generations finish."""
    import httpx

    body = {"model": "demo-glm", "temperature": 0}
    quiet_body = {**body, "messages": QUIET_MESSAGES, "max_tokens": quiet_max_tokens}
    noisy_body = {**body, "messages": NOISY_MESSAGES, "max_tokens": noisy_max_tokens}

    def quiet_round(client: httpx.Client) -> tuple[list[float], int]:
        latencies, errors = [], 0
        for _ in range(quiet_requests):
            t0 = time.perf_counter()
            resp = client.post("/v1/chat/completions", json=quiet_body)
            latencies.append(time.perf_counter() - t0)
            errors += resp.status_code != 200
        return latencies, errors

    stop = threading.Event()
    lock = threading.Lock()
    done: list[tuple[float, int]] = []  # (finished at, completion tokens)

    def noisy_client() -> None:
        with httpx.Client(base_url=url, headers=headers_for(NOISY_TENANT), timeout=600) as c:
            while not stop.is_set():
                resp = c.post("/v1/chat/completions", json=noisy_body)
                tokens = resp.json()["usage"]["completion_tokens"] if resp.is_success else 0
                with lock:
                    done.append((time.perf_counter(), tokens))

    with httpx.Client(base_url=url, headers=headers_for(QUIET_TENANT), timeout=60) as quiet:
        quiet_round(quiet)  # warm-up
        idle, _ = quiet_round(quiet)
        clients = [threading.Thread(target=noisy_client) for _ in range(noisy_concurrency)]
        for c in clients:
            c.start()
        time.sleep(settle_s)
        t0 = time.perf_counter()
        loaded, errors = quiet_round(quiet)
        t1 = time.perf_counter()
        stop.set()
        for c in clients:
            c.join(timeout=600)
    # Tokens of noisy generations that ended while the quiet tenant was measured: a
    # lower bound of what the noisy tenant got (those still running are not counted).
    tokens = sum(n for at, n in done if t0 <= at <= t1)
    return summarise(idle, loaded, tokens, t1 - t0, errors)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=".models/demo-glm")
    ap.add_argument("--quiet-requests", type=int, default=30)
    args = ap.parse_args()
    from autoglm.inference.engine import AutoGLMEngine

    engine = AutoGLMEngine(args.model)
    try:
        print(json.dumps(in_process(engine, quiet_requests=args.quiet_requests)))
    finally:
        engine.close()


if __name__ == "__main__":
    main()
