"""High availability with replicas on one machine: two gateways behind HAProxy, two
inference replicas, one archiver, each replica with its own real daprd (Dapr
self-hosted spreads invocations over same-app-id replicas by name resolution; the
consumer group shares pub/sub deliveries).

The tests share one stack and run in file order; each one that kills a replica starts
it again before it ends, so the next one starts from a whole stack. Loads are small
(max_tokens <= 8, a few threads) and every wait is bounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest

from tests.chaos.conftest import NO_LIMITS, chat_body
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
from tests.support.polling import wait_for
from tests.support.stack import start_backing

TENANT = "ha"
#: Deliveries a dead replica held are handed to the survivor after this (the dev
#: default is 150 s, sized for long generations; these jobs take well under a second).
PROCESSING_TIMEOUT = "15s"


@pytest.fixture(scope="module")
def ha(
    tmp_path_factory: pytest.TempPathFactory, signing_public_key: bytes, models_dir: Path
) -> Iterator[HAMesh]:
    with ExitStack() as stack:
        otlp = OTLPReceiver().start()
        stack.callback(otlp.stop)
        backing = start_backing(
            tmp_path_factory.mktemp("ha"),
            stack,
            signing_public_key,
            otlp,
            pubsub_metadata={"processingTimeout": PROCESSING_TIMEOUT, "redeliverInterval": "2s"},
        )
        yield start_ha_mesh(
            backing,
            stack,
            models_dir,
            {"gateway": 2, "inference": 2, "archiver": 1},
            envs={"gateway": NO_LIMITS},
        )


def assert_jobs_exactly_once(mesh: HAMesh, jobs: list[str]) -> None:
    """Every accepted job completes, and no later result rewrites a completed one."""
    outcome = settle_jobs(mesh, TENANT, jobs)
    print(f"ha: jobs {outcome}")
    assert outcome["completed"] == outcome["accepted"] and outcome["rewritten"] == 0, outcome


def test_two_clients_alternate_turns_of_one_session_through_different_gateways(
    ha: HAMesh,
) -> None:
    """(4) Every turn lands or gets 409 (the session's ETag), none is lost."""
    headers = ha.headers(TENANT)
    sid = httpx.post(f"{ha.url}/v1/sessions", json={}, headers=headers, timeout=30).json()["id"]
    landed: list[tuple[str, int]] = []
    unexpected: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        with httpx.Client(base_url=ha.gateway_url(index), headers=headers, timeout=60) as c:
            for turn in range(6):
                text = f"client {index} turn {turn}"
                body = {**chat_body(text), "session_id": sid}
                # A 409 is the other client's turn landing first; a client resends its
                # turn (bounded), as a real one would. Session turns are serialized on
                # one actor, so without resending one client may lose every race.
                for _attempt in range(20):
                    resp = c.post("/v1/chat/completions", json=body)
                    if resp.status_code != 409:
                        break
                if resp.status_code not in (200, 409):
                    unexpected.append(f"{resp.status_code} {resp.text[:200]}")
                if resp.status_code == 200:
                    with lock:
                        landed.append((text, index))

    threads = [threading.Thread(target=client, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not unexpected, unexpected
    record = httpx.get(f"{ha.url}/v1/sessions/{sid}", headers=headers, timeout=30).json()
    users = [m["content"] for m in record["messages"] if m["role"] == "user"]
    assert sorted(users) == sorted(text for text, _ in landed), (users, landed)
    assert len(record["messages"]) == 2 * len(landed)
    assert {i for _, i in landed} == {0, 1}, "both gateways should have landed turns"


def test_session_turns_stay_on_the_replica_holding_the_session(ha: HAMesh) -> None:
    """Session affinity: each session's turns reach one inference replica (its actor's,
    placed by Dapr's placement service), so every turn after the first finds the
    session's earlier prompt in that replica's prefix cache."""
    with httpx.Client(base_url=ha.url, headers=ha.headers(TENANT), timeout=60) as c:
        for n in range(3):
            with PrefixCount(ha) as count:
                chat = MultiTurnChat(c, f"affinity {n}", session=True)
                assert [chat.turn().status_code for _ in range(4)] == [200] * 4
            looked_up = count.looked_up()
            print(f"\nha: session {n}: blocks looked up per replica {looked_up}")
            assert sorted(looked_up)[0] == 0 and sorted(looked_up)[1] > 0, looked_up
            assert (count.hit_rate() or 0) >= 0.6, count.delta


def test_session_moves_to_the_survivor_when_its_replica_dies(ha: HAMesh) -> None:
    """SIGKILL the replica holding a session: its next turns succeed (the gateway falls
    back to plain invocation while placement moves the actor), and once moved they
    stay on the survivor, finding their prefix there again."""
    with httpx.Client(base_url=ha.url, headers=ha.headers(TENANT), timeout=60) as c:
        chat = MultiTurnChat(c, "moving", session=True)
        with PrefixCount(ha) as count:
            assert [chat.turn().status_code for _ in range(2)] == [200] * 2
        holder = max(range(2), key=lambda i: count.looked_up()[i])
        ha.replicas["inference"][holder].kill()
        killed_at = time.monotonic()
        turns = []
        for _ in range(3):
            t0 = time.monotonic()
            resp = chat.turn()
            turns.append((resp.status_code, round(time.monotonic() - t0, 2)))
        print(f"\nha: turns after killing inference-{holder}: {turns}")
        assert all(status == 200 for status, _ in turns), turns
        assert all(took < 20 for _, took in turns), turns
        # Placement has dropped the dead replica by now (keepalive 1 s, timeout 2 s).
        time.sleep(max(0.0, killed_at + 5 - time.monotonic()))
        with PrefixCount(ha) as count:
            assert [chat.turn().status_code for _ in range(3)] == [200] * 3
        print(f"ha: on the survivor: {count.delta}")
        assert (count.hit_rate() or 0) >= 0.8, count.delta
    ha.restart("inference", holder)


def test_killed_inference_replica_is_routed_around(ha: HAMesh) -> None:
    """(1) SIGKILL one inference replica (app and sidecar, as a dying pod) under sync,
    stream and job load: calls in flight on it fail fast or are retried, nothing hangs,
    new calls reach the survivor within seconds, unfinished streams end with an error
    event, and every accepted job completes exactly once."""
    with Load(ha, TENANT) as load:
        time.sleep(4)
        killed_at = time.monotonic()
        ha.replicas["inference"][1].kill()
        time.sleep(12)
    failed = [o for o in load.outcomes if not ok(o)]
    assert all(o.end - o.start < 30 for o in load.outcomes), "a request hung"
    # Failures only around the kill, each a clear 503 or a stream's error event.
    assert all(o.status in (503, 599) for o in failed), failed
    late = [o for o in failed if o.start > killed_at + 5]
    assert not late, f"still failing 5 s after the kill: {late}"
    reroute = max((o.start - killed_at for o in failed if o.start >= killed_at), default=0.0)
    print(f"\nha: {len(failed)}/{len(load.outcomes)} failed; routed around in {reroute:.1f}s")
    assert sum(ok(o) for o in load.outcomes if o.start > killed_at + 5) > 10
    assert_jobs_exactly_once(ha, load.jobs)
    ha.restart("inference", 1)


def test_killed_gateway_replica_leaves_the_front_door(ha: HAMesh) -> None:
    """(3) SIGKILL one gateway replica: the front door marks it down within a health
    check interval or two, reads retried by the client succeed, and every session write
    that was acknowledged is in the session afterwards."""
    assert ha.frontdoor is not None
    headers = ha.headers(TENANT)
    sids = [
        httpx.post(f"{ha.url}/v1/sessions", json={}, headers=headers, timeout=30).json()["id"]
        for _ in range(2)
    ]
    acked: dict[str, list[str]] = {sid: [] for sid in sids}
    read_failures: list[str] = []
    stop = threading.Event()

    def writer(sid: str) -> None:
        with httpx.Client(base_url=ha.url, headers=headers, timeout=60) as c:
            turn = 0
            while not stop.is_set():
                turn += 1
                text = f"{sid} turn {turn}"
                try:
                    resp = c.post(
                        "/v1/chat/completions", json={**chat_body(text), "session_id": sid}
                    )
                except httpx.HTTPError:
                    continue  # not acknowledged; the client would retry
                if resp.status_code == 200:
                    acked[sid].append(text)

    def reader() -> None:
        with httpx.Client(base_url=ha.url, headers=headers, timeout=30) as c:
            while not stop.is_set():
                for attempt in range(3):
                    try:
                        if c.get(f"/v1/sessions/{sids[0]}").status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.2 * (attempt + 1))
                else:
                    read_failures.append("read failed after 3 tries")
                time.sleep(0.05)

    threads = [threading.Thread(target=writer, args=(s,)) for s in sids]
    threads.append(threading.Thread(target=reader))
    for t in threads:
        t.start()
    try:
        time.sleep(3)
        killed_at = time.monotonic()
        ha.replicas["gateway"][1].kill()
        wait_for(
            "front door marks gateway-1 down",
            lambda: (
                ha.frontdoor is not None
                and ha.frontdoor.stats()["gateway-1"]["status"].startswith("DOWN")
            ),
            timeout=5,
            every=0.1,
        )
        print(f"\nha: gateway-1 out of rotation after {time.monotonic() - killed_at:.1f}s")
        time.sleep(5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=90)
    assert not read_failures
    for sid, texts in acked.items():
        record = httpx.get(f"{ha.url}/v1/sessions/{sid}", headers=headers, timeout=30).json()
        users = [m["content"] for m in record["messages"] if m["role"] == "user"]
        assert [t for t in texts if t not in users] == [], "an acknowledged turn was lost"
    ha.restart("gateway", 1)


def test_rolling_restart_of_every_app_fails_no_request(ha: HAMesh) -> None:
    """(2) SIGTERM one replica at a time (inference, archiver, gateways), each back and
    ready before the next, under steady chat + stream + job load: zero failed
    requests. The drain: out of rotation first (name resolution, front door), the
    sidecar stops its subscriptions, calls in flight finish, then the process exits."""
    with Load(ha, TENANT) as load:
        time.sleep(2)
        t0 = time.monotonic()
        ha.rolling_restart()
        print(f"\nha: rolling restart of 5 replicas took {time.monotonic() - t0:.0f}s")
        time.sleep(2)
    failed = [o for o in load.outcomes if not ok(o)]
    print(f"ha: {len(failed)} of {len(load.outcomes)} requests failed during the restart")
    assert not failed, failed[:5]
    assert_jobs_exactly_once(ha, load.jobs)


def test_killed_archiver_loses_no_acknowledged_snapshot(ha: HAMesh) -> None:
    """(5) SIGKILL the archiver (the single writer) under autosave load and bring it
    back: the snapshot events it acknowledged were staged on disk first and are written
    after the restart; those it had not acknowledged are redelivered. Every session's
    last acknowledged turn ends up in the archive."""
    headers = ha.headers(TENANT)
    sids: list[str] = []
    stop = threading.Event()
    failures: list[str] = []

    def chat() -> None:
        """Sessions of six turns each (a session's history must fit the context)."""
        with httpx.Client(base_url=ha.url, headers=headers, timeout=60) as c:
            while not stop.is_set():
                sid = c.post("/v1/sessions", json={}).json()["id"]
                sids.append(sid)
                for turn in range(6):
                    body = {**chat_body(f"{sid} {turn}"), "session_id": sid}
                    resp = c.post("/v1/chat/completions", json=body)
                    if resp.status_code != 200:  # publishing needs only Redis
                        failures.append(resp.text[:200])

    threads = [threading.Thread(target=chat) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(4)
        ha.replicas["archiver"][0].kill()
        time.sleep(3)  # snapshot events pile up in Redis meanwhile
        ha.restart("archiver", 0)
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not failures, failures[:3]
    versions = {
        sid: httpx.get(f"{ha.url}/v1/sessions/{sid}", headers=headers, timeout=30).json()["version"]
        for sid in sids
    }

    def archived(sid: str) -> int:
        found = ha.archive_root.glob(f"sessions/*/{TENANT}/{sid}/*/metadata.json")
        return max((int(p.parent.name) for p in found), default=0)

    wait_for(
        "every session's last version archived",
        lambda: all(archived(s) == v for s, v in versions.items()),
        timeout=60,
        every=1,
    )
