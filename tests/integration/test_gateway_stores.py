"""The gateway's session and job stores against the real Redis state store via daprd:
first-write-wins holds across replicas, and job completion is exactly once."""

from __future__ import annotations

import json
import uuid

import pytest

from autoglm.core.errors import ConflictError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import ChatMessage, GenerateRequest
from autoglm.core.sidecar import Sidecar
from autoglm.gateway.jobs.store import JobStore
from autoglm.gateway.sessions.cache import SessionCache
from autoglm.gateway.sessions.protocol import CreateSessionRequest
from autoglm.gateway.sessions.store import SessionStore, StaleSessionError


def test_two_replicas_appending_to_one_session_cannot_both_win(sidecar: Sidecar) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    store = SessionStore(sidecar)
    record = store.create(tenant, CreateSessionRequest())
    # Both replicas read version 1 with the same ETag...
    first, etag = store.get(tenant, record.id)
    second, same_etag = store.get(tenant, record.id)
    assert etag == same_etag
    store.append(first, etag, [ChatMessage(role="user", content="from replica A")])
    # ...so the second write is refused, and replica A's turn is intact.
    with pytest.raises(ConflictError, match="changed by another request"):
        store.append(second, same_etag, [ChatMessage(role="user", content="from replica B")])
    stored, _ = store.get(tenant, record.id)
    assert [m.content for m in stored.messages] == ["from replica A"] and stored.version == 2


def test_cached_turns_write_with_the_etag_state_redis_leaves(sidecar: Sidecar) -> None:
    """The session cache's ETag guess (the written one plus one; 1 after a create) is what
    daprd's state.redis leaves: cached turns write without a read, and are refused once
    another replica wrote the session (then the cache is off)."""
    tenant = f"t{uuid.uuid4().hex[:8]}"
    store = SessionStore(sidecar, cache=SessionCache(16))
    record = store.create(tenant, CreateSessionRequest())
    for word in ("one", "two", "three"):
        turn = store.open_turn(tenant, record.id)
        try:
            assert turn.cached
            turn.append([ChatMessage(role="user", content=word)])
        finally:
            turn.close()
    stored, etag = store.get(tenant, record.id)
    assert [m.content for m in stored.messages] == ["one", "two", "three"] and stored.version == 4
    assert store.cache.get(store.key(tenant, record.id)) == (stored, etag)
    other = SessionStore(sidecar)  # another replica appends
    other.append(stored, etag, [ChatMessage(role="user", content="elsewhere")])
    turn = store.open_turn(tenant, record.id)
    try:
        with pytest.raises(StaleSessionError):
            turn.append([ChatMessage(role="user", content="stale")])
        turn.reread()
        turn.append([ChatMessage(role="user", content="four")])
    finally:
        turn.close()
    stored, _ = store.get(tenant, record.id)
    assert [m.content for m in stored.messages][-2:] == ["elsewhere", "four"]
    assert not store.cache.enabled


def test_session_id_is_created_once(sidecar: Sidecar) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    store = SessionStore(sidecar)
    store.create(tenant, CreateSessionRequest(id="fixed"))
    with pytest.raises(ConflictError, match="already exists"):
        store.create(tenant, CreateSessionRequest(id="fixed"))


def test_job_result_redelivered_completes_once(sidecar: Sidecar) -> None:
    tenant = f"t{uuid.uuid4().hex[:8]}"
    jobs = JobStore(sidecar, ttl_s=300)
    job = jobs.submit(tenant, GenerateRequest(prompt="hi"))
    result = {
        "request_id": f"{tenant}:{job.id}",
        "result": {
            "request_id": f"{tenant}:{job.id}",
            "model": "demo-glm",
            "text": "first",
            "finish_reason": "stop",
            "prompt_tokens": 1,
            "completion_tokens": 1,
        },
    }
    assert jobs.on_result(json.dumps(result).encode()) is Ack.SUCCESS
    result["result"]["text"] = "second delivery"  # type: ignore[index]
    assert jobs.on_result(json.dumps(result).encode()) is Ack.SUCCESS
    done = jobs.get(tenant, job.id)
    assert done.status == "completed"
    assert done.result is not None
    assert done.result["choices"][0]["message"]["content"] == "first"
