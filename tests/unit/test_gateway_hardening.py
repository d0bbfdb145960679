"""Issue 10 (no tenant can hurt another): hostile input, masking and limits at the
gateway edge, against the fake sidecar."""

from __future__ import annotations

import json

import pytest

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
