"""Load generator for a running AutoGLM gateway (asyncio + httpx), 127.0.0.1 only.

Scenarios, each a closed loop of ``--concurrency`` workers, bounded by ``--requests``
and by ``--duration`` seconds, whichever comes first:

* ``chat``         — ``POST /v1/chat/completions``;
* ``chat-stream``  — the same with ``stream: true``; time to first token is the first
  content delta of the SSE stream;
* ``sessions``     — each worker opens a session and chats in it, so every turn loads and
  saves the session and publishes a snapshot for the archiver's autosave;
* ``attachments``  — resumable upload: declare, then ``PUT`` the chunks;
* ``jobs``         — submit ``--requests`` async jobs (``inference.requests`` →
  ``inference.results``), then poll until each is finished. With ``--redis-port`` the
  results topic (a Redis stream) is read back to count results published more than once.

It prints one JSON object: throughput, p50/p95/p99 latency, time to first token,
errors by status, and for jobs submitted / completed / failed / duplicated.

    python -m load.loadgen --url http://127.0.0.1:8080 --token "$(autoglm token ...)" \\
        --scenario chat-stream --concurrency 8 --requests 200 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx

SCENARIOS = ("chat", "chat-stream", "sessions", "chat-history", "attachments", "jobs")
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TOPICS = ["sockets", "threads", "queues", "logging", "paths", "json", "tests", "e-mail"]


@dataclass
class Sample:
    status: int
    latency_s: float
    ttft_s: float | None = None
    tokens: int = 0

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Report:
    scenario: str
    concurrency: int
    requests: int
    ok: int
    errors: dict[str, int]
    seconds: float
    throughput_rps: float
    tokens_per_s: float
    latency_ms: dict[str, float]
    ttft_ms: dict[str, float] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def percentiles(values: list[float]) -> dict[str, float]:
    """p50/p95/p99 in milliseconds (nearest rank), empty when there is nothing to rank."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50": rank(0.50), "p95": rank(0.95), "p99": rank(0.99)}


def report(
    scenario: str, concurrency: int, samples: list[Sample], seconds: float, **extra: Any
) -> Report:
    ok = [s for s in samples if s.ok]
    ttfts = [s.ttft_s for s in ok if s.ttft_s is not None]
    return Report(
        scenario=scenario,
        concurrency=concurrency,
        requests=len(samples),
        ok=len(ok),
        errors=dict(Counter(str(s.status) for s in samples if not s.ok)),
        seconds=round(seconds, 3),
        throughput_rps=round(len(ok) / seconds, 2) if seconds else 0.0,
        tokens_per_s=round(sum(s.tokens for s in ok) / seconds, 1) if seconds else 0.0,
        latency_ms=percentiles([s.latency_s for s in ok]),
        ttft_ms=percentiles(ttfts) or None,
        extra=extra,
    )


def chat_body(i: int, max_tokens: int, **more: Any) -> dict[str, Any]:
    topic = TOPICS[i % len(TOPICS)]
    return {
        "model": "demo-glm",
        "messages": [{"role": "user", "content": f"Explain {topic} in Python, part {i}."}],
        "max_tokens": max_tokens,
        "temperature": 0,
        **more,
    }


Worker = Callable[[httpx.AsyncClient, int], Awaitable[Sample]]


async def closed_loop(
    client: httpx.AsyncClient, concurrency: int, total: int, duration_s: float, one: Worker
) -> tuple[list[Sample], float]:
    """``concurrency`` workers take request numbers until ``total`` or the deadline."""
    samples: list[Sample] = []
    counter = iter(range(total))
    deadline = time.monotonic() + duration_s

    async def worker() -> None:
        for i in counter:
            if time.monotonic() >= deadline:
                return
            t0 = time.perf_counter()
            try:
                samples.append(await one(client, i))
            except httpx.HTTPError:
                # Connection refused / reset / timed out: counted, not raised (status 0).
                samples.append(Sample(0, time.perf_counter() - t0))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - start


