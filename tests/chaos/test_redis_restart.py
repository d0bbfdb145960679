"""Redis (state store and pub/sub) restarted under load."""

from __future__ import annotations

import time

import httpx

from autoglm.devstack.backing import start_redis
from tests.chaos.conftest import MeshFactory, chat_body
from tests.support.polling import wait_for


def test_redis_restart_gives_503_then_recovers_without_losing_acknowledged_writes(
    own_mesh: MeshFactory,
) -> None:
    """Proves: while Redis is down the gateway answers clear 503s (OpenAI-shaped, no
    hang past Dapr's state timeout and retries), it recovers by itself once Redis is
    back (no restart of any app or daprd), and every session turn that was answered
    200 before the outage is still there afterwards (Redis appendonly, as in dev)."""
    mesh = own_mesh()
    redis = mesh.backing.redis
    assert redis is not None
    with httpx.Client(base_url=mesh.gateway_url, headers=mesh.headers(), timeout=60) as c:
        acknowledged: dict[str, int] = {}
        for i in range(6):
            session = c.post("/v1/sessions", json={"messages": []}).json()["id"]
            body = {**chat_body(f"q{i}"), "session_id": session}
            turn = c.post("/v1/chat/completions", json=body)
            assert turn.status_code == 200, turn.text
            acknowledged[session] = 2  # the user turn and the assistant's answer

        redis.stop()
        for _ in range(3):
            t0 = time.monotonic()
            resp = c.get(f"/v1/sessions/{next(iter(acknowledged))}")
            assert resp.status_code == 503, resp.text
            assert resp.json()["error"]["type"] == "server_error"
            assert time.monotonic() - t0 < 20, "a request during the outage hung"

        restarted = start_redis(
            mesh.backing.redis_port,
            mesh.backing.workdir / "redis",
            mesh.backing.workdir / "logs" / "redis-restarted.log",
            mesh.backing.creds.redis_password,
        )
        mesh.stack.callback(restarted.stop)
        wait_for(
            "the gateway serves sessions again",
            lambda: c.get(f"/v1/sessions/{next(iter(acknowledged))}").status_code == 200,
            timeout=60,
            every=1,
        )
        for session, count in acknowledged.items():
            record = c.get(f"/v1/sessions/{session}").json()
            assert len(record["messages"]) == count, record
        turn = c.post("/v1/chat/completions", json=chat_body("after"))
        assert turn.status_code == 200, turn.text
