"""``make bench``: a fresh local stack (Redis, Vault, three apps, each behind its own
daprd, all on free 127.0.0.1 ports), the benchmarks below, and their results in
``load/results/``: ``summary.json``, ``summary.md`` and PNG charts.

1. Dapr overhead: the same 1-token generation through the in-process engine, through
   inference's daprd (service invocation) and through gateway + both daprds.
   ``dapr_overhead_p50_ms`` is the gateway's time less the in-process engine's at the
   inference app's torch threads (``in_process_app_threads``: the engine as the app runs
   it, so the key measures the path, not a thread count; before 2026-12-02 it was the
   engine at torch's default threads, kept as ``dapr_overhead_vs_default_engine_p50_ms``).
   The gateway's calls carry their own trace ids, and ``one_token_hops_ms``
   (``load/hops.py``) splits them hop by hop from the spans of the gateway, both daprds
   and inference; ``dapr_floor_hops_ms`` splits the floor's calls (benchmark 9) the same
   way from its two daprds' spans, like for like with the inference side's hops.
2. Batching: 32 completions in flight through the gateway against Hugging Face
   ``generate`` one at a time (in this process, same model, prompts, max_tokens).
3. Async jobs: 2,000 jobs through Redis pub/sub; completed, failed, duplicated results.
4. Autosave: chat throughput with sessions (state + snapshot per turn, archiver
   autosave) against the same chat without sessions.
5. Memory: RSS of each app and each daprd, idle and at its peak under load.
6. Latency and throughput against concurrency (chat, streamed and not) for the charts.
7. Noisy neighbour: one tenant keeps 24 long generations in flight while another sends
   short chats; the quiet tenant's p99 against its p99 on the idle stack
   (``noisy_neighbour_quiet_p99_ratio``, goal <= 3) and the noisy tenant's tokens/s.
8. HA (``load/bench_ha.py``): replicas behind HAProxy; requests failed during a rolling
   restart, time to route around a killed inference replica, jobs lost/duplicated.
9. The Dapr floor (issue 15): a trivial echo app (``load/echo_app.py``, the Dapr SDK's
   ``App`` like inference) behind its daprd, called through a second daprd the way the
   gateway calls inference, against a direct gRPC call to it; ``overhead_over_floor_p50``
   is our 1-token overhead (benchmark 1) over that floor. In the same rounds, the echo
   behind a bare Flask app on the gateway's server (``load/flask_forwarder.py``):
   ``bare_flask_over_floor_p50``, the least a Flask gateway costs over the floor.
10. Same workload, three servers (issue 15): 64 completions, 32 in flight, 32 tokens,
   greedy, through the gateway, through the in-process engine, and through
   ``transformers serve --continuous-batching`` (the peer; its FastAPI/uvicorn/accelerate
   live in ``.data/peers``, installed by ``make bench-peers``; absent, only that peer is
   skipped, with the reason printed). Every server is driven by the same client: threads
   with a kept-alive connection each (``completions``; httpx's async client before
   2026-12-02, ~1.9 ms of CPU per completion taken from the two cores the servers share).

Everything is bounded in count and time; the stack is stopped at the end.

    python -m load.bench [--jobs 2000] [--quick] [--only ha]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from tests.support.mesh import OwnMesh, start_mesh
from tests.support.otlp import OTLPReceiver
from tests.support.stack import AppUnderTest, start_app, start_backing

from autoglm.core import contracts
from autoglm.core.localhttp import LocalHTTP
from autoglm.core.schemas import ChatMessage, GenerateRequest, SamplingParams
from autoglm.devstack.layout import DATA_DIR, MODELS_DIR, REPO_ROOT
from autoglm.devstack.multiapp import AppEntry, launch
from autoglm.devstack.processes import ManagedProcess, free_port, port_open
from autoglm.devstack.sidecars import SidecarPorts
from autoglm.inference.__main__ import engine_threads
from autoglm.models.demo import init_demo_models
from load import bench_ha, echo_app, flask_forwarder, hops, loadgen, noisy_neighbour
from load.bench_engine import clear_prefix_cache, engine_run, hf_sequential, prompts

RESULTS = REPO_ROOT / "load" / "results"
#: Rounds of the autosave benchmark (``autosave_runs``; 2 with ``--quick``).
AUTOSAVE_ROUNDS = 8
TENANT = "bench"
MESSAGES = [{"role": "user", "content": "Say one word."}]
#: Where ``make bench-peers`` installs what ``transformers serve`` needs beyond our venv.
PEERS = DATA_DIR / "peers"
PEER_MODULES = ("fastapi", "starlette", "uvicorn", "accelerate")


@dataclass(frozen=True)
class Workload:
    """The side-by-side workload of issue 15 (the same for every server)."""

    requests: int = 64
    concurrency: int = 32
    max_tokens: int = 32

    def texts(self) -> list[str]:
        return prompts(self.requests)

    @staticmethod
    def warmup_texts(n: int = 8) -> list[str]:
        # Not the timed prompts: nobody's prefix cache may hold those beforehand.
        return [f"Warm-up request {i}: say something about the weather." for i in range(n)]


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    import torch

    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gib": round(mem_kb / 2**20, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


# -- memory --------------------------------------------------------------------------
def group_rss_mb(pgid: int) -> float:
    """Resident memory of every process in the group (gunicorn workers included)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ...
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return round(total / 2**20, 1)


