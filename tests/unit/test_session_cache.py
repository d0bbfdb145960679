"""The gateway's session cache (``autoglm.gateway.sessions.cache``): a turn after one this
process wrote skips the state read; whatever the cache got wrong, the ETag-guarded write
catches, and the turn is read and redone, never written over a history it did not see."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from autoglm.core.schemas import ChatMessage
from autoglm.gateway.sessions.cache import SessionCache, next_etag
from autoglm.gateway.sessions.protocol import SessionRecord
from tests.support.fakes import FakeSidecar
from tests.unit.gateway_fixtures import (
    CHAT,
    USER,
    FakeStream,
    _result,
    make_client,
    sidecar,
    stream,
)

__all__ = ["sidecar", "stream"]  # fixtures used by name


def _turn(content: str, session_id: str, **extra: Any) -> dict[str, Any]:
    return dict(
        CHAT, messages=[{"role": "user", "content": content}], session_id=session_id, **extra
    )


def _count_reads(sidecar: FakeSidecar) -> list[str]:
    reads: list[str] = []
    real = sidecar.get_state

    def counted(key: str, *a: Any, **kw: Any) -> Any:
        if key.startswith("session:"):
            reads.append(key)
        return real(key, *a, **kw)

    sidecar.get_state = counted  # type: ignore[method-assign]
    return reads


def _contents(client: FlaskClient, sid: str) -> list[str]:
    record = client.get(f"/v1/sessions/{sid}", headers=USER).get_json()
    return [m["content"] for m in record["messages"]]


def _prompts(sidecar: FakeSidecar) -> list[list[str]]:
    return [
        [m["content"] for m in p["messages"]] for _, m, p in sidecar.invocations if m == "generate"
    ]


@pytest.fixture
def client(sidecar: FakeSidecar, stream: FakeStream) -> FlaskClient:
    return make_client(sidecar, stream)


def test_turns_after_this_process_wrote_the_session_skip_the_read(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    reads = _count_reads(sidecar)
    for word in ("one", "two", "three"):
        assert (
            client.post("/v1/chat/completions", json=_turn(word, sid), headers=USER).status_code
            == 200
        )
    assert reads == []
    assert _prompts(sidecar)[-1] == ["one", "hello", "two", "hello", "three"]
    assert _contents(client, sid) == ["one", "hello", "two", "hello", "three", "hello"]
    versions = [p["version"] for t, p in sidecar.published if t == "session.snapshots"]
    assert versions == [1, 2, 3, 4]


def test_a_session_changed_by_another_writer_is_read_and_the_turn_redone(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    """Another replica wrote the session after this process: the turn opened from the
    cache loses its write, reads the session, generates again over the history read, and
    the client gets that answer; the cache is off from then on."""
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    assert (
        client.post("/v1/chat/completions", json=_turn("one", sid), headers=USER).status_code == 200
    )
    key = f"session:acme:{sid}"
    value, version = sidecar.state[key]
    other = dict(
        value,
        version=value["version"] + 1,
        messages=[*value["messages"], {"role": "user", "content": "elsewhere"}],
    )
    sidecar.save_state(key, other, etag=str(version))
    resp = client.post("/v1/chat/completions", json=_turn("two", sid), headers=USER)
    assert resp.status_code == 200, resp.get_json()
    stale, redone = _prompts(sidecar)[-2:]
    assert stale == ["one", "hello", "two"]
    assert redone == ["one", "hello", "elsewhere", "two"]
    assert _contents(client, sid) == ["one", "hello", "elsewhere", "two", "hello"]
    reads = _count_reads(sidecar)
    assert (
        client.post("/v1/chat/completions", json=_turn("three", sid), headers=USER).status_code
        == 200
    )
    assert reads == [key]  # the cache turned itself off


def test_a_wrong_etag_guess_retries_only_the_write(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    """The record stored is the one cached, under another ETag (the key was re-created,
    say): the write is sent again with the ETag read; one generation, cache still on."""
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    assert (
        client.post("/v1/chat/completions", json=_turn("one", sid), headers=USER).status_code == 200
    )
    key = f"session:acme:{sid}"
    value, version = sidecar.state[key]
    sidecar.state[key] = (value, version + 5)
    before = len(_prompts(sidecar))
    assert (
        client.post("/v1/chat/completions", json=_turn("two", sid), headers=USER).status_code == 200
    )
    assert len(_prompts(sidecar)) == before + 1
    assert _contents(client, sid) == ["one", "hello", "two", "hello"]
    reads = _count_reads(sidecar)
    assert (
        client.post("/v1/chat/completions", json=_turn("three", sid), headers=USER).status_code
        == 200
    )
    assert reads == []


def test_a_turn_racing_another_writer_is_still_409(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    """Another writer changes the session during every generation: the redone turn, from
    a fresh read, loses again and is the usual 409; nothing of it is written."""
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    key = f"session:acme:{sid}"

    def racing(payload: dict[str, Any]) -> dict[str, Any]:
        value, version = sidecar.state[key]
        sidecar.save_state(key, dict(value, version=value["version"] + 1), etag=str(version))
        return _result(payload)

    sidecar.invoke_replies["generate"] = racing
    resp = client.post("/v1/chat/completions", json=_turn("mine", sid), headers=USER)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "session_conflict"
    assert _contents(client, sid) == []


def test_streamed_turns_and_deleted_sessions_are_read(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    reads = _count_reads(sidecar)
    streamed = client.post("/v1/chat/completions", json=_turn("hi", sid, stream=True), headers=USER)
    assert streamed.status_code == 200 and streamed.get_data()
    assert len(reads) == 1  # a streamed reply cannot be redone: it reads
    assert (
        client.post("/v1/chat/completions", json=_turn("two", sid), headers=USER).status_code == 200
    )
    assert len(reads) == 1  # ... and caches what it wrote
    assert client.delete(f"/v1/sessions/{sid}", headers=USER).status_code == 200
    resp = client.post("/v1/chat/completions", json=_turn("three", sid), headers=USER)
    assert resp.status_code == 404


@pytest.mark.parametrize("settings", [{"session_cache_entries": 0}, {"workers": 2}])
def test_cache_off_reads_every_turn(
    sidecar: FakeSidecar, stream: FakeStream, settings: dict[str, Any]
) -> None:
    client = make_client(sidecar, stream, **settings)
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    reads = _count_reads(sidecar)
    for word in ("one", "two"):
        assert (
            client.post("/v1/chat/completions", json=_turn(word, sid), headers=USER).status_code
            == 200
        )
    assert len(reads) == 2


def test_next_etag_follows_the_redis_version_counter() -> None:
    assert next_etag(None) == "1"
    assert next_etag("7") == "8"
    assert next_etag("W/abc") is None
    assert next_etag("") is None


def _record(sid: str, chars: int) -> SessionRecord:
    return SessionRecord(
        id=sid, tenant="acme", messages=[ChatMessage(role="user", content="x" * chars)]
    )


def test_cache_is_bounded_by_entries_and_characters() -> None:
    cache = SessionCache(max_entries=2, max_chars=10_000)
    for sid in ("a", "b", "c"):
        cache.written(sid, _record(sid, 10), "1")
    assert cache.get("a") is None and cache.get("b") is not None and len(cache) == 2
    cache.written("big", _record("big", 20_000), "1")
    assert cache.get("big") is None
    cache.written("d", _record("d", 6_000), "1")
    cache.written("e", _record("e", 6_000), "1")
    hit = cache.get("e")
    assert cache.get("d") is None and hit is not None and hit[1] == "2"
    cache.written("f", _record("f", 10), "not-a-counter")
    assert cache.get("f") is None
    cache.turn_off("test")
    cache.written("g", _record("g", 10), "1")
    assert cache.get("g") is None and not cache.enabled and len(cache) == 0


def test_gateway_replicas_keep_no_session_cache() -> None:
    """Behind the front door a session's turns reach any replica: no cache there."""
    from autoglm.devstack.frontdoor import GATEWAY_ENV
    from autoglm.gateway.settings import GatewaySettings

    assert GATEWAY_ENV["AUTOGLM_GATEWAY_SESSION_CACHE_ENTRIES"] == "0"
    assert GatewaySettings.model_validate({"session_cache_entries": "0"}).session_cache_entries == 0