def run_threads(count: int, target: Callable[[], None]) -> float:
    """Run ``target`` on ``count`` threads at once; the seconds until all have returned
    (a closed loop of blocking clients, each taking its next request from shared work)."""
    threads = [threading.Thread(target=target, daemon=True) for _ in range(count)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def chat_worker(max_tokens: int) -> Worker:
    async def one(client: httpx.AsyncClient, i: int) -> Sample:
        t0 = time.perf_counter()
        resp = await client.post("/v1/chat/completions", json=chat_body(i, max_tokens))
        latency = time.perf_counter() - t0
        tokens = resp.json()["usage"]["completion_tokens"] if resp.status_code == 200 else 0
        return Sample(resp.status_code, latency, tokens=tokens)

    return one


def stream_worker(max_tokens: int) -> Worker:
    async def one(client: httpx.AsyncClient, i: int) -> Sample:
        body = chat_body(i, max_tokens, stream=True, stream_options={"include_usage": True})
        t0 = time.perf_counter()
        ttft, tokens = None, 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return Sample(resp.status_code, time.perf_counter() - t0)
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if ttft is None and any(c["delta"].get("content") for c in chunk["choices"]):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        return Sample(200, time.perf_counter() - t0, ttft, tokens)

    return one


def session_worker(max_tokens: int, turns_per_session: int) -> Worker:
    """Each worker chats in its own session (one writer per session, so no 409s) and
    opens a new one every few turns: prompts stay short, so the comparison with ``chat``
    measures persistence, not prompt length."""
    current: dict[int, tuple[str, int]] = {}  # worker task -> (session id, turns so far)

    async def one(client: httpx.AsyncClient, i: int) -> Sample:
        worker = id(asyncio.current_task())
        t0 = time.perf_counter()
        session_id, turns = current.get(worker, ("", turns_per_session))
        if turns >= turns_per_session:
            created = await client.post("/v1/sessions", json={"messages": []})
            if created.status_code != 201:
                return Sample(created.status_code, time.perf_counter() - t0)
            session_id, turns = created.json()["id"], 0
        current[worker] = (session_id, turns + 1)
        resp = await client.post(
            "/v1/chat/completions", json=chat_body(i, max_tokens, session_id=session_id)
        )
        tokens = resp.json()["usage"]["completion_tokens"] if resp.status_code == 200 else 0
        return Sample(resp.status_code, time.perf_counter() - t0, tokens=tokens)

    return one


def history_worker(max_tokens: int, turns_per_session: int) -> Worker:
    """``sessions`` without sessions: each worker keeps its conversation itself and sends
    it whole every turn (a new one every few turns), so the engine sees the same prompts
    as in ``sessions`` and the difference between the two is what keeping the session in
    the mesh costs (state read and write, snapshot, archiver), not prompt length."""
    current: dict[int, tuple[list[dict[str, Any]], int]] = {}

    async def one(client: httpx.AsyncClient, i: int) -> Sample:
        worker = id(asyncio.current_task())
        t0 = time.perf_counter()
        history, turns = current.get(worker, ([], turns_per_session))
        if turns >= turns_per_session:
            history, turns = [], 0
        body = chat_body(i, max_tokens)
        body["messages"] = [*history, *body["messages"]]
        resp = await client.post("/v1/chat/completions", json=body)
        latency = time.perf_counter() - t0
        if resp.status_code != 200:
            return Sample(resp.status_code, latency)
        reply = resp.json()
        content = reply["choices"][0]["message"]["content"] or ""
        history = [*body["messages"], {"role": "assistant", "content": content}]
        current[worker] = (history, turns + 1)
        return Sample(200, latency, tokens=reply["usage"]["completion_tokens"])

    return one


def attachment_worker(size: int, chunk: int) -> Worker:
    async def one(client: httpx.AsyncClient, i: int) -> Sample:
        data = (f"attachment {i}\n".encode() * (size // 12 + 1))[:size]
        t0 = time.perf_counter()
        start = await client.post(
            "/v1/attachments",
            json={
                "filename": f"notes-{i}.txt",
                "mime_type": "text/plain",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            },
        )
        if start.status_code != 201:
            return Sample(start.status_code, time.perf_counter() - t0)
        upload_id = start.json()["id"]
        for offset in range(0, len(data), chunk):
            put = await client.put(
                f"/v1/attachments/{upload_id}",
                params={"offset": offset},
                content=data[offset : offset + chunk],
            )
            if put.status_code != 200:
                return Sample(put.status_code, time.perf_counter() - t0)
        return Sample(200, time.perf_counter() - t0)

    return one


def published_results(
    redis_port: int, topic: str = "inference.results", password: str | None = None
) -> Counter[str]:
    """How often each request id was published on ``topic`` (Dapr's Redis stream).
    The stack's Redis password: ``password`` or ``AUTOGLM_REDIS_PASSWORD``."""
    import redis

    counts: Counter[str] = Counter()
    secret = password or os.environ.get("AUTOGLM_REDIS_PASSWORD")
    conn = redis.Redis(host="127.0.0.1", port=redis_port, password=secret)
    try:
        last = "-"
        while True:
            entries = conn.xrange(topic, min=last, max="+", count=5000)
            if last != "-":
                entries = entries[1:]  # the boundary entry was counted in the last page
            if not entries:
                return counts
            for entry_id, fields in entries:
                event = json.loads(fields[b"data"])
                counts[event["data"]["request_id"]] += 1
                last = entry_id.decode()
    finally:
        conn.close()


async def run_jobs(
    client: httpx.AsyncClient,
    concurrency: int,
    total: int,
    duration_s: float,
    max_tokens: int,
    redis_port: int | None,
    tenant: str | None,
) -> Report:
    """Submit ``total`` jobs, then poll the unfinished ones until all are done or the
    deadline passes. Throughput is finished jobs over first submit to last finish."""
    accepted: list[str] = []

    async def submit(c: httpx.AsyncClient, i: int) -> Sample:
        t0 = time.perf_counter()
        resp = await c.post("/v1/jobs", json=chat_body(i, max_tokens))
        if resp.status_code == 202:
            accepted.append(resp.json()["id"])
        return Sample(resp.status_code, time.perf_counter() - t0)

    start = time.perf_counter()
    deadline = time.monotonic() + duration_s
    samples, submit_s = await closed_loop(client, concurrency, total, duration_s, submit)
    status: dict[str, str] = {}
    pending = list(accepted)
    last_finish = time.perf_counter()
    sem = asyncio.Semaphore(concurrency)

    async def poll(job_id: str) -> None:
        async with sem:
            resp = await client.get(f"/v1/jobs/{job_id}")
            if resp.status_code == 200:
                status[job_id] = resp.json()["status"]

    while pending and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        # Jobs finish roughly in submission order: polling only the oldest few keeps the
        # poller from loading the gateway more than the jobs themselves do.
        await asyncio.gather(*(poll(j) for j in pending[: concurrency * 4]), return_exceptions=True)
        still = [j for j in pending if status.get(j, "queued") == "queued"]
        if len(still) < len(pending):
            last_finish = time.perf_counter()
        pending = still
    finished = Counter(status.get(j, "queued") for j in accepted)
    duplicated = None
    if redis_port is not None and tenant is not None:
        counts = published_results(redis_port)
        duplicated = sum(1 for j in accepted if counts.get(f"{tenant}:{j}", 0) > 1)
    seconds = last_finish - start
    return report(
        "jobs",
        concurrency,
        samples,
        submit_s,
        submitted=len(accepted),
        completed=finished["completed"],
        failed=finished["failed"],
        unfinished=finished["queued"],
        duplicated=duplicated,
        jobs_per_s=round(finished["completed"] / seconds, 2) if seconds > 0 else 0.0,
    )


async def run(args: argparse.Namespace) -> Report:
    host = urlsplit(args.url).hostname or ""
    if host not in LOOPBACK:
        raise SystemExit(f"refusing to load {host!r}: this generator targets 127.0.0.1 only")
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    async with httpx.AsyncClient(
        base_url=args.url,
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=args.timeout,
        limits=limits,
    ) as client:
        if args.scenario == "jobs":
            return await run_jobs(
                client,
                args.concurrency,
                args.requests,
                args.duration,
                args.max_tokens,
                args.redis_port,
                args.tenant,
            )
        one = {
            "chat": lambda: chat_worker(args.max_tokens),
            "chat-stream": lambda: stream_worker(args.max_tokens),
            "sessions": lambda: session_worker(args.max_tokens, args.turns),
            "chat-history": lambda: history_worker(args.max_tokens, args.turns),
            "attachments": lambda: attachment_worker(args.attachment_bytes, args.chunk_bytes),
        }[args.scenario]()
        samples, seconds = await closed_loop(
            client, args.concurrency, args.requests, args.duration, one
        )
        return report(args.scenario, args.concurrency, samples, seconds)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--token", required=True, help="JWT (autoglm token --tenant T)")
    ap.add_argument("--tenant", help="the token's tenant (jobs: to match result ids)")
    ap.add_argument("--scenario", choices=SCENARIOS, default="chat")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="upper bound on requests")
    ap.add_argument("--duration", type=float, default=60.0, help="upper bound in seconds")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--timeout", type=float, default=120.0, help="per request, seconds")
    ap.add_argument("--turns", type=int, default=4, help="sessions: turns per session")
    ap.add_argument("--attachment-bytes", type=int, default=256 * 1024)
    ap.add_argument("--chunk-bytes", type=int, default=64 * 1024)
    ap.add_argument("--redis-port", type=int, help="jobs: count duplicate results")
    return ap


def main() -> None:
    print(json.dumps(asyncio.run(run(parser().parse_args())).to_json()))


if __name__ == "__main__":
    main()
