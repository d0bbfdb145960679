"""A stack with several replicas of the stateless apps, started with the launcher's own
replica code (``autoglm.devstack.replicas``) and HAProxy in front of the gateways
(``autoglm.devstack.frontdoor``), for the HA chaos tests and ``make bench``'s ``ha``."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from autoglm.core.schemas import REQUESTS_TOPIC, RESULTS_TOPIC
from autoglm.devstack.frontdoor import GATEWAY_ENV, Backend, FrontDoor
from autoglm.devstack.multiapp import AppEntry
from autoglm.devstack.processes import free_port
from autoglm.devstack.replicas import Replica, build_replicas, rolling_restart
from autoglm.devstack.sidecars import DrainTimings, SidecarPorts
from tests.support.mesh import inference_env
from tests.support.polling import wait_for, wait_settled
from tests.support.stack import Backing, wait_http_ok
from tests.support.tokens import bearer

APPS = (("inference", "grpc"), ("archiver", "grpc"), ("gateway", "http"))


@dataclass
class HAMesh:
    backing: Backing
    replicas: dict[str, list[Replica]]
    frontdoor: FrontDoor | None
    #: The one URL clients use: the front door, or the only gateway.
    url: str
    archive_root: Path
    stack: ExitStack

    def headers(self, tenant: str = "acme", role: str = "user") -> dict[str, str]:
        return bearer(tenant, role, self.backing.secrets["jwt"])

    def gateway_url(self, index: int) -> str:
        """One gateway replica directly, bypassing the front door."""
        return f"http://127.0.0.1:{self.replicas['gateway'][index].app_port}"

    def restart(self, app_id: str, index: int) -> None:
        """Start a killed replica again on its ports (and back into the front door)."""
        replica = self.replicas[app_id][index]
        replica.stop(graceful=False)
        replica.start()
        if self.frontdoor is not None and app_id == "gateway":
            self.frontdoor.set_state(replica.name, "ready")
            self.frontdoor.wait_up(replica.name, 60)

    def rolling_restart(
        self, app_ids: tuple[str, ...] = ("inference", "archiver", "gateway")
    ) -> None:
        for app_id in app_ids:
            rolling_restart(self.replicas[app_id], self.frontdoor)


@dataclass
class Outcome:
    kind: str
    start: float
    end: float
    status: int  # HTTP status; 0: transport error; for streams 200 only with [DONE]
    detail: str = ""


@dataclass
class Load:
    """Sync chats, streams and job submissions in the background until stopped."""

    mesh: HAMesh
    tenant: str
    kinds: tuple[str, ...] = ("chat", "stream", "job")
    outcomes: list[Outcome] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for kind in self.kinds:
            t = threading.Thread(target=self._run, args=(kind,), daemon=True)
            t.start()
            self.threads.append(t)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client hung"

    def _run(self, kind: str) -> None:
        headers = self.mesh.headers(self.tenant)
        with httpx.Client(base_url=self.mesh.url, headers=headers, timeout=60) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                t0 = time.monotonic()
                try:
                    status, detail = getattr(self, f"_{kind}")(client, i)
                except httpx.HTTPError as exc:
                    status, detail = 0, repr(exc)
                self.outcomes.append(Outcome(kind, t0, time.monotonic(), status, detail))
                self.stop.wait(0.3 if kind == "job" else 0.05)

    def _chat(self, client: httpx.Client, i: int) -> tuple[int, str]:
        resp = client.post("/v1/chat/completions", json=_chat_body(f"chat {i}"))
        return resp.status_code, resp.text[:200] if resp.status_code != 200 else ""

    def _stream(self, client: httpx.Client, i: int) -> tuple[int, str]:
        body = {**_chat_body(f"stream {i}", max_tokens=8), "stream": True}
        events = []
        with client.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                return resp.status_code, resp.read().decode()[:200]
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
        if events and events[-1] == "[DONE]":
            return 200, ""
        errors = [e for e in events if e != "[DONE]" and "error" in json.loads(e)]
        # A stream that did not finish must say why: an error event, never a silent cut.
        return (599 if errors else 0), (errors[-1] if errors else f"cut after {len(events)}")

    def _job(self, client: httpx.Client, i: int) -> tuple[int, str]:
        resp = client.post("/v1/jobs", json=_chat_body(f"job {i}"))
        if resp.status_code == 202:
            self.jobs.append(resp.json()["id"])
        return resp.status_code, resp.text[:200] if resp.status_code != 202 else ""


def ok(o: Outcome) -> bool:
    return o.status in (200, 202)


def settle_jobs(mesh: HAMesh, tenant: str, jobs: list[str], timeout: float = 90) -> dict[str, int]:
    """Wait (bounded) until every job has finished and both topics are settled; count
    how they ended. ``lost``: not finished even then; ``duplicated``: result published
    more than once; ``rewritten``: a finished job's record changed afterwards."""
    from load.loadgen import published_results

    status: dict[str, str] = {}
    with httpx.Client(base_url=mesh.url, headers=mesh.headers(tenant), timeout=30) as c:

        def all_finished() -> bool:
            for job in jobs:
                if status.get(job, "queued") in ("queued", "running"):
                    with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                        status[job] = c.get(f"/v1/jobs/{job}").json()["status"]
            return all(status.get(j) not in (None, "queued", "running") for j in jobs)

        # Bounded: what has not finished by then is counted as lost below.
        with contextlib.suppress(AssertionError):
            wait_for("every job finished", all_finished, timeout, every=1)
        done = {j: c.get(f"/v1/jobs/{j}").json() for j in jobs if status.get(j) == "completed"}
        # No redelivery still to come: both topics delivered and acknowledged. Only then
        # is a job that has not finished lost, and a finished one safe from rewrites.
        conn = mesh.backing.redis_client()
        try:
            wait_settled(conn, REQUESTS_TOPIC, RESULTS_TOPIC, timeout=timeout)
        finally:
            conn.close()
        final = {job: c.get(f"/v1/jobs/{job}").json() for job in jobs}
        rewritten = sum(final[job] != record for job, record in done.items())
        status = {job: record["status"] for job, record in final.items()}
    published = published_results(
        mesh.backing.redis_port, password=mesh.backing.creds.redis_password
    )
    return {
        "accepted": len(jobs),
        "completed": sum(s == "completed" for s in status.values()),
        "failed": sum(s == "failed" for s in status.values()),
        "lost": sum(status.get(j) in (None, "queued", "running") for j in jobs),
        "duplicated": sum(published[f"{tenant}:{j}"] > 1 for j in jobs),
        "rewritten": rewritten,
    }