def _archived(request: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """The archiver's restore reply carrying ``record`` (a stored session)."""
    fields = ("version", "model", "messages")
    return {"tenant": request["tenant"], "session_id": request["session_id"]} | {
        f: record[f] for f in fields
    }


def test_a_session_the_store_lost_is_restored_for_a_cached_turn(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    """Redis lost the session after this process cached it (a flush): the turn's write is
    refused, the session comes back from the archive as the turn's read would bring it,
    and, being the record cached, only the write is sent again: one generation, 200."""
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    assert (
        client.post("/v1/chat/completions", json=_turn("one", sid), headers=USER).status_code == 200
    )
    key = f"session:acme:{sid}"
    archived, _ = sidecar.state.pop(key)
    sidecar.first_write.discard(key)
    sidecar.invoke_replies["restore"] = lambda p: _archived(p, archived)
    before = len(_prompts(sidecar))
    resp = client.post("/v1/chat/completions", json=_turn("two", sid), headers=USER)
    assert resp.status_code == 200, resp.get_json()
    assert len(_prompts(sidecar)) == before + 1
    assert _contents(client, sid) == ["one", "hello", "two", "hello"]


def test_a_lost_session_archived_older_is_redone_over_the_archive(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    """The archive's newest version predates what this process cached (the store was lost
    before the last snapshot reached it): the turn is redone over the restored history,
    not written over one the store no longer has; the cache stays on."""
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    key = f"session:acme:{sid}"
    created, _ = sidecar.state[key]
    assert (
        client.post("/v1/chat/completions", json=_turn("one", sid), headers=USER).status_code == 200
    )
    del sidecar.state[key]
    sidecar.first_write.discard(key)
    sidecar.invoke_replies["restore"] = lambda p: _archived(p, created)
    resp = client.post("/v1/chat/completions", json=_turn("two", sid), headers=USER)
    assert resp.status_code == 200, resp.get_json()
    assert _prompts(sidecar)[-1] == ["two"]
    assert _contents(client, sid) == ["two", "hello"]
    reads = _count_reads(sidecar)
    assert (
        client.post("/v1/chat/completions", json=_turn("three", sid), headers=USER).status_code
        == 200
    )
    assert reads == []
