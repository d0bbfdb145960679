"""SIGKILL of the inference app under async and synchronous load."""

from __future__ import annotations

import time

import httpx
from load.loadgen import published_results

from tests.chaos.conftest import MeshFactory, chat_body
from tests.support.mesh import OwnMesh
from tests.support.polling import wait_for, wait_settled


def _submit(mesh: OwnMesh, client: httpx.Client, n: int) -> list[str]:
    ids = []
    for i in range(n):
        resp = client.post("/v1/jobs", json=chat_body(f"job {i}"))
        assert resp.status_code == 202, resp.text
        ids.append(resp.json()["id"])
    return ids


def _background(client: httpx.Client, n: int) -> list[str]:
    """Background Responses API requests: the same job path."""
    ids = []
    for i in range(n):
        body = {"model": "demo-glm", "input": f"r {i}", "background": True, "max_output_tokens": 4}
        resp = client.post("/v1/responses", json=body)
        assert resp.status_code == 200 and resp.json()["status"] == "queued", resp.text
        ids.append(resp.json()["id"])
    return ids


def test_killed_inference_completes_every_accepted_job_exactly_once(
    own_mesh: MeshFactory,
) -> None:
    """Proves: jobs accepted before and during an inference crash (SIGKILL, no shutdown
    hook) all complete once the app is back, exactly once: Redis keeps unacknowledged
    deliveries and daprd retries them (resiliency ``delivery``); a result published
    twice (a delivery in flight at the crash) does not rewrite the completed job, which
    the gateway guards with the job's status and ETag. While
    inference is down, synchronous calls fail fast with a clear 503, no hang. (The
    resiliency circuit breaker for ``inference`` stays closed here: daprd 1.18 forwards
    the callee sidecar's 503 as a response, which the breaker does not count as a
    failure; the fast failure comes from the refused app connection. load/RESULTS.md.)"""
    mesh = own_mesh()
    tenant = "chaos"
    with httpx.Client(base_url=mesh.gateway_url, headers=mesh.headers(tenant), timeout=30) as c:
        accepted = _submit(mesh, c, 20)
        responses = _background(c, 3)
        mesh.kill_inference()
        accepted += _submit(mesh, c, 20)  # publishing needs only Redis: still accepted
        responses += _background(c, 3)

        for _ in range(8):
            t0 = time.monotonic()
            resp = c.post("/v1/chat/completions", json=chat_body())
            assert resp.status_code == 503, resp.text
            assert time.monotonic() - t0 < 5, "a request during the outage hung"
            assert resp.json()["error"]["type"] == "server_error"

        mesh.restart_inference()
        status: dict[str, str] = {}

        def all_finished() -> bool:
            for job_id in accepted:
                if status.get(job_id, "queued") == "queued":
                    status[job_id] = c.get(f"/v1/jobs/{job_id}").json()["status"]
            return all(s != "queued" for s in status.values()) and len(status) == len(accepted)

        wait_for("every accepted job finished", all_finished, timeout=90, every=1)

        def responses_finished() -> bool:
            states = [c.get(f"/v1/responses/{rid}").json()["status"] for rid in responses]
            return all(s not in ("queued", "in_progress") for s in states)

        wait_for("every background response finished", responses_finished, timeout=60, every=1)
        assert set(status.values()) == {"completed"}, status
        # Results arrive at least once (a delivery in flight at the crash can be
        # published twice); completion is once: a job's record, once completed, is not
        # rewritten by a later duplicate result.
        published = published_results(
            mesh.backing.redis_port, password=mesh.backing.creds.redis_password
        )
        assert all(published[f"{tenant}:{job}"] >= 1 for job in accepted)
        first = {job: c.get(f"/v1/jobs/{job}").json() for job in accepted}
        # Settled topics: no redelivered request or duplicate result is still to come.
        wait_settled(mesh.backing.redis_client(), "inference.requests", "inference.results")
        assert {job: c.get(f"/v1/jobs/{job}").json() for job in accepted} == first
        # Background responses ride the same path: each completed, once.
        done = {rid: c.get(f"/v1/responses/{rid}").json() for rid in responses}
        assert {r["status"] for r in done.values()} <= {"completed", "incomplete"}, done
        assert all(r["usage"]["output_tokens"] >= 1 for r in done.values())
        # Synchronous calls work again by themselves.
        wait_for(
            "synchronous chat answers again",
            lambda: c.post("/v1/chat/completions", json=chat_body()).status_code == 200,
            timeout=45,
            every=2,
        )
