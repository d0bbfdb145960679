"""Issue 10 (no tenant can hurt another): hostile input, masking and limits at the
gateway edge, against the fake sidecar."""

from __future__ import annotations

import io
import json
import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import MAX_JSON_DEPTH, load_json_object
from autoglm.core.sidecar import Sidecar
from autoglm.gateway.security.masking import mask_pii
from autoglm.gateway.security.tokens import mint_token
from tests.support.fakes import FakeSidecar
from tests.support.tokens import JWT_SECRET
from tests.unit.gateway_fixtures import (  # noqa: F401
    CHAT,
    USER,
    FakeStream,
    make_client,
    sidecar,
    stream,
)


# -- item 11: deep JSON, ids Dapr cannot store ----------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b'{"messages": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}",
    ],
)
def test_deeply_nested_json_is_400_not_500(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
    body: bytes,
) -> None:
    client = make_client(sidecar, stream, max_body_bytes=1 << 20)
    resp = client.post(
        "/v1/chat/completions", data=body, headers={**USER, "content-type": "application/json"}
    )
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "invalid_json" or "nested too deeply" in error["message"]


def test_nesting_within_the_limit_is_accepted() -> None:
    depth = MAX_JSON_DEPTH - 1
    value = load_json_object('{"a": ' + "[" * depth + "]" * depth + "}")["a"]
    for _ in range(depth - 1):
        value = value[0]
    assert value == []


def test_deep_nesting_message_is_clear() -> None:
    with pytest.raises(InvalidRequestError, match="nested too deeply"):
        load_json_object("[" * 5000 + "]" * 5000)


@pytest.mark.parametrize("key", ["job:acme:a||b", "session:acme:||", "job:acme:x||"])
def test_state_keys_with_daprs_separator_are_refused_before_any_request(key: str) -> None:
    daprd = Sidecar(http_port=1)  # nothing listens there: a request would be a 503
    with pytest.raises(InvalidRequestError, match=r"'\|\|'"):
        daprd.get_state(key)
    with pytest.raises(InvalidRequestError, match=r"'\|\|'"):
        daprd.save_state(key, {})
    with pytest.raises(InvalidRequestError, match=r"'\|\|'"):
        daprd.delete_state(key)


# -- item 10: every audit field that can hold personal data is masked ----------------
@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("/v1/jobs/4111111111111111", "/v1/jobs/[CARD]"),
        ("/v1/sessions/4111-1111-1111-1111", "/v1/sessions/[CARD]"),
        ("card 5500 0000 0000 0004 ok", "card [CARD] ok"),
        ("卡号4111111111111111。", "卡号[CARD]。"),
        ("amex 378282246310005", "amex [CARD]"),
    ],
)
def test_card_numbers_are_masked(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "/v1/jobs/4111111111111112",  # fails the Luhn check: a counter, not a card
        "/v1/jobs/0f3a4111111111111111bc",  # inside a hex id
        "ts 1733059200123",  # 13-digit millisecond timestamp (not Luhn-valid)
    ],
)
def test_numbers_that_are_not_cards_are_left_alone(text: str) -> None:
    assert mask_pii(text) == text


def test_audit_masks_path_subject_model_and_request_id(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
) -> None:
    client = make_client(sidecar, stream)
    token = mint_token(JWT_SECRET, tenant="acme", role="user", subject="alice.smith@example.com")
    headers = {"Authorization": f"Bearer {token}", "x-request-id": "4111111111111111"}
    assert client.get("/v1/jobs/4111111111111111", headers=headers).status_code == 404
    body = {**CHAT, "model": "bob@example.org"}
    client.post("/v1/chat/completions", json=body, headers=headers)
    events = [p for t, p in sidecar.published if t == "audit"]
    assert len(events) == 2
    text = json.dumps(events)
    for raw in ("4111111111111111", "alice.smith@example.com", "bob@example.org"):
        assert raw not in text, events
    assert events[0]["resource"] == "/v1/jobs/[CARD]"
    assert events[0]["user"] == "[EMAIL]"
    assert events[0]["tenant"] == "acme"


