from __future__ import annotations

import json

import pytest

from autoglm.core import schemas
from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
)
from autoglm.core.schemas import (
    MAX_JSON_DEPTH,
    GenerateRequest,
    InferenceRequestEvent,
    load_json_object,
    parse,
)
from autoglm.core.sidecar import Sidecar, path_segment


def test_invalid_json_is_a_400_naming_json() -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse(GenerateRequest, b"{not json")
    assert err.value.code == "invalid_json"


def test_validation_error_names_the_field() -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse(GenerateRequest, {"prompt": "hi", "sampling": {"max_tokens": 0}})
    assert err.value.param == "sampling.max_tokens"
    assert "sampling.max_tokens" in err.value.message


def test_exactly_one_of_messages_or_prompt() -> None:
    with pytest.raises(InvalidRequestError, match="exactly one"):
        parse(GenerateRequest, {"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    with pytest.raises(InvalidRequestError, match="exactly one"):
        parse(GenerateRequest, {})


def test_unknown_field_is_refused() -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse(GenerateRequest, {"prompt": "a", "temprature": 0})
    assert err.value.param == "temprature"


def test_request_event_carries_its_id_into_the_request() -> None:
    event = parse(InferenceRequestEvent, {"request_id": "r1", "request": {"prompt": "x"}})
    assert event.request.request_id == "r1"
    assert event.reply_topic == "inference.results"


@pytest.mark.parametrize(
    "exc", [ConflictError("c"), OverloadedError("o"), InvalidRequestError("bad", param="n")]
)
def test_errors_round_trip_through_payload(exc: AutoGLMError) -> None:
    back = AutoGLMError.from_payload(exc.to_payload())
    assert back.status == exc.status
    assert back.message == exc.message and back.code == exc.code and back.param == exc.param


def test_overloaded_is_a_503() -> None:
    assert isinstance(
        AutoGLMError.from_payload(OverloadedError("x").to_payload()), UnavailableError
    )


@pytest.mark.parametrize(
    "name",
    [
        "session:acme:x/../../statestore/session:victim:abc",
        "..",
        ".",
        "",
        "a?b",
        "a#b",
        "a%2Fb",
        "a\\b",
        "a b",
        "a\nb",
    ],
)
def test_names_that_could_leave_their_url_segment_are_refused(name: str) -> None:
    """State keys, topics, secret names and methods become daprd URL path segments; an
    HTTP client would resolve ``..`` and reach another tenant's key or another route."""
    with pytest.raises(InvalidRequestError, match="not allowed"):
        path_segment(name, "state key")


def test_ordinary_keys_pass_unchanged() -> None:
    key = "session:acme:sess-0f1e.v2_x"
    assert path_segment(key, "state key") == key


def test_sidecar_refuses_a_traversing_key_before_any_request() -> None:
    sidecar = Sidecar(http_port=1)  # nothing listens there: a request would be a 503
    with pytest.raises(InvalidRequestError):
        sidecar.get_state("session:acme:x/../../secrets/vault/jwt")
    with pytest.raises(InvalidRequestError):
        sidecar.publish("../state/statestore", {})


# -- the decoded-body check, skipped where the text cannot fail it (issue 15) --------------
@pytest.mark.parametrize(
    "body",
    [
        b'{"a": "\\ud800"}',  # an escaped lone surrogate in a value
        b'{"\\uDBFF": 1}',  # ... in a key, upper-case hex
        '{"a": "\ud800"}',  # a lone surrogate in the text itself (str body)
        b'{"a": "\xed\xa0\x80"}',  # its UTF-8-style bytes (json.loads passes them)
        '{"a": ["\\udc00"]}'.encode("utf-16"),  # another encoding json.loads detects
    ],
)
def test_lone_surrogates_are_refused_in_any_form(body: bytes | str) -> None:
    with pytest.raises(InvalidRequestError, match="surrogate"):
        load_json_object(body)


@pytest.mark.parametrize("data", [b'{"a": [[[]]]}', b'{"a": "\\ud83d\\ude00"}'])
def test_bodies_load_as_json_loads_them(data: bytes) -> None:
    assert load_json_object(data) == json.loads(data)


def test_the_walk_runs_only_where_the_text_could_fail_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walked: list[object] = []
    monkeypatch.setattr(schemas, "_check_decoded", walked.append)
    plain = b'{"messages": [{"role": "user", "content": "Say one word. [x] {y} \\u00e9"}]}'
    load_json_object(plain)
    assert walked == []
    # Containers beyond the limit's count, a surrogate escape (even a harmless pair),
    # a surrogate in the text: walked.
    deep = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    for body in ('{"a": ' + deep + "}", '{"a": "\\ud83d\\ude00"}'):
        load_json_object(body)
    assert len(walked) == 2


def test_a_body_at_the_limit_is_still_refused_past_it() -> None:
    ok = "[" * (MAX_JSON_DEPTH - 1) + "]" * (MAX_JSON_DEPTH - 1)
    assert load_json_object('{"a": ' + ok + "}")
    too_deep = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
    with pytest.raises(InvalidRequestError, match="nested too deeply"):
        load_json_object('{"a": ' + too_deep + "}")
