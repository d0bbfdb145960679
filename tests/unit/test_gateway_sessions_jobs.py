"""Sessions, jobs and attachments through the gateway, against a fake sidecar;
including tenant isolation on every such route."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from autoglm.core.errors import ConflictError, NotFoundError
from autoglm.gateway.sessions.turns import TurnClaims
from tests.support.fakes import FakeSidecar
from tests.support.tokens import bearer
from tests.unit.gateway_fixtures import (
    CHAT,
    FROM_DAPRD,
    USER,
    FakeStream,
    _result,
    _sse,
    make_client,
    sidecar,
    stream,
)

__all__ = ["sidecar", "stream"]  # fixtures used by name

OTHER = bearer("globex")


@pytest.fixture
def client(sidecar: FakeSidecar, stream: FakeStream) -> FlaskClient:
    return make_client(sidecar, stream)


def _turn(content: str, session_id: str, **extra: Any) -> dict[str, Any]:
    return dict(
        CHAT, messages=[{"role": "user", "content": content}], session_id=session_id, **extra
    )


def test_session_turns_are_appended_in_order(client: FlaskClient, sidecar: FakeSidecar) -> None:
    created = client.post(
        "/v1/sessions", json={"messages": [{"role": "system", "content": "be brief"}]}, headers=USER
    )
    assert created.status_code == 201
    sid = created.get_json()["id"]
    for word in ("one", "two"):
        assert (
            client.post("/v1/chat/completions", json=_turn(word, sid), headers=USER).status_code
            == 200
        )
    record = client.get(f"/v1/sessions/{sid}", headers=USER).get_json()
    assert record["id"] == sid and record["version"] == 3
    assert [(m["role"], m["content"]) for m in record["messages"]] == [
        ("system", "be brief"),
        ("user", "one"),
        ("assistant", "hello"),
        ("user", "two"),
        ("assistant", "hello"),
    ]
    # The second turn's prompt carried the whole history.
    last_prompt = [p for _, m, p in sidecar.invocations if m == "generate"][-1]["messages"]
    assert [m["content"] for m in last_prompt] == ["be brief", "one", "hello", "two"]
    # Every change went to the archiver's topic with its version.
    versions = [p["version"] for t, p in sidecar.published if t == "session.snapshots"]
    assert versions == [1, 2, 3]


def test_streamed_turn_is_appended(client: FlaskClient) -> None:
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    events = _sse(
        client.post("/v1/chat/completions", json=_turn("hi", sid, stream=True), headers=USER)
    )
    assert events[-1] == "[DONE]"
    messages = client.get(f"/v1/sessions/{sid}", headers=USER).get_json()["messages"]
    assert messages[-1] == {"role": "assistant", "content": "Hello world"}


def test_concurrent_turn_is_409_and_nothing_is_lost(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    key = f"session:acme:{sid}"

    def racing(payload: dict[str, Any]) -> dict[str, Any]:
        # Another replica appends a turn while this generation runs.
        value, version = sidecar.state[key]
        other = dict(value, messages=[{"role": "user", "content": "other"}])
        sidecar.save_state(key, other, etag=str(version))
        return _result(payload)

    sidecar.invoke_replies["generate"] = racing
    resp = client.post("/v1/chat/completions", json=_turn("mine", sid), headers=USER)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "session_conflict"
    stored = client.get(f"/v1/sessions/{sid}", headers=USER).get_json()["messages"]
    assert stored == [{"role": "user", "content": "other"}]


def test_racing_turn_in_this_process_is_409_before_anything_is_sent(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    """A second turn of a session while one runs here would be generated and then lose
    the ETag race (its read predates the first turn's write): it is refused at once,
    with no state read or write and no generation; the next turn after it works."""
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    raced: list[Any] = []
    calls: list[str] = []
    for name in ("get_state", "save_state"):
        real = getattr(sidecar, name)

        def counted(key: str, *a: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            if key.startswith("session:"):
                calls.append(_name)
            return _real(key, *a, **kw)

        setattr(sidecar, name, counted)

    def generate(payload: dict[str, Any]) -> dict[str, Any]:
        if not raced:  # the racing turn arrives while this one generates
            before = (len(calls), len(sidecar.invocations))
            raced.append(client.post("/v1/chat/completions", json=_turn("b", sid), headers=USER))
            raced.append((len(calls), len(sidecar.invocations)) == before)
        return _result(payload)

    sidecar.invoke_replies["generate"] = generate
    first = client.post("/v1/chat/completions", json=_turn("a", sid), headers=USER)
    assert first.status_code == 200
    refused, nothing_sent = raced
    assert refused.status_code == 409, refused.get_json()
    assert refused.get_json()["error"]["code"] == "session_conflict"
    assert nothing_sent
    # Released once answered (and after a failure: the next turn is not refused).
    assert (
        client.post("/v1/chat/completions", json=_turn("c", sid), headers=USER).status_code == 200
    )
    stored = client.get(f"/v1/sessions/{sid}", headers=USER).get_json()["messages"]
    assert [m["content"] for m in stored] == ["a", "hello", "c", "hello"]


def test_turn_claim_is_released_when_the_turn_fails_and_lapses_if_leaked() -> None:
    now = [0.0]
    claims = TurnClaims(10.0, clock=lambda: now[0])
    release = claims.claim("session:t:s", "s")
    with pytest.raises(ConflictError):
        claims.claim("session:t:s", "s")
    claims.claim("session:t:other", "other")  # other sessions are not held
    release()
    release()  # idempotent
    leaked = claims.claim("session:t:s", "s")
    now[0] = 10.5  # never released: lapses after hold_s
    claims.claim("session:t:s", "s")()
    leaked()  # a lapsed claim's late release frees nothing it no longer holds
    assert len(claims) == 1


def test_streamed_turn_releases_its_session(client: FlaskClient) -> None:
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    for word in ("one", "two"):
        events = _sse(
            client.post("/v1/chat/completions", json=_turn(word, sid, stream=True), headers=USER)
        )
        assert events[-1] == "[DONE]"


def test_duplicate_session_id_is_409(client: FlaskClient, sidecar: FakeSidecar) -> None:
    assert client.post("/v1/sessions", json={"id": "s1"}, headers=USER).status_code == 201
    writes: list[str] = []
    real = sidecar.save_state

    def save_state(key: str, *a: Any, **kw: Any) -> None:
        writes.append(key)
        real(key, *a, **kw)

    sidecar.save_state = save_state  # type: ignore[method-assign]
    assert client.post("/v1/sessions", json={"id": "s1"}, headers=USER).status_code == 409
    # Refused without a create-only write (daprd would retry it and count each attempt
    # towards the shared state store breaker).
    assert not [k for k in writes if k.startswith("session:")]


def test_lost_session_is_restored_from_the_archive(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sidecar.invoke_replies["restore"] = lambda p: {
        "tenant": p["tenant"],
        "session_id": p["session_id"],
        "version": 4,
        "model": "demo-glm",
        "messages": [{"role": "user", "content": "remember me"}],
    }
    record = client.get("/v1/sessions/s-old", headers=USER).get_json()
    assert record["version"] == 4 and record["messages"][0]["content"] == "remember me"
    assert "session:acme:s-old" in sidecar.state  # written back to the state store
    restore = {"tenant": "acme", "session_id": "s-old", "version": None}  # the newest
    assert ("archiver", "restore", restore) in sidecar.invocations


def test_deleted_session_is_not_resurrected(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["restore"] = NotFoundError("no such session")
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    assert client.delete(f"/v1/sessions/{sid}", headers=USER).get_json()["deleted"] is True
    sidecar.invoke_replies["restore"] = lambda p: {**p, "version": 1, "messages": []}
    assert client.get(f"/v1/sessions/{sid}", headers=USER).status_code == 404
    assert client.get("/v1/sessions/never", headers=USER).status_code == 200  # restorable id


def test_jobs_complete_once_from_results(client: FlaskClient, sidecar: FakeSidecar) -> None:
    resp = client.post("/v1/jobs", json=CHAT, headers=USER)
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["status"] == "queued" and "tenant" not in job
    topic, event = (
        sidecar.published[-2] if sidecar.published[-1][0] == "audit" else sidecar.published[-1]
    )
    assert topic == "inference.requests" and event["reply_topic"] == "inference.results"
    assert event["request_id"] == f"acme:{job['id']}"

    result = {"request_id": event["request_id"], "result": _result(event["request"])}
    envelope = {"data": result, "topic": "inference.results"}
    for _ in range(2):  # at-least-once delivery: the duplicate changes nothing
        ack = client.post(
            "/dapr/events/inference-results", json=envelope, headers=FROM_DAPRD
        ).get_json()
        assert ack == {"status": "SUCCESS"}
    done = client.get(f"/v1/jobs/{job['id']}", headers=USER).get_json()
    assert done["status"] == "completed"
    assert done["result"]["choices"][0]["message"]["content"] == "hello"
    assert done["result"]["usage"]["total_tokens"] == 12


def test_job_results_pass_the_output_content_filter(
    sidecar: FakeSidecar, stream: FakeStream
) -> None:
    client = make_client(sidecar, stream, blocked_terms=["secret"])
    job = client.post("/v1/jobs", json=CHAT, headers=USER).get_json()
    result = _result({"request_id": f"acme:{job['id']}"}, text="the secret plan")
    client.post(
        "/dapr/events/inference-results",
        json={"data": {"request_id": f"acme:{job['id']}", "result": result}},
        headers=FROM_DAPRD,
    )
    choice = client.get(f"/v1/jobs/{job['id']}", headers=USER).get_json()["result"]["choices"][0]
    assert choice["message"]["content"] == "the " and choice["finish_reason"] == "content_filter"


def test_failed_job_carries_the_error(client: FlaskClient, sidecar: FakeSidecar) -> None:
    job = client.post("/v1/jobs", json=CHAT, headers=USER).get_json()
    error = {
        "message": "model 'x' not found",
        "type": "not_found_error",
        "code": "model_not_found",
        "param": None,
        "status": 404,
    }
    client.post(
        "/dapr/events/inference-results",
        json={"data": {"request_id": f"acme:{job['id']}", "error": error}},
        headers=FROM_DAPRD,
    )
    failed = client.get(f"/v1/jobs/{job['id']}", headers=USER).get_json()
    assert failed["status"] == "failed" and failed["error"]["code"] == "model_not_found"
    assert "status" not in failed["error"]


def test_malformed_result_is_dropped_to_dead_letter(client: FlaskClient) -> None:
    ack = client.post(
        "/dapr/events/inference-results", json={"data": {"nope": 1}}, headers=FROM_DAPRD
    ).get_json()
    assert ack == {"status": "DROP"}


def test_gateway_subscribes_to_results_with_dead_letter(client: FlaskClient) -> None:
    subs = client.get("/dapr/subscribe", headers=FROM_DAPRD).get_json()
    assert subs == [
        {
            "pubsubname": "pubsub",
            "topic": "inference.results",
            "route": "/dapr/events/inference-results",
            "deadLetterTopic": "inference.results.deadletter",
        }
    ]


def test_tenant_isolation_on_sessions_jobs_and_attachments(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sidecar.invoke_replies["restore"] = NotFoundError("no such session")
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    job = client.post("/v1/jobs", json=CHAT, headers=USER).get_json()["id"]
    # Another tenant sees nothing and changes nothing.
    assert client.get(f"/v1/sessions/{sid}", headers=OTHER).status_code == 404
    assert client.delete(f"/v1/sessions/{sid}", headers=OTHER).status_code == 404
    assert (
        client.post("/v1/chat/completions", json=_turn("x", sid), headers=OTHER).status_code == 404
    )
    assert client.get(f"/v1/jobs/{job}", headers=OTHER).status_code == 404
    assert client.get(f"/v1/sessions/{sid}", headers=USER).get_json()["version"] == 1
    # Attachments: the archiver is always asked with the caller's own tenant.
    sidecar.invoke_replies["attachment_get"] = NotFoundError("attachment not found")
    assert client.get("/v1/attachments/a1", headers=OTHER).status_code == 404
    assert sidecar.invocations[-1][2]["tenant"] == "globex"
    # An admin may read any tenant's resources only through admin routes; the tenant
    # in a user's body is ignored in favour of the token's.
    sidecar.invoke_replies["attachment_start"] = lambda p: {
        **{k: v for k, v in p.items() if k != "tenant"},
        **{"id": "a2", "category": "text", "offset": 0, "version": 1, "complete": False},
    }
    upload = {"filename": "f.txt", "mime_type": "text/plain", "size": 1, "sha256": "a" * 64}
    resp = client.post("/v1/attachments", json={**upload, "tenant": "acme"}, headers=OTHER)
    assert resp.status_code == 201 and resp.get_json()["id"] == "a2"
    assert sidecar.invocations[-1][:2] == ("archiver", "attachment_start")
    assert sidecar.invocations[-1][2]["tenant"] == "globex"


def test_attachment_upload_proxies_chunks_and_offsets(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sidecar.invoke_replies["attachment_put"] = lambda p: {
        "id": p["id"],
        "offset": p["offset"] + 3,
        "complete": False,
        "version": 1,
    }
    resp = client.put("/v1/attachments/a1?offset=0", data=b"abc", headers=USER)
    assert resp.status_code == 200 and resp.headers["Upload-Offset"] == "3"
    assert sidecar.invocations[-1][2]["data"] == "YWJj"
    assert client.put("/v1/attachments/a1", data=b"abc", headers=USER).status_code == 400
    sidecar.invoke_replies["attachment_put"] = ConflictError("expected offset 3")
    assert client.put("/v1/attachments/a1?offset=9", data=b"x", headers=USER).status_code == 409
    sidecar.invoke_replies["attachment_get"] = _ranges(b"abc", "a.txt")
    got = client.get("/v1/attachments/a1", headers=USER)
    assert got.data == b"abc" and got.mimetype == "text/plain"
    assert json.loads(json.dumps(dict(got.headers)))["x-autoglm-sha256"] == "ab"


def _ranges(data: bytes, filename: str, step: int = 2**20, complete: bool = True) -> Any:
    """The archiver's ``attachment_get``: one range of ``data`` per call."""

    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        offset = payload.get("offset", 0)
        return {
            "id": payload["id"],
            "filename": filename,
            "mime_type": "text/plain",
            "size": len(data),
            "sha256": "ab",
            "category": "text",
            "version": 2,
            "complete": complete,
            "offset": offset,
            "data": base64.b64encode(data[offset : offset + step] if complete else b"").decode(),
        }

    return reply


def test_attachment_download_streams_range_by_range(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    data = bytes(range(256)) * 10_000  # 2.4 MiB: three ranges of at most 1 MiB
    sidecar.invoke_replies["attachment_get"] = _ranges(data, 'résumé "x".txt')
    got = client.get("/v1/attachments/a1", headers=USER)
    assert got.status_code == 200 and got.data == data
    assert got.headers["Content-Length"] == str(len(data))
    offsets = [p.get("offset", 0) for _, m, p in sidecar.invocations if m == "attachment_get"]
    assert offsets == [0, 2**20, 2**21]
    disposition = got.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="r?sum? x.txt"')
    assert "filename*=UTF-8''r%C3%A9sum%C3%A9%20%22x%22.txt" in disposition


def test_unfinished_attachment_download_is_409(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["attachment_get"] = _ranges(b"abc", "a.txt", complete=False)
    resp = client.get("/v1/attachments/a1", headers=USER)
    assert resp.status_code == 409 and resp.get_json()["error"]["code"] == "upload_incomplete"


@pytest.mark.parametrize(
    "session_id",
    ["x/../../statestore/session:globex:s1", "..", ".hidden", "a:b", "a" * 129],
)
def test_session_ids_that_could_escape_their_key_are_refused(
    client: FlaskClient, sidecar: FakeSidecar, session_id: str
) -> None:
    """A session id becomes part of a state key and a daprd URL: one that could reach
    another tenant's key is a 400 in a body and a 404 in a path, never a lookup."""
    before = len(sidecar.invocations)
    resp = client.post("/v1/chat/completions", json=_turn("hi", session_id), headers=USER)
    assert resp.status_code == 400 and resp.get_json()["error"]["param"] == "session_id"
    resp = client.post("/v1/sessions", json={"id": session_id}, headers=USER)
    assert resp.status_code == 400 and resp.get_json()["error"]["param"] == "id"
    if "/" not in session_id:
        assert client.get(f"/v1/sessions/{session_id}", headers=USER).status_code == 404
        assert client.delete(f"/v1/sessions/{session_id}", headers=USER).status_code == 404
    assert len(sidecar.invocations) == before  # not even the archiver was asked


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": [str(i) for i in range(9)]}, "stop"),
        ({"stop": ["x" * 257]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"seed": 2**64}, "seed"),
        ({"seed": -(2**64)}, "seed"),
    ],
)
def test_sampling_limits_are_400_naming_the_field(
    client: FlaskClient, extra: dict[str, Any], param: str
) -> None:
    chat = {"model": "demo-glm", "messages": [{"role": "user", "content": "hi"}], **extra}
    completion = {"model": "demo-glm", "prompt": "hi", **extra}
    for path, body in (("/v1/chat/completions", chat), ("/v1/completions", completion)):
        resp = client.post(path, json=body, headers=USER)
        assert resp.status_code == 400, (path, resp.get_data(as_text=True))
        assert resp.get_json()["error"]["param"].startswith(param)
    resp = client.post("/v1/jobs", json=chat, headers=USER)
    assert resp.status_code == 400, resp.get_data(as_text=True)


def test_delete_tells_the_archiver_before_writing_the_tombstone(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    turn = client.post("/v1/chat/completions", json=_turn("hi", sid), headers=USER)
    assert turn.status_code == 200
    key = f"session:acme:{sid}"
    seen: list[Any] = []
    real_publish = sidecar.publish

    def publish(topic: str, payload: dict[str, Any], pubsub: str = "pubsub") -> None:
        if topic == "session.snapshots":
            seen.append(sidecar.state[key][0])  # what the state store held at publish time
        real_publish(topic, payload, pubsub)

    sidecar.publish = publish  # type: ignore[method-assign]
    assert client.delete(f"/v1/sessions/{sid}", headers=USER).status_code == 200
    deletions = [p for t, p in sidecar.published if t == "session.snapshots" and p["deleted"]]
    assert len(deletions) == 1
    assert {k: deletions[0][k] for k in ("tenant", "session_id", "version", "messages")} == {
        "tenant": "acme",
        "session_id": sid,
        "version": 2,
        "messages": [],
    }
    assert [r.get("version") for r in seen] == [2]  # published while the record was live
    assert sidecar.state[key][0] == {"deleted": True}


def test_delete_whose_deletion_is_not_published_fails_and_keeps_the_session(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    from autoglm.core.errors import UnavailableError  # here: tests are appended only

    sid = client.post("/v1/sessions", json={}, headers=USER).get_json()["id"]
    sidecar.fail_publish = UnavailableError("publish session.snapshots: Dapr error 500")
    resp = client.delete(f"/v1/sessions/{sid}", headers=USER)
    assert resp.status_code == 503 and resp.get_json()["error"]["type"] == "server_error"
    assert sidecar.state[f"session:acme:{sid}"][0] != {"deleted": True}
    sidecar.fail_publish = None
    assert client.get(f"/v1/sessions/{sid}", headers=USER).status_code == 200
    # The retry publishes again and completes the delete.
    assert client.delete(f"/v1/sessions/{sid}", headers=USER).status_code == 200
    assert client.get(f"/v1/sessions/{sid}", headers=USER).status_code == 404
    assert [p["session_id"] for t, p in sidecar.published if p.get("deleted")] == [sid]
