"""``make bench``'s ``ha`` scenario (also ``python -m load.bench_ha``): two gateways
behind HAProxy, two inference replicas, one archiver, each with its own daprd, under a
steady load of chats, streams and async jobs.

1. SIGKILL one inference replica (app and sidecar): requests failed, time until no
   request fails any more (``reroute_s``, goal <= 5 s), jobs lost / duplicated (0 / 0).
2. Rolling restart of every replica, one at a time (graceful drain): requests failed
   (goal 0), jobs lost / duplicated.
3. Prefix cache of multi-turn chats, same stack, both replicas up: the share of prompt
   blocks found in the engine's prefix cache (``autoglm_prefix_blocks_total``, summed
   over the replicas) when the turns are spread over the replicas at random (history
   sent by the client, plain service invocation), against session turns (the same
   prompts) sent to the session's actor, which Dapr's placement keeps on one replica.
"""

from __future__ import annotations

import json
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
from tests.support.ha import (
    HAMesh,
    Load,
    MultiTurnChat,
    PrefixCount,
    ok,
    settle_jobs,
    start_ha_mesh,
)
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


def prefix_hit_rate(
    mesh: HAMesh, *, session: bool, chats: int = 6, turns: int = 5
) -> dict[str, Any]:
    """``chats`` multi-turn chats, one after another; the prefix cache's hit rate over
    the blocks they looked up (both replicas summed): over all turns, and over the
    follow-up turns alone (a chat's first turn is cold wherever it lands, so only
    these can hit: their ceiling is about 1)."""
    failed = 0
    first_turns: list[PrefixCount] = []
    follow_ups: list[PrefixCount] = []
    with httpx.Client(base_url=mesh.url, headers=mesh.headers(TENANT), timeout=120) as c:
        for n in range(chats):
            chat = MultiTurnChat(c, f"{'s' if session else 'r'}{n}", session=session)
            with PrefixCount(mesh) as first:
                failed += chat.turn().status_code != 200
            with PrefixCount(mesh) as rest:
                failed += sum(chat.turn().status_code != 200 for _ in range(turns - 1))
            first_turns.append(first)
            follow_ups.append(rest)

    def rate(counts: list[PrefixCount]) -> float | None:
        hits = sum(h for count in counts for h, _ in count.delta)
        total = sum(sum(count.looked_up()) for count in counts)
        return round(hits / total, 3) if total else None

    per_replica = [
        sum(count.looked_up()[i] for count in first_turns + follow_ups)
        for i in range(len(mesh.replicas["inference"]))
    ]
    return {
        "blocks_looked_up": sum(per_replica),
        "blocks_looked_up_per_replica": per_replica,
        "failed": failed,
        "hit_rate": rate(first_turns + follow_ups),
        "hit_rate_follow_up_turns": rate(follow_ups),
    }


def prefix_affinity(mesh: HAMesh) -> dict[str, Any]:
    """The same multi-turn chats over two replicas: the history sent by the client
    (plain service invocation, turns at random), then kept in gateway sessions (each
    turn to the session's actor: the replica that holds its prefix)."""
    return {
        "random": prefix_hit_rate(mesh, session=False),
        "affinity": prefix_hit_rate(mesh, session=True),
    }


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
        "ha_prefix_hit_rate_random": prefix["random"]["hit_rate"],
        "ha_prefix_hit_rate_affinity": prefix["affinity"]["hit_rate"],
        "ha_prefix_hit_rate_follow_up_random": prefix["random"]["hit_rate_follow_up_turns"],
        "ha_prefix_hit_rate_follow_up_affinity": prefix["affinity"]["hit_rate_follow_up_turns"],
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