def processes(mesh: OwnMesh) -> dict[str, ManagedProcess]:
    procs: dict[str, ManagedProcess] = {}
    for app in (mesh.gateway, mesh.inference, mesh.archiver):
        assert app.app is not None
        procs[app.app_id] = app.app
        procs[f"daprd-{app.app_id}"] = app.sidecar
    return procs


class PeakRSS:
    """Samples every process group's RSS in a thread; keeps the maximum of each."""

    def __init__(self, procs: dict[str, ManagedProcess], every_s: float = 0.5) -> None:
        self.procs = procs
        self.every_s = every_s
        self.peak = dict.fromkeys(procs, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, proc in self.procs.items():
                self.peak[name] = max(self.peak[name], group_rss_mb(proc.pid))

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# -- measurements ----------------------------------------------------------------------
def timed(n: int, call: Callable[[], None]) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def ms(values: list[float]) -> dict[str, float]:
    return loadgen.percentiles(values)


def one_token_request() -> GenerateRequest:
    """The engine request of the 1-token chat (what the gateway sends inference)."""
    return GenerateRequest(
        messages=[ChatMessage(role="user", content=MESSAGES[0]["content"])],
        sampling=SamplingParams(max_tokens=1, temperature=0),
    )


def in_process_engine(model: Path, num_threads: int | None = None) -> Any:
    """The in-process engine the mesh is compared with; kept alive while the stack runs,
    so that its measurements alternate with the stack's (same moment, same noise).
    ``num_threads``: torch's threads for its compute (None: torch's default, a thread per
    core)."""
    from autoglm.inference.engine import AutoGLMEngine

    engine = AutoGLMEngine(model, max_batch_size=32, num_threads=num_threads)
    timed(5, lambda: engine.generate(one_token_request()))  # warm-up
    engine_run(engine, Workload.warmup_texts(), 32, 32, 0.0)
    return engine


def one_token_paths(
    engines: dict[str, Any], mesh: OwnMesh, n: int
) -> tuple[dict[str, list[float]], dict[str, tuple[int, int]]]:
    """1-token latency, ``n`` rounds, each round once through every path in turn: the
    in-process engines (``engines``: name -> engine, each path named ``in_process`` plus
    the name's suffix), the gateway (HTTP, two daprds, inference), and the Dapr floor's
    echo app through two daprds, directly over gRPC, and behind a bare Flask app on the
    gateway's server (``bare_flask_path``). The gateway is called with the
    same lean HTTP client (``LocalHTTP``) that the floor's caller uses to reach its daprd,
    so neither side of the comparison carries a heavier client than the other. Also
    returns each gateway call's trace id -> (sent, received) in ns, for ``load.hops``."""
    through, direct, raw, caller = echo_paths(mesh)
    # Up for these rounds only: the throughput runs after them see the stack alone.
    forwarder = ExitStack()
    mesh.stack.callback(forwarder.close)  # if a round fails
    forward = bare_flask_path(mesh, caller, forwarder)
    req = one_token_request()
    body = {"model": "demo-glm", "messages": MESSAGES, "max_tokens": 1, "temperature": 0}
    host, port = mesh.gateway_url.removeprefix("http://").rsplit(":", 1)
    client = LocalHTTP(host, int(port), timeout=30, headers=mesh.headers(TENANT))
    traced: dict[str, tuple[int, int]] = {}

    def gateway() -> None:
        trace_id, parent = hops.traceparent()
        sent = time.time_ns()
        url = "/v1/chat/completions"
        resp = client.request("POST", url, json=body, headers={"traceparent": parent})
        traced[trace_id] = (sent, time.time_ns())
        assert resp.status_code == 200, resp.text

    calls: dict[str, Callable[[], None]] = {
        f"in_process{name.removeprefix('engine')}": (lambda e=engine: e.generate(req))
        for name, engine in engines.items()
    }
    calls.update(
        gateway=gateway,
        echo_through_two_daprds=lambda: through(),
        echo_direct_grpc=lambda: direct(raw),
        echo_through_bare_flask=forward,
    )
    paths: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(n + 10):
        if i == 10:  # warm-up rounds done
            traced.clear()
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            if i >= 10:
                paths[name].append(time.perf_counter() - t0)
    direct.close()
    client.close()
    forwarder.close()
    return paths, traced


def traced_hops(
    mesh: OwnMesh, traced: dict[str, tuple[int, int]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``load.hops`` of the traced 1-token gateway calls, once their spans arrived (the
    apps and daprds export in batches, every few seconds), and of the floor's calls
    through two daprds (``hops.floor_hop_ms``: the same hops, like for like)."""
    deadline = time.monotonic() + 15
    while True:
        with mesh.backing.otlp.lock:
            spans = list(mesh.backing.otlp.spans)
        table = hops.hop_ms(spans, traced)
        if table["requests"]["traced"] >= 0.9 * len(traced) or time.monotonic() > deadline:
            return table, hops.floor_hop_ms(spans)
        time.sleep(1)


def paired_ms(slow: list[float], fast: list[float]) -> dict[str, float]:
    """Percentiles of ``slow[i] - fast[i]`` (measured in the same round), in ms."""
    return loadgen.percentiles([a - b for a, b in zip(slow, fast, strict=True)])


def via_sidecar(mesh: OwnMesh, n: int) -> list[float]:
    url = f"{mesh.gateway.dapr_url}/v1.0/invoke/inference/method/generate"
    body = {"messages": MESSAGES, "sampling": {"max_tokens": 1, "temperature": 0}}
    with httpx.Client(timeout=30, headers=mesh.gateway.dapr_headers) as client:

        def call() -> None:
            client.post(url, json=body).raise_for_status()

        timed(5, call)
        return timed(n, call)


def scenario(mesh: OwnMesh, name: str, *argv: str) -> dict[str, Any]:
    token = mesh.headers(TENANT)["Authorization"].removeprefix("Bearer ")
    args = loadgen.parser().parse_args(
        ["--url", mesh.gateway_url, "--token", token, "--tenant", TENANT, "--scenario", name, *argv]
    )
    result = asyncio.run(loadgen.run(args)).to_json()
    say(
        f"{name} {' '.join(argv)}: {result['ok']}/{result['requests']} ok, "
        f"{result['throughput_rps']} req/s, p50 {result['latency_ms'].get('p50')} ms"
    )
    return result


def completions(
    url: str,
    headers: dict[str, str],
    model: str,
    texts: list[str],
    max_tokens: int,
    concurrency: int,
) -> dict[str, Any]:
    """``/v1/completions`` of ``texts``, ``concurrency`` in flight, greedy (any
    OpenAI-compatible server: the gateway or a peer).

    ``concurrency`` threads, each with one kept-alive connection (``LocalHTTP``), take
    the next text until none is left. The client shares the machine's two cores with the
    server it measures, so its CPU is taken from that server: httpx's async client spent
    ~1.9 ms of CPU per completion here, this one a fraction of it (the same for every
    server: the gateway and the peer alike; since 2026-12-02)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    samples: list[loadgen.Sample] = []
    todo = iter(range(len(texts)))
    lock = threading.Lock()

    def worker() -> None:
        client = LocalHTTP(host, int(port), timeout=300, headers=headers)
        try:
            while True:
                with lock:
                    i = next(todo, None)
                if i is None:
                    return
                body = {"model": model, "prompt": texts[i], "max_tokens": max_tokens}
                body["temperature"] = 0
                t0 = time.perf_counter()
                try:
                    resp = client.request(
                        "POST", "/v1/completions", json={**body, "temperature": 0}
                    )
                except httpx.HTTPError:
                    # Refused / reset / timed out: counted, not raised (status 0).
                    samples.append(loadgen.Sample(0, time.perf_counter() - t0))
                    continue
                ok = resp.status_code == 200
                tokens = resp.json()["usage"]["completion_tokens"] if ok else 0
                samples.append(
                    loadgen.Sample(resp.status_code, time.perf_counter() - t0, tokens=tokens)
                )
        finally:
            client.close()

    seconds = loadgen.run_threads(concurrency, worker)
    return loadgen.report("completions", concurrency, samples, seconds).to_json()


def batching(mesh: OwnMesh, max_tokens: int) -> dict[str, Any]:
    """32 ``/v1/completions`` in flight, the prompts of ``bench_engine.py``."""
    return completions(
        mesh.gateway_url, mesh.headers(TENANT), "demo-glm", prompts(32), max_tokens, 32
    )


def same_workload(url: str, headers: dict[str, str], model: str, work: Workload) -> dict[str, Any]:
    """``work`` against one server, after a warm-up of other prompts."""
    completions(url, headers, model, work.warmup_texts(), work.max_tokens, work.concurrency)
    return completions(url, headers, model, work.texts(), work.max_tokens, work.concurrency)


def three_servers(
    engines: dict[str, Any],
    mesh: OwnMesh,
    peer_url: str | None,
    model: Path,
    work: Workload,
    rounds: int,
) -> dict[str, list[dict[str, Any]]]:
    """``work`` through the in-process engines (by name), the gateway and the peer (if it
    runs), in turn, ``rounds`` times after a warm-up of each, so that all of them see the
    machine alike: the stack is up (idle) for every one of them."""
    url, headers = mesh.gateway_url, mesh.headers(TENANT)
    warm = work.warmup_texts()
    completions(url, headers, "demo-glm", warm, work.max_tokens, work.concurrency)
    if peer_url is not None:
        completions(peer_url, {}, str(model), warm, work.max_tokens, work.concurrency)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    runs.update(gateway=[], peer=[])
    # No prefix cache starts with these prompts (the servers' cannot be cleared from
    # here, so none is cleared between rounds).
    for engine in engines.values():
        clear_prefix_cache(engine)
    texts = work.texts()
    for _ in range(rounds):
        for name, engine in engines.items():
            runs[name].append(engine_run(engine, texts, work.max_tokens, work.concurrency, 0.0))
        runs["gateway"].append(
            completions(url, headers, "demo-glm", texts, work.max_tokens, work.concurrency)
        )
        if peer_url is not None:
            runs["peer"].append(
                completions(peer_url, {}, str(model), texts, work.max_tokens, work.concurrency)
            )
    return runs


def start_hf_serve(model: Path, logs: Path, st: ExitStack) -> str | None:
    """Start ``transformers serve --continuous-batching`` on ``model`` (stopped by
    ``st``) and return its URL; None (with the reason printed) when its serving
    dependencies are not installed."""
    missing = [m for m in PEER_MODULES if not (PEERS / m).is_dir()]
    if missing:
        say(
            f"SKIPPED peer transformers serve: {', '.join(missing)} not in {PEERS} "
            "(run `make bench-peers`; `make bench` does)"
        )
        return None
    port = free_port()
    # KV cache sized for the workload: 32 sequences of at most ~30 + 32 tokens need ~64
    # blocks of 32 tokens; 128 leave room. Its batch is a static tensor of
    # ``max_batch_tokens`` rows whatever the step holds; 128 still decodes all 32 at
    # once (load/RESULTS.md has what other budgets gave).
    argv = [str(Path(sys.executable).parent / "transformers"), "serve", str(model)]
    argv += ["--continuous-batching", "--device", "cpu", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--cb-block-size", "32", "--cb-num-blocks", "128"]
    argv += ["--cb-max-batch-tokens", "128", "--log-level", "warning"]
    path = os.pathsep.join(p for p in (str(PEERS), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1"}
    proc = ManagedProcess("hf-serve", argv, logs / "hf-serve.log", env=env, cwd=REPO_ROOT)
    proc.start()
    st.callback(proc.stop)
    url = f"http://127.0.0.1:{port}"
    proc.wait_until(
        lambda: port_open(port) and httpx.get(f"{url}/health", timeout=2).status_code == 200,
        300,
        "transformers serve /health",
    )
    return url


def echo_resiliency(resources: Path) -> None:
    """The resiliency policy of calls to inference, for the floor's calls to the echo
    app: ``components/resiliency.yaml`` is scoped to the mesh's apps, so without this
    copy the floor's daprds would call with no timeout, retry or circuit breaker at all,
    a lighter configuration than the path it is the floor of."""
    doc = yaml.safe_load((REPO_ROOT / "components" / "resiliency.yaml").read_text())
    doc["metadata"]["name"] = f"{doc['metadata']['name']}-echo"
    doc["scopes"] = ["echo-caller", "echo"]
    doc["spec"]["targets"] = {"apps": {"echo": doc["spec"]["targets"]["apps"]["inference"]}}
    (resources / "resiliency-echo.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def echo_paths(mesh: OwnMesh) -> tuple[Callable[[], None], Any, bytes, AppUnderTest]:
    """The Dapr floor's two calls of the echo app: through a second daprd with
    ``Sidecar`` (as the gateway calls inference), and directly over gRPC (with the body
    it takes), and that second daprd. Both daprds run on this stack's backing: same
    components, configuration, tracing, mTLS through its Sentry, API tokens; the echo
    daprd gets an access list of the same shape as inference's (deny by default, the
    caller allowed ``echo``)."""
    backing, st = mesh.backing, mesh.stack
    echo_resiliency(backing.resources)
    caller = start_app(backing, st, "echo-caller", None)
    doc = yaml.safe_load(backing.config.read_text())
    doc["metadata"]["name"] = f"{doc['metadata']['name']}-echo"
    doc["spec"]["accessControl"] = {
        "defaultAction": "deny",
        "trustDomain": contracts.TRUST_DOMAIN,
        "policies": [
            {
                "appId": "echo-caller",
                "namespace": contracts.NAMESPACE,
                "trustDomain": contracts.TRUST_DOMAIN,
                "defaultAction": "deny",
                "operations": [{"name": "/echo", "httpVerb": ["*"], "action": "allow"}],
            }
        ],
    }
    config = backing.workdir / "dapr" / "config-echo.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    app_port = free_port()
    entry = AppEntry(
        "echo",
        app_port,
        "grpc",
        SidecarPorts.allocate(),
        [sys.executable, "-m", "load.echo_app"],
        env={"PYTHONUNBUFFERED": "1"},
    )
    started: list[ManagedProcess] = []
    logs = backing.workdir / "logs"
    try:
        launch(
            entry, backing.resources, config, logs, REPO_ROOT, backing.creds, backing.sentry,
            app_log=logs / "echo.log", started=started,
        )  # fmt: skip
    finally:
        for proc in started:
            st.callback(proc.stop)
    # The body of the 1-token generation the gateway sends inference.
    body = one_token_request().model_dump(mode="json")
    raw = json.dumps(body).encode()
    sidecar = caller.client()
    st.callback(sidecar.close)

    def through() -> None:
        assert sidecar.invoke("echo", echo_app.METHOD, body) == body

    direct = echo_app.direct_caller(app_port, backing.creds.app_token("echo"))
    return through, direct, raw, caller


def bare_flask_path(mesh: OwnMesh, caller: AppUnderTest, st: ExitStack) -> Callable[[], None]:
    """The floor's echo behind a bare Flask app on the gateway's server
    (``load/flask_forwarder.py``), which calls through the floor's caller daprd with the
    gateway's client: the least a Flask gateway adds to the floor. ``st`` stops it."""
    port = free_port()
    env = {
        **os.environ,
        "AUTOGLM_GATEWAY_PORT": str(port),
        "DAPR_HTTP_PORT": str(caller.ports.http),
        "DAPR_API_TOKEN": caller.dapr_headers["dapr-api-token"],
        "PYTHONUNBUFFERED": "1",
    }
    logs = mesh.backing.workdir / "logs"
    argv = [sys.executable, "-m", "load.flask_forwarder"]
    log = logs / "flask-forwarder.log"
    proc = ManagedProcess("flask-forwarder", argv, log, env=env, cwd=REPO_ROOT)
    proc.start()
    st.callback(proc.stop)
    proc.wait_until(lambda: port_open(port), 60, "the bare Flask forwarder")
    client = LocalHTTP("127.0.0.1", port, timeout=30)
    st.callback(client.close)
    body = one_token_request().model_dump(mode="json")

    def forward() -> None:
        resp = client.request("POST", flask_forwarder.ROUTE, json=body)
        assert resp.status_code == 200 and resp.json() == body, resp.text

    return forward


def snapshot_events(port: int) -> float:
    """Snapshot events the archiver has taken (every outcome but ``retry``)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("autoglm_archiver_events_total{")
        and 'topic="snapshot"' in line
        and 'outcome="retry"' not in line
    )


def snapshot_rate(port: int, since: float, base: float) -> dict[str, float]:
    """Snapshot events the archiver took per second, from the first turn until it had
    taken the last of them (waits up to 20 s for it to drain)."""
    last, last_t = snapshot_events(port), time.perf_counter()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(1)
        now = snapshot_events(port)
        if now == last:
            break
        last, last_t = now, time.perf_counter()
    events = last - base
    return {"snapshot_events": events, "snapshots_per_s": round(events / (last_t - since), 2)}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def same_workload_keys(
    gateway_runs: list[dict[str, Any]],
    engine_runs: list[dict[str, Any]],
    peer_runs: list[dict[str, Any]],
    app_thread_runs: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Issue 15's side-by-side keys (mean tok/s and p50 of the alternating rounds); the
    peer's are None when it was skipped. ``path_efficiency`` is the gateway over the
    in-process engine at torch's default threads; ``path_efficiency_app_threads`` over
    the in-process engine at the inference app's thread count (``app_thread_runs``), the
    same engine configuration on both sides of the path."""
    gw_tok_s = round(mean([r["tokens_per_s"] for r in gateway_runs]), 1)
    gw_p50 = round(mean([r["latency_ms"]["p50"] for r in gateway_runs]), 1)
    engine_tok_s = mean([r["tok_s"] for r in engine_runs])
    keys: dict[str, Any] = {
        "gateway_tok_s_same_workload": gw_tok_s,
        "gateway_p50_ms_same_workload": gw_p50,
        "in_process_tok_s_same_workload": round(engine_tok_s, 1),
        "in_process_p50_ms_same_workload": round(mean([r["p50_s"] for r in engine_runs]) * 1000, 1),
        "path_efficiency": round(gw_tok_s / engine_tok_s, 3),
        "peer_hf_serve_tok_s": None,
        "peer_hf_serve_p50_ms": None,
        "gateway_over_hf_serve": None,
        "gateway_p50_over_hf_serve_p50": None,
    }
    peer_tok_s = mean([r["tokens_per_s"] for r in peer_runs]) if peer_runs else 0.0
    if peer_tok_s:
        peer_p50 = mean([r["latency_ms"]["p50"] for r in peer_runs])
        keys["peer_hf_serve_tok_s"] = round(peer_tok_s, 1)
        keys["peer_hf_serve_p50_ms"] = round(peer_p50, 1)
        keys["peer_hf_serve_errors"] = sum(sum(r["errors"].values()) for r in peer_runs) or None
        keys["gateway_over_hf_serve"] = round(gw_tok_s / peer_tok_s, 3)
        keys["gateway_p50_over_hf_serve_p50"] = round(gw_p50 / peer_p50, 3)
    if app_thread_runs:
        app_tok_s = mean([r["tok_s"] for r in app_thread_runs])
        keys["in_process_app_threads_tok_s_same_workload"] = round(app_tok_s, 1)
        keys["in_process_app_threads_p50_ms_same_workload"] = round(
            mean([r["p50_s"] for r in app_thread_runs]) * 1000, 1
        )
        keys["path_efficiency_app_threads"] = round(gw_tok_s / app_tok_s, 3)
    return keys


def rss_keys(idle: dict[str, float], mesh: OwnMesh) -> dict[str, Any]:
    """Gateway idle RSS (goal <= 150 MB) and inference RSS per model it has loaded."""
    models = httpx.get(
        f"{mesh.gateway_url}/v1/models", headers=mesh.headers(TENANT), timeout=30
    ).json()["data"]
    return {
        "gateway_idle_rss_mb": idle["gateway"],
        "inference_idle_rss_mb": idle["inference"],
        "inference_loaded_models": len(models),
        "inference_rss_mb_per_loaded_model": round(idle["inference"] / max(len(models), 1), 1),
    }


def autosave_runs(mesh: OwnMesh, archiver_metrics: int, rounds: int) -> dict[str, Any]:
    """Chat with sessions (state write, snapshot per turn, archiver autosave) against the
    same conversations without sessions (``chat-history``: the client sends the history)
    and against one-message chats, ``rounds`` times, same concurrency and count.

    ``autosave_overhead_pct`` compares the first two (the same prompts reach the engine:
    what is measured is keeping the session; goal <= 5) as the median of each round's
    own ratio: the two runs of a round are back to back, in turn sessions first and
    chat-history first, so that a change of load on the shared machine between rounds
    (or within one) moves both sides of a ratio alike instead of the whole figure. The
    request rates are medians too; ``autosave_overhead_pct_rounds`` lists the ratios."""
    names = ("chat", "chat-history", "sessions")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    snaps: list[float] = []
    for i in range(rounds):
        pair = ("chat-history", "sessions") if i % 2 == 0 else ("sessions", "chat-history")
        for name in ("chat", *pair):
            base = snapshot_events(archiver_metrics)
            t0 = time.perf_counter()
            runs[name].append(scenario(mesh, name, "--concurrency", "8", "--requests", "96"))
            if name == "sessions":
                # Also waits for the archiver to take the run's last snapshot events, so
                # that they are not delivered during the next run.
                snaps.append(snapshot_rate(archiver_metrics, t0, base)["snapshots_per_s"])
    return {
        "keys": autosave_keys(runs, snaps),
        "plain": runs["chat-history"][-1],
        "sessions": runs["sessions"][-1],
    }


def autosave_keys(runs: dict[str, list[dict[str, Any]]], snaps: list[float]) -> dict[str, Any]:
    """``autosave_runs``' keys from its runs (one of each scenario per round, in round
    order): overheads are medians of the rounds' own ratios, rates medians of the runs."""
    rps = {name: [r["throughput_rps"] for r in rs] for name, rs in runs.items()}

    def overhead(against: str) -> list[float]:
        return [(1 - s / a) * 100 for s, a in zip(rps["sessions"], rps[against], strict=True)]

    rounds = overhead("chat-history")
    return {
        "snapshots_per_s": round(statistics.median(snaps), 2),
        "chat_rps_without_sessions": round(statistics.median(rps["chat-history"]), 2),
        "chat_rps_with_autosave": round(statistics.median(rps["sessions"]), 2),
        "autosave_overhead_pct": round(statistics.median(rounds), 1),
        "autosave_overhead_pct_rounds": [round(r, 1) for r in rounds],
        "chat_rps_short_messages": round(statistics.median(rps["chat"]), 2),
        "autosave_overhead_vs_short_chat_pct": round(statistics.median(overhead("chat")), 1),
    }


@contextmanager
def stack(workdir: Path, models: Path, archiver_metrics: int) -> Iterator[OwnMesh]:
    with ExitStack() as st:
        otlp = OTLPReceiver().start()
        st.callback(otlp.stop)
        public_key = init_demo_models(models)
        backing = start_backing(workdir, st, public_key, otlp)
        yield start_mesh(
            backing,
            st,
            models,
            # Rate limits off: the bench measures the serving path, not the limiter (the
            # gevent gateway serves every client's request at once).
            gateway={"AUTOGLM_GATEWAY_RATE_LIMIT_REQUESTS_PER_MIN": "0"},
            archiver={"AUTOGLM_ARCHIVER_METRICS_PORT": str(archiver_metrics)},
        )


# -- report ----------------------------------------------------------------------------
def charts(sweep: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, runs in sweep.items():
        conc = [r["concurrency"] for r in runs]
        for q, style in (("p50", "-o"), ("p99", "--x")):
            ax.plot(conc, [r["latency_ms"][q] for r in runs], style, label=f"{label} {q}")
        ttft = [r["ttft_ms"]["p50"] for r in runs if r.get("ttft_ms")]
        if len(ttft) == len(conc):
            ax.plot(conc, ttft, ":s", label=f"{label} TTFT p50")
    ax.set(xlabel="concurrent clients", ylabel="latency (ms)", xscale="log", yscale="log")
    ax.set_xticks(conc, [str(c) for c in conc])
    ax.set_title("Gateway latency against concurrency")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_concurrency.png", dpi=110)
    names.append("latency_vs_concurrency.png")
    fig, (tok, req) = plt.subplots(1, 2, figsize=(10, 4.5))
    for label, runs in sweep.items():
        conc = [r["concurrency"] for r in runs]
        tok.plot(conc, [r["tokens_per_s"] for r in runs], "-o", label=label)
        req.plot(conc, [r["throughput_rps"] for r in runs], "-o", label=label)
    for ax, unit in ((tok, "generated tokens/s"), (req, "requests/s")):
        ax.set(xlabel="concurrent clients", ylabel=unit, xscale="log")
        ax.set_xticks(conc, [str(c) for c in conc])
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.suptitle("Gateway throughput against concurrency")
    fig.tight_layout()
    fig.savefig(out / "throughput_vs_concurrency.png", dpi=110)
    names.append("throughput_vs_concurrency.png")
    plt.close("all")
    return names


def markdown(summary: dict[str, Any], sweep: dict[str, list[dict[str, Any]]]) -> str:
    m = summary["machine"]
    lines = [
        "# make bench",
        "",
        f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, "
        f"GPU {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}; {m['date']}.",
        "",
        "| metric | value |",
        "|---|---:|",
    ]
    for key, value in summary.items():
        if not isinstance(value, dict):
            lines.append(f"| `{key}` | {value} |")
    lines += ["", "| app | RSS idle (MB) | RSS peak under load (MB) |", "|---|---:|---:|"]
    for name, idle in summary["rss_mb"]["idle"].items():
        lines.append(f"| {name} | {idle} | {summary['rss_mb']['load'][name]} |")
    lines += [
        "",
        "| scenario | clients | req/s | tokens/s | p50 ms | p95 ms | p99 ms | TTFT p50 ms "
        "| errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, runs in sweep.items():
        for r in runs:
            lat, ttft = r["latency_ms"], r.get("ttft_ms") or {}
            lines.append(
                f"| {label} | {r['concurrency']} | {r['throughput_rps']} | {r['tokens_per_s']} "
                f"| {lat.get('p50')} | {lat.get('p95')} | {lat.get('p99')} "
                f"| {ttft.get('p50', '')} | {r['errors'] or ''} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--samples", type=int, default=100, help="1-token calls per path")
    ap.add_argument("--max-tokens", type=int, default=64, help="batching comparison")
    ap.add_argument("--quick", action="store_true", help="small counts, to try the bench")
    ap.add_argument(
        "--only",
        choices=["ha", "path"],
        help="only this scenario (path: issue 15's keys: floor, peer, autosave, RSS)",
    )
    args = ap.parse_args()
    if args.only == "ha":
        ha = bench_ha.run(Path(tempfile.mkdtemp(prefix="autoglm-bench-ha-")))
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ha.json").write_text(json.dumps(ha, indent=2) + "\n")
        print(json.dumps({k: v for k, v in ha.items() if not isinstance(v, dict)}))
        return
    levels = [1, 4, 8, 16, 32]
    if args.quick:
        args.jobs, args.samples, levels = 100, 20, [1, 8]
    RESULTS.mkdir(parents=True, exist_ok=True)
    # Logs of the stack stay here when a run fails; removed after a good one.
    workdir = Path(tempfile.mkdtemp(prefix="autoglm-bench-"))
    say(f"work dir {workdir}")
    model = MODELS_DIR / "demo-glm"
    init_demo_models(MODELS_DIR)
    work = Workload()
    say(f"in-process engine and HF generate ({model})")
    engine = in_process_engine(model)
    st = ExitStack()
    st.callback(engine.close)
    # The same engine at the thread count the inference app runs with (cores minus one
    # unless AUTOGLM_INFERENCE_NUM_THREADS says otherwise; the stack inherits this env).
    app_threads = engine_threads(int(os.environ.get("AUTOGLM_INFERENCE_NUM_THREADS") or 0))
    app_engine = in_process_engine(model, app_threads)
    st.callback(app_engine.close)
    hf_tok_s = hf_sequential(engine, prompts(32), args.max_tokens)["tok_s"]
    say(f"peer: transformers serve --continuous-batching on {model}")
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    peer_url = start_hf_serve(model, workdir / "logs", st)
    archiver_metrics = free_port()
    summary: dict[str, Any] = {}
    sweep: dict[str, list[dict[str, Any]]] = {"chat": [], "chat-stream": []}
    with st, stack(workdir, MODELS_DIR, archiver_metrics) as mesh:
        procs = processes(mesh)
        time.sleep(3)  # let start-up settle before the idle sample
        idle = {name: group_rss_mb(p.pid) for name, p in procs.items()}
        say("stack up; 1-token latency through the sidecar")
        sidecar = via_sidecar(mesh, args.samples)
        say("1-token latency in process, through the gateway and the Dapr floor, in turn")
        one, traced = one_token_paths(
            {"engine": engine, "engine_app_threads": app_engine}, mesh, args.samples
        )
        one_token_hops, floor_hops = traced_hops(mesh, traced)
        say(f"same workload, in process, through the gateway and the peer in turn: {work}")
        engines = {"engine": engine, "engine_app_threads": app_engine}
        same = three_servers(engines, mesh, peer_url, model, work, rounds=2)
        st.close()  # the peer and the engine: not needed any more
        with PeakRSS(procs) as peak:
            say("autosave: chat without and with sessions, alternately")
            autosave = autosave_runs(
                mesh, archiver_metrics, rounds=2 if args.quick else AUTOSAVE_ROUNDS
            )
            if args.only != "path":
                say("batching: 32 completions in flight through the gateway")
                batch = batching(mesh, args.max_tokens)
                for c in levels:
                    for name in sweep:
                        n = str(max(16, 3 * c))
                        argv = ("--concurrency", str(c), "--requests", n, "--max-tokens", "16")
                        sweep[name].append(scenario(mesh, name, *argv))
                uploads = scenario(mesh, "attachments", "--concurrency", "4", "--requests", "40")
                say(f"{args.jobs} async jobs through pub/sub")
                # The jobs scenario counts duplicate results in this stack's Redis.
                os.environ["AUTOGLM_REDIS_PASSWORD"] = mesh.backing.creds.redis_password
                jobs = scenario(
                    mesh,
                    "jobs",
                    "--concurrency",
                    "16",
                    "--requests",
                    str(args.jobs),
                    "--max-tokens",
                    "4",
                    "--duration",
                    "400",
                    "--redis-port",
                    str(mesh.backing.redis_port),
                )
        # Against the engine as the inference app runs it (its torch threads): the path,
        # not a thread count. The default engine's difference stays as ``..._vs_default``.
        overhead = paired_ms(one["gateway"], one["in_process_app_threads"])
        overhead_default = paired_ms(one["gateway"], one["in_process"])
        floor = paired_ms(one["echo_through_two_daprds"], one["echo_direct_grpc"])
        bare = loadgen.percentiles(one["echo_through_bare_flask"])
        summary = {
            # Percentiles of per-round differences (the paths were called in turn).
            "dapr_overhead_p50_ms": round(overhead["p50"], 2),
            "dapr_overhead_p99_ms": round(overhead["p99"], 2),
            "dapr_overhead_vs_default_engine_p50_ms": round(overhead_default["p50"], 2),
            "dapr_floor_p50_ms": round(floor["p50"], 2),
            "dapr_floor_p99_ms": round(floor["p99"], 2),
            "overhead_over_floor_p50": round(overhead["p50"] / max(floor["p50"], 1e-3), 2),
            # The least a Flask gateway adds (``load/flask_forwarder.py``): all its time.
            "bare_flask_p50_ms": round(bare["p50"], 2),
            "bare_flask_over_floor_p50": round(bare["p50"] / max(floor["p50"], 1e-3), 2),
            "one_token_ms": {
                "inference_sidecar": ms(sidecar),
                **{name: ms(values) for name, values in one.items()},
            },
            "one_token_hops_ms": one_token_hops,
            "dapr_floor_hops_ms": floor_hops,
            **same_workload_keys(
                same["gateway"], same["engine"], same["peer"], same["engine_app_threads"]
            ),
            "inference_torch_threads": app_threads,
            "hf_sequential_tok_s": round(hf_tok_s, 1),
            **autosave["keys"],
            **rss_keys(idle, mesh),
            "rss_mb": {"idle": idle, "load": peak.peak},
            "scenarios": {
                "same_workload_gateway": same["gateway"],
                "same_workload_in_process": same["engine"],
                "same_workload_in_process_app_threads": same["engine_app_threads"],
                "same_workload_hf_serve": same["peer"],
                "chat_without_sessions": autosave["plain"],
                "chat_with_sessions": autosave["sessions"],
            },
            "machine": machine(),
        }
        if args.only != "path":
            say("noisy neighbour: 24 long generations of one tenant, short chats of another")
            noisy = noisy_neighbour.through_gateway(
                mesh.gateway_url, mesh.headers, quiet_requests=10 if args.quick else 30
            )
            say(f"noisy neighbour: {noisy}")
            summary.update(noisy)
            summary.update(
                {
                    "batching_speedup_at_32": round(batch["tokens_per_s"] / hf_tok_s, 2),
                    "gateway_tok_s_at_32": batch["tokens_per_s"],
                    "async_submitted": jobs["extra"]["submitted"],
                    "async_completed": jobs["extra"]["completed"],
                    "async_failed": jobs["extra"]["failed"],
                    "async_duplicates": jobs["extra"]["duplicated"],
                    "async_jobs_per_s": jobs["extra"]["jobs_per_s"],
                    "attachments_per_s": uploads["throughput_rps"],
                    "attachment_p99_ms": uploads["latency_ms"].get("p99"),
                }
            )
            summary["scenarios"].update(batching=batch, attachments=uploads, jobs=jobs)
    if args.only == "path":
        (RESULTS / "path.json").write_text(json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(workdir, ignore_errors=True)
        say(f"wrote {RESULTS}/path.json")
        print(json.dumps({k: v for k, v in summary.items() if not isinstance(v, dict)}))
        return
    say("ha: replicas behind HAProxy, a killed inference replica, a rolling restart")
    summary.update(bench_ha.run(workdir / "ha"))
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    (RESULTS / "summary.md").write_text(markdown(summary, sweep))
    pngs = charts(sweep, RESULTS)
    shutil.rmtree(workdir, ignore_errors=True)
    say(f"wrote {RESULTS}/summary.json, summary.md, sweep.json, {', '.join(pngs)}")
    headline = {k: v for k, v in summary.items() if not isinstance(v, dict)}
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