def test_audit_keeps_a_request_id_the_gateway_made(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only a client's request id is masked: one the gateway made is random hex, which
    the masking rules are not run on (issue 15), even where it looks like a number."""
    client = make_client(sidecar, stream)
    made = "a13912345678b" + "c" * 19  # hex that the phone rule would mask
    monkeypatch.setattr("autoglm.gateway.pipeline.random_hex", lambda: made)
    resp = client.post("/v1/chat/completions", json=CHAT, headers=USER)
    assert resp.headers["x-request-id"] == made
    (event,) = [p for t, p in sidecar.published if t == "audit"]
    assert event["request_id"] == made


# -- item 3: no body is read before authentication; bodies have a deadline ----------
class TrickleInput(io.BytesIO):
    """A request body that arrives one byte per read, slowly; records the reads."""

    def __init__(self, body: bytes, delay_s: float = 0.0) -> None:
        super().__init__(body)
        self.delay_s = delay_s
        self.reads = 0

    def read(self, size: int | None = -1) -> bytes:
        self.reads += 1
        time.sleep(self.delay_s)
        return super().read(1)

    def readline(self, size: int | None = -1) -> bytes:
        return self.read(size)


def _chunked_post(client: FlaskClient, body: TrickleInput, headers: dict[str, str]) -> Any:
    return client.post(
        "/v1/chat/completions",
        input_stream=body,
        content_type="application/json",
        headers=headers,
        environ_overrides={"wsgi.input_terminated": True},
    )


def test_no_body_is_read_before_authentication(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
) -> None:
    client = make_client(sidecar, stream)
    body = TrickleInput(json.dumps(CHAT).encode())
    assert _chunked_post(client, body, {}).status_code == 401
    assert body.reads == 0


def test_a_body_that_trickles_in_past_its_deadline_is_408(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
) -> None:
    client = make_client(sidecar, stream, body_timeout_s=0.3)
    body = TrickleInput(json.dumps(CHAT).encode(), delay_s=0.05)
    resp = _chunked_post(client, body, USER)
    assert resp.status_code == 408, resp.get_data(as_text=True)
    assert resp.get_json()["error"]["code"] == "request_timeout"
    assert body.reads < 20


# -- item 4: unauthenticated requests are limited per client address ------------------
def test_unauthenticated_requests_are_limited_per_address_and_not_all_audited(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
) -> None:
    client = make_client(sidecar, stream, rate_limit_anonymous_per_min=10)
    bad = {"Authorization": "Bearer not-a-token"}
    statuses = [client.get("/v1/models", headers=bad).status_code for _ in range(60)]
    assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
    refused = client.get("/v1/models", headers=bad)
    assert int(refused.headers["Retry-After"]) >= 1
    events = [p for t, p in sidecar.published if t == "audit"]
    assert len(events) == 11, len(events)  # 10 refusals of the token, then one 429
    # Another address, and authenticated callers, are not affected.
    other = client.get("/v1/models", headers=bad, environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert other.status_code == 401
    assert client.get("/v1/models", headers=USER).status_code == 200


# -- item 9: the content filter covers everything that reaches the model or is stored --
BLOCKED = "launchcodes"


def _filtered(fake: FakeSidecar, frames: FakeStream) -> FlaskClient:
    return make_client(fake, frames, blocked_terms=[BLOCKED], max_body_bytes=1 << 16)


def _refused(resp: Any, param: str) -> None:
    assert resp.status_code == 400, resp.get_data(as_text=True)
    error = resp.get_json()["error"]
    assert error["code"] == "content_filter" and error["param"] == param, error


def test_session_creation_is_filtered(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
) -> None:
    client = _filtered(sidecar, stream)
    message = {"role": "system", "content": f"the {BLOCKED} are 1234"}
    _refused(client.post("/v1/sessions", json={"messages": [message]}, headers=USER), "messages")
    meta = {"metadata": {"note": BLOCKED}}
    _refused(client.post("/v1/sessions", json=meta, headers=USER), "metadata")
    assert not [k for k in sidecar.state if k.startswith("session:")]


@pytest.mark.parametrize("streamed", [False, True])
def test_a_stored_history_with_a_blocked_term_never_reaches_the_model(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
    streamed: bool,
) -> None:
    # Stored before the term was blocked (or restored from the archive).
    unfiltered = make_client(sidecar, stream)
    history = [{"role": "system", "content": f"remember: the {BLOCKED} are 1234"}]
    created = unfiltered.post("/v1/sessions", json={"messages": history}, headers=USER)
    assert created.status_code == 201
    client = _filtered(sidecar, stream)
    body = {**CHAT, "session_id": created.get_json()["id"], "stream": streamed}
    _refused(client.post("/v1/chat/completions", json=body, headers=USER), "session_id")
    assert not [m for _, m, _ in sidecar.invocations if m == "generate"]
    assert stream.closed == 0  # no stream was opened either


def test_jobs_attachments_and_embeddings_are_filtered(
    sidecar: FakeSidecar,  # noqa: F811
    stream: FakeStream,  # noqa: F811
) -> None:
    client = _filtered(sidecar, stream)
    job = {**CHAT, "messages": [{"role": "user", "content": f"say {BLOCKED}"}]}
    _refused(client.post("/v1/jobs", json=job, headers=USER), "messages")
    upload = {"filename": f"{BLOCKED}.txt", "mime_type": "text/plain", "size": 1, "sha256": "0"}
    _refused(client.post("/v1/attachments", json=upload, headers=USER), "filename")
    embed = {"model": "all-MiniLM-L6-v2", "input": ["fine", f"the {BLOCKED}"]}
    _refused(client.post("/v1/embeddings", json=embed, headers=USER), "input")
    assert sidecar.invocations == []
    assert not [t for t, _ in sidecar.published if t != "audit"]
