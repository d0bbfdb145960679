from __future__ import annotations

import pytest

from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    InvalidRequestError,
    OverloadedError,
    UnavailableError,
)
from autoglm.core.schemas import GenerateRequest, InferenceRequestEvent, parse
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
