"""The Responses API through the whole mesh with the official ``openai`` SDK, unchanged:
plain, streamed, chained, tools, structured output, background, cancel, delete, input
items; a chain continued by another gateway process; a response restored from the
archive after the state store lost it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import Mesh
from tests.support.archive import has_version
from tests.support.polling import wait_for
from tests.support.stack import start_app, wait_http_ok
from tests.support.tokens import bearer

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def _client(url: str, token: dict[str, str]) -> openai.OpenAI:
    api_key = token["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0)


@pytest.fixture(scope="module")
def client(mesh: Mesh) -> openai.OpenAI:
    return _client(mesh.gateway_url, mesh.headers())


@pytest.fixture(scope="module")
def second_gateway(mesh: Mesh) -> Iterator[str]:
    """Another gateway process (same app id, its own daprd) on the same stack."""
    with ExitStack() as stack:
        gw = start_app(mesh.backing, stack, "gateway", "autoglm.gateway", protocol="http")
        assert gw.app is not None
        url = f"http://127.0.0.1:{gw.app_port}"
        wait_http_ok(f"{url}/readyz", gw.app)
        yield url


def test_plain_and_streamed(client: openai.OpenAI) -> None:
    r = client.responses.create(model="demo-glm", input="Hello", max_output_tokens=8)
    assert r.object == "response" and r.status in ("completed", "incomplete")
    assert isinstance(r.output_text, str)
    assert r.usage is not None and r.usage.input_tokens > 0 and r.usage.output_tokens >= 1

    events = list(
        client.responses.create(model="demo-glm", input="Hello", max_output_tokens=8, stream=True)
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    final = events[-1].response  # type: ignore[union-attr]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == final.output_text
    assert client.responses.retrieve(final.id).output_text == final.output_text


def test_three_turn_chain_and_input_items(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="demo-glm", input="My name is Ada.", instructions="Be brief", max_output_tokens=4
    )
    second = client.responses.create(
        model="demo-glm", input="And yours?", previous_response_id=first.id, max_output_tokens=4
    )
    third = client.responses.create(
        model="demo-glm", input="Bye", previous_response_id=second.id, max_output_tokens=4
    )
    assert third.previous_response_id == second.id
    # Each turn sees the whole conversation: the prompt grows.
    assert first.usage and second.usage and third.usage
    assert first.usage.input_tokens < second.usage.input_tokens < third.usage.input_tokens
    items = client.responses.input_items.list(third.id)
    assert [i.type for i in items.data] == ["message"]
    assert items.data[0].content[0].text == "Bye"  # type: ignore[union-attr]


def test_function_tool_loop(client: openai.OpenAI) -> None:
    call_turn = client.responses.create(
        model="demo-glm",
        input="Weather in Oslo?",
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_output_tokens=64,
    )
    calls = [item for item in call_turn.output if item.type == "function_call"]
    assert calls, call_turn.output
    json.loads(calls[0].arguments)  # arguments valid by construction
    assert calls[0].name == "get_weather"
    answer = client.responses.create(
        model="demo-glm",
        previous_response_id=call_turn.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny"}],
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=8,
    )
    assert answer.output[0].type == "message"
    assert answer.status in ("completed", "incomplete")


def test_json_schema_output(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"colour": {"enum": ["red", "blue"]}},
        "required": ["colour"],
        "additionalProperties": False,
    }
    r = client.responses.create(
        model="demo-glm",
        input="A colour?",
        text={
            "format": {"type": "json_schema", "name": "colour", "schema": schema, "strict": True}
        },
        max_output_tokens=32,
    )
    assert r.status == "completed", r
    assert json.loads(r.output_text)["colour"] in ("red", "blue")


def _finished(client: openai.OpenAI, rid: str) -> Any:
    found: list[Any] = []

    def done() -> bool:
        found[:] = [client.responses.retrieve(rid)]
        return found[0].status not in ("queued", "in_progress")

    wait_for("the background response finished", done, timeout=90, every=0.3)
    return found[0]


def test_background_retrieve_and_resume(client: openai.OpenAI) -> None:
    queued = client.responses.create(
        model="demo-glm", input="Hello", background=True, max_output_tokens=8
    )
    assert queued.status == "queued" and queued.background
    done = _finished(client, queued.id)
    assert done.status in ("completed", "incomplete") and done.usage is not None
    everything = list(client.responses.retrieve(queued.id, stream=True))
    assert everything[0].type == "response.created" and everything[-1].response.id == queued.id  # type: ignore[union-attr]
    resumed = list(client.responses.retrieve(queued.id, stream=True, starting_after=1))
    assert [e.sequence_number for e in resumed] == [e.sequence_number for e in everything[2:]]
    # background with stream: the same events, live until it finished.
    streamed = list(
        client.responses.create(
            model="demo-glm", input="Hello", background=True, stream=True, max_output_tokens=8
        )
    )
    assert streamed[0].type == "response.created"
    assert streamed[0].response.status == "queued"  # type: ignore[union-attr]
    assert streamed[-1].type in ("response.completed", "response.incomplete")


def test_cancel_and_delete(mesh: Mesh, client: openai.OpenAI) -> None:
    queued = client.responses.create(
        model="demo-glm", input="Tell a long story", background=True, max_output_tokens=2000
    )
    cancelled = client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    # The cancel reached inference (recorded for whichever replica runs the request).
    store = mesh.backing.redis_client()
    assert store.exists(f"inference||cancel:inference:acme:{queued.id}")
    assert client.responses.cancel(queued.id).status == "cancelled"  # idempotent
    assert client.responses.retrieve(queued.id).status == "cancelled"

    sync = client.responses.create(model="demo-glm", input="Hi", max_output_tokens=4)
    with pytest.raises(openai.BadRequestError):
        client.responses.cancel(sync.id)
    other = _client(mesh.gateway_url, mesh.headers("globex"))
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(sync.id)
    client.responses.delete(sync.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(sync.id)


def test_chain_continues_on_another_gateway_process(
    mesh: Mesh, client: openai.OpenAI, second_gateway: str
) -> None:
    first = client.responses.create(model="demo-glm", input="Remember 7.", max_output_tokens=4)
    elsewhere = _client(second_gateway, mesh.headers())
    second = elsewhere.responses.create(
        model="demo-glm", input="What number?", previous_response_id=first.id, max_output_tokens=4
    )
    assert second.previous_response_id == first.id
    assert first.usage and second.usage
    assert second.usage.input_tokens > first.usage.input_tokens  # it saw turn 1
    # And back: the first gateway continues the chain the second one extended.
    third = client.responses.create(
        model="demo-glm", input="Thanks", previous_response_id=second.id, max_output_tokens=4
    )
    assert third.usage and third.usage.input_tokens > second.usage.input_tokens


def test_response_lost_from_the_state_store_is_restored_from_the_archive(
    mesh: Mesh, client: openai.OpenAI
) -> None:
    r = client.responses.create(model="demo-glm", input="Keep me", max_output_tokens=4)
    store = mesh.backing.redis_client()
    key = f"gateway||response:acme:{r.id}"
    version = json.loads(store.hget(key, "data"))["version"]

    # The archive takes the record just after the reply (bulk publish, bulk delivery).
    def archived() -> bool:
        return has_version(mesh.archive_root, "acme", r.id, version)

    wait_for("the record in the archive", archived, 30)
    assert store.delete(key) == 1  # as after a flush
    back = client.responses.retrieve(r.id)
    assert back.output_text == r.output_text and back.usage == r.usage
    assert store.exists(key)  # written back
    # The chain continues from the restored record.
    nxt = client.responses.create(
        model="demo-glm", input="More", previous_response_id=r.id, max_output_tokens=4
    )
    assert nxt.usage and r.usage and nxt.usage.input_tokens > r.usage.input_tokens


def test_deleted_response_stays_deleted_when_the_state_store_is_lost(mesh: Mesh) -> None:
    url, headers = mesh.gateway_url, bearer("acme", "user", mesh.backing.secrets["jwt"])
    body = {"model": "demo-glm", "input": "Forget me", "max_output_tokens": 4}
    rid = httpx.post(f"{url}/v1/responses", json=body, headers=headers, timeout=60).json()["id"]

    def archived() -> list[object]:
        return list(mesh.archive_root.rglob(f"sessions/*/acme/{rid}/*/context.bin"))

    wait_for("the response's snapshot in the archive", archived, timeout=30)
    assert httpx.delete(f"{url}/v1/responses/{rid}", headers=headers, timeout=30).status_code == 200
    wait_for("the deleted response's versions removed", lambda: not archived(), timeout=30)
    store = mesh.backing.redis_client()
    assert store.delete(f"gateway||response:acme:{rid}") == 1  # the tombstone is lost
    after = httpx.get(f"{url}/v1/responses/{rid}", headers=headers, timeout=30)
    assert after.status_code == 404, after.text