def prefix_blocks(replica: Replica) -> tuple[float, float]:
    """(hits, misses) of one inference replica's prefix cache so far
    (``autoglm_prefix_blocks_total``); (0, 0) for a replica that is not running."""
    hits = misses = 0.0
    if not replica.alive():
        return hits, misses
    port = replica.entry.env["AUTOGLM_INFERENCE_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("autoglm_prefix_blocks_total{"):
            value = float(line.rsplit(" ", 1)[1])
            if 'outcome="hit"' in line:
                hits += value
            elif 'outcome="miss"' in line:
                misses += value
    return hits, misses


@dataclass
class PrefixCount:
    """Prefix-cache lookups of each inference replica between ``start`` and ``stop``."""

    mesh: HAMesh
    before: list[tuple[float, float]] = field(default_factory=list)
    delta: list[tuple[float, float]] = field(default_factory=list)

    def __enter__(self) -> PrefixCount:
        self.before = [prefix_blocks(r) for r in self.mesh.replicas["inference"]]
        return self

    def __exit__(self, *_exc: object) -> None:
        after = [prefix_blocks(r) for r in self.mesh.replicas["inference"]]
        # A replica restarted meanwhile counts from zero again (one that is down at the
        # end counts nothing: what it did before it died is not known).
        self.delta = [
            (h1 - h0, m1 - m0) if h1 >= h0 and m1 >= m0 else (h1, m1)
            for (h0, m0), (h1, m1) in zip(self.before, after, strict=True)
        ]

    def looked_up(self) -> list[float]:
        """Blocks looked up on each replica (hits + misses)."""
        return [h + m for h, m in self.delta]

    def hit_rate(self) -> float | None:
        hits = sum(h for h, _ in self.delta)
        total = sum(self.looked_up())
        return round(hits / total, 3) if total else None


#: A system prompt long enough that every turn's prompt spans several KV blocks.
SYSTEM = " ".join(
    f"Rule {i}: answer briefly and stay on the topic of the question." for i in range(12)
)


class MultiTurnChat:
    """A chat whose every turn's prompt is the history so far. ``session``: the history
    is a gateway session (``session_id``: the turns go to the session's actor, so to
    one inference replica); else the client sends the history itself (the same
    prompts through plain service invocation: each turn to a replica at random)."""

    def __init__(self, client: httpx.Client, name: str, *, session: bool) -> None:
        self.client, self.name = client, name
        system = {"role": "system", "content": f"Chat {name}. {SYSTEM}"}
        self.history: list[dict[str, object]] = [system]
        self.session_id = (
            client.post("/v1/sessions", json={"messages": [system]}).json()["id"]
            if session
            else None
        )
        self.turns = 0

    def turn(self) -> httpx.Response:
        user = {"role": "user", "content": f"Question {self.turns} of chat {self.name}?"}
        self.turns += 1
        body: dict[str, object] = {
            "model": "demo-glm",
            "messages": [user] if self.session_id else [*self.history, user],
            "max_tokens": 8,
            "temperature": 0,
        }
        if self.session_id:
            body["session_id"] = self.session_id
        resp = self.client.post("/v1/chat/completions", json=body)
        if resp.status_code == 200:
            text = resp.json()["choices"][0]["message"]["content"]
            self.history += [user, {"role": "assistant", "content": text}]
        return resp


def _chat_body(content: str, max_tokens: int = 4) -> dict[str, object]:
    return {
        "model": "demo-glm",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def start_ha_mesh(
    backing: Backing,
    stack: ExitStack,
    models_dir: Path,
    counts: dict[str, int],
    *,
    envs: dict[str, dict[str, str]] | None = None,
    drain: DrainTimings | None = None,
    on_event: Callable[[str], None] | None = None,
) -> HAMesh:
    """Start ``counts`` replicas of each app (each with its daprd), HAProxy in front of
    the gateways when there are several; return once the one URL answers ``/readyz``."""
    envs = envs or {}
    root = backing.workdir / "archive"
    base_env = {
        "inference": inference_env(models_dir, free_port()),
        "archiver": {
            "AUTOGLM_ARCHIVER_ROOT": str(root),
            "AUTOGLM_ARCHIVER_METRICS_PORT": str(free_port()),
        },
        "gateway": dict(GATEWAY_ENV) if counts.get("gateway", 1) > 1 else {},
    }
    entries = []
    for app_id, protocol in APPS:
        app_port = free_port()
        entries.append(
            AppEntry(
                app_id,
                app_port,
                protocol,
                SidecarPorts.allocate(),
                [sys.executable, "-m", f"autoglm.{app_id}"],
                env={
                    "PYTHONUNBUFFERED": "1",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{backing.otlp.endpoint}",
                    f"AUTOGLM_{app_id.upper()}_PORT": str(app_port),
                    **base_env[app_id],
                    **envs.get(app_id, {}),
                },
            )
        )
    replicas = build_replicas(
        entries,
        counts,
        resources=backing.resources,
        config=backing.config,
        logs=backing.workdir / "logs",
        cwd=Path.cwd(),
        app_logs=True,
        drain=drain or DrainTimings(settle_s=2.0, grace_s=20.0),
        on_event=on_event,
        secrets=backing.creds,
        sentry=backing.sentry,
    )
    for reps in replicas.values():
        for replica in reps:
            stack.callback(replica.stop, graceful=False)
            replica.start()
    door = None
    gateways = replicas["gateway"]
    if len(gateways) > 1:
        door = FrontDoor(
            free_port(),
            [Backend(r.name, r.app_port or 0) for r in gateways],
            backing.workdir / "frontdoor",
            backing.workdir / "logs" / "frontdoor.log",
        )
        stack.callback(door.stop)
        door.start()
        url = door.url
    else:
        url = f"http://127.0.0.1:{gateways[0].app_port}"
    for r in gateways:
        assert r.app is not None
        wait_http_ok(f"http://127.0.0.1:{r.app_port}/readyz", r.app)
    if door is not None:
        for r in gateways:
            door.wait_up(r.name, 30)
    return HAMesh(backing, replicas, door, url, root, stack)
