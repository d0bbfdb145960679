"""``make bench``'s ``ha`` scenario (also ``python -m load.bench_ha``): two gateways
behind HAProxy, two inference replicas, one archiver, each with its own daprd, under a
steady load of chats, streams and async jobs.

1. SIGKILL one inference replica (app and sidecar): requests failed, time until no
   request fails any more (``reroute_s``, goal <= 5 s), jobs lost / duplicated (0 / 0).
2. Rolling restart of every replica, one at a time (graceful drain): requests failed
   (goal 0), jobs lost / duplicated.
3. Prefix cache of multi-turn chats: the share of prompt blocks found in the engine's
   prefix cache (``autoglm_prefix_blocks_total``, summed over the replicas) when a
   session's turns are spread over two inference replicas at random (what Dapr's
   service invocation does), against all of them reaching the replica that holds the
   session's prefix (one replica serving; what session affinity would give).
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from tests.support.ha import HAMesh, Load, ok, settle_jobs, start_ha_mesh
from tests.support.otlp import OTLPReceiver
from tests.support.stack import start_backing

from autoglm.devstack.layout import MODELS_DIR
from autoglm.models.demo import DEV_KEY_DIR, DEV_PUBLIC_KEY, init_demo_models

TENANT = "bench-ha"


def _failures(load: Load, since: float) -> dict[str, Any]:
    failed = [o for o in load.outcomes if not ok(o) and o.start >= since]
    by_status: dict[str, int] = {}
    for o in failed:
        by_status[str(o.status)] = by_status.get(str(o.status), 0) + 1
    return {
        "requests": sum(1 for o in load.outcomes if o.start >= since),
        "failed": len(failed),
        "failed_by_status": by_status,
        "max_latency_s": round(max((o.end - o.start for o in load.outcomes), default=0.0), 2),
    }


def kill_inference(mesh: HAMesh, settle_s: float = 12) -> dict[str, Any]:
    with Load(mesh, TENANT) as load:
        time.sleep(4)
        killed_at = time.monotonic()
        mesh.replicas["inference"][1].kill()
        time.sleep(settle_s)
    failed_after = [
        o.start - killed_at for o in load.outcomes if not ok(o) and o.start >= killed_at
    ]
    result = _failures(load, killed_at)
    result["reroute_s"] = round(max(failed_after, default=0.0), 2)
    result["jobs"] = settle_jobs(mesh, TENANT, load.jobs)
    mesh.restart("inference", 1)
    return result


def rolling_restart(mesh: HAMesh) -> dict[str, Any]:
    with Load(mesh, TENANT) as load:
        time.sleep(2)
        t0 = time.monotonic()
        mesh.rolling_restart()
        took = time.monotonic() - t0
        time.sleep(2)
    result = _failures(load, 0.0)
    result["restart_s"] = round(took, 1)
    result["jobs"] = settle_jobs(mesh, TENANT, load.jobs)
    return result


#: A system prompt long enough that every turn's prompt spans several KV blocks.
SYSTEM = " ".join(
    f"Rule {i}: answer briefly and stay on the topic of the question." for i in range(12)
)


def prefix_blocks(mesh: HAMesh) -> tuple[float, float]:
    """(hits, misses) of the prefix cache, summed over the running inference replicas."""
    hits = misses = 0.0
    for replica in mesh.replicas["inference"]:
        if not replica.alive():
            continue
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


def prefix_hit_rate(mesh: HAMesh, sessions: int = 6, turns: int = 5) -> dict[str, Any]:
    """Multi-turn chats (sessions, each turn's prompt = the history so far), then the
    prefix cache's hit rate over the blocks they looked up."""
    hits0, misses0 = prefix_blocks(mesh)
    headers = mesh.headers(TENANT)
    with httpx.Client(base_url=mesh.url, headers=headers, timeout=120) as c:
        for s in range(sessions):
            sid = c.post(
                "/v1/sessions",
                json={"messages": [{"role": "system", "content": f"Chat {s}. {SYSTEM}"}]},
            ).json()["id"]
            for t in range(turns):
                body = {
                    "model": "demo-glm",
                    "messages": [{"role": "user", "content": f"Question {t} of chat {s}?"}],
                    "max_tokens": 8,
                    "temperature": 0,
                    "session_id": sid,
                }
                resp = c.post("/v1/chat/completions", json=body)
                resp.raise_for_status()
    hits1, misses1 = prefix_blocks(mesh)
    hits, misses = hits1 - hits0, misses1 - misses0
    looked_up = hits + misses
    return {
        "blocks_looked_up": looked_up,
        "hit_rate": round(hits / looked_up, 3) if looked_up else None,
    }


def prefix_affinity(mesh: HAMesh) -> dict[str, Any]:
    """Hit rate with turns spread over both replicas, then with one replica holding every
    session (the other stopped gracefully, then started again)."""
    spread = prefix_hit_rate(mesh)
    mesh.replicas["inference"][1].stop()
    pinned = prefix_hit_rate(mesh)
    mesh.restart("inference", 1)
    return {"two_replicas_random": spread, "one_replica_holds_every_session": pinned}


def run(workdir: Path, models: Path = MODELS_DIR) -> dict[str, Any]:
    init_demo_models(models)
    public_key = (models / DEV_KEY_DIR / DEV_PUBLIC_KEY).read_bytes()
    with ExitStack() as stack:
        otlp = OTLPReceiver().start()
        stack.callback(otlp.stop)
        backing = start_backing(
            workdir,
            stack,
            public_key,
            otlp,
            pubsub_metadata={"processingTimeout": "15s", "redeliverInterval": "2s"},
        )
        mesh = start_ha_mesh(
            backing,
            stack,
            models,
            {"gateway": 2, "inference": 2, "archiver": 1},
            envs={"gateway": {"AUTOGLM_GATEWAY_RATE_LIMIT_REQUESTS_PER_MIN": "0"}},
        )
        prefix = prefix_affinity(mesh)
        killed = kill_inference(mesh)
        rolling = rolling_restart(mesh)
    return {
        "ha_prefix_hit_rate_random": prefix["two_replicas_random"]["hit_rate"],
        "ha_prefix_hit_rate_affine": prefix["one_replica_holds_every_session"]["hit_rate"],
        "ha_rolling_restart_failed": rolling["failed"],
        "ha_reroute_s": killed["reroute_s"],
        "ha_kill_failed": killed["failed"],
        "ha_jobs_lost": killed["jobs"]["lost"] + rolling["jobs"]["lost"],
        "ha_jobs_duplicated": killed["jobs"]["rewritten"] + rolling["jobs"]["rewritten"],
        "ha_results_published_twice": killed["jobs"]["duplicated"] + rolling["jobs"]["duplicated"],
        "ha": {"kill_inference": killed, "rolling_restart": rolling, "prefix_cache": prefix},
    }


def main() -> None:
    workdir = Path(tempfile.mkdtemp(prefix="autoglm-bench-ha-"))
    print(f"[bench-ha] work dir {workdir}", flush=True)
    print(json.dumps(run(workdir), indent=2))


if __name__ == "__main__":
    main()
