"""Tool-call formats per model family: parsing the model's text back into OpenAI calls,
forced-call grammars that llguidance accepts, and the fallback to text."""

from __future__ import annotations

import json
from typing import Any

import pytest

from autoglm.core.schemas import GenerateRequest
from autoglm.inference.adapters import GLMAdapter, LlamaAdapter, QwenAdapter, adapter_for
from autoglm.inference.tools import GLM4Format, HermesFormat, LlamaJsonFormat, ToolFormat

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


def _req(**kw: Any) -> GenerateRequest:
    return GenerateRequest.model_validate(
        {"messages": [{"role": "user", "content": "q"}], "tools": TOOLS, **kw}
    )


def _calls(fmt: ToolFormat, text: str, **kw: Any) -> list[tuple[str, Any]]:
    content, calls = fmt.parse(text, _req(**kw))
    assert content == ("" if calls else text)
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def test_glm4_format() -> None:
    fmt = GLM4Format()
    assert _calls(fmt, 'get_weather\n{"city": "Paris"}') == [("get_weather", {"city": "Paris"})]
    two = 'get_weather\n{"city": "Rome"}\nget_time\n{"zone": "UTC"}'
    assert _calls(fmt, two) == [("get_weather", {"city": "Rome"}), ("get_time", {"zone": "UTC"})]
    assert _calls(fmt, two, parallel_tool_calls=False) == [("get_weather", {"city": "Rome"})]
    glm45 = (
        "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Oslo</arg_value>\n"
        "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>"
    )
    assert _calls(fmt, glm45) == [("get_weather", {"city": "Oslo", "days": 3})]
    # Not calls: plain text, unknown tools, broken JSON stay text content.
    for text in ["Hello there", 'unknown\n{"a": 1}', "get_weather\n{broken", "get_weather"]:
        assert _calls(fmt, text) == []


def test_llama3_json_format() -> None:
    fmt = LlamaJsonFormat()
    one = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
    assert _calls(fmt, one) == [("get_weather", {"city": "Paris"})]
    assert _calls(fmt, "<|python_tag|>" + one + '; {"name": "get_time", "parameters": {}}') == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]
    assert _calls(fmt, '{"name": "get_time", "arguments": "{\\"zone\\": \\"UTC\\"}"}') == [
        ("get_time", {"zone": "UTC"})
    ]
    assert _calls(fmt, '{"foo": 1}') == [] and _calls(fmt, "It is sunny.") == []


def test_hermes_format() -> None:
    fmt = HermesFormat()
    text = '<tool_call>\n{"name": "get_time", "arguments": {"zone": "CET"}}\n</tool_call>'
    assert _calls(fmt, text) == [("get_time", {"zone": "CET"})]
    assert _calls(fmt, "Sure. " + text) == []  # text besides calls: kept as text
    assert _calls(fmt, "<tool_call>{not json}</tool_call>") == []


@pytest.mark.parametrize("fmt", [GLM4Format(), LlamaJsonFormat(), HermesFormat()])
def test_rendered_call_parses_back(fmt: ToolFormat) -> None:
    text = fmt.render_call("get_weather", '{"city": "Rome"}')
    assert _calls(fmt, text) == [("get_weather", {"city": "Rome"})]
    assert fmt.maybe_call(text[:3], _req())
    grammar = fmt.forced_grammar(_req(tool_choice="required"))
    assert grammar is not None and "get_weather" in grammar and "get_time" in grammar
    named = fmt.forced_grammar(
        _req(tool_choice={"type": "function", "function": {"name": "get_time"}})
    )
    assert named is not None and "get_weather" not in named
    assert fmt.forced_grammar(_req(tool_choice="auto")) is None


def test_families_pick_their_format() -> None:
    assert isinstance(adapter_for("glm4").tool_format, GLM4Format)
    assert isinstance(adapter_for("llama").tool_format, LlamaJsonFormat)
    assert isinstance(adapter_for("qwen2").tool_format, HermesFormat)
    assert isinstance(GLMAdapter().tool_format, GLM4Format)
    assert isinstance(LlamaAdapter().tool_format, LlamaJsonFormat)
    assert isinstance(QwenAdapter().tool_format, HermesFormat)


def test_glm_maybe_call_holds_back_only_possible_calls() -> None:
    fmt, req = GLM4Format(), _req()
    assert fmt.maybe_call("get_w", req) and fmt.maybe_call("get_weather\n{", req)
    assert not fmt.maybe_call("Hello", req) and not fmt.maybe_call("get_wx\n", req)


@pytest.mark.parametrize("fmt", [GLM4Format(), LlamaJsonFormat(), HermesFormat()])
def test_partial_calls_grow_with_the_text(fmt: ToolFormat) -> None:
    """Streaming reads calls as they are written: each prefix of two canonical calls
    gives argument texts that only grow, ending in the calls' exact arguments."""
    first = fmt.render_call("get_weather", '{"city":"Pa}ris","n":[1,{"x":2}]}')
    text = first + fmt.separator + fmt.render_call("get_time", "{}")
    seen: list[str] = []
    for end in range(len(text) + 1):
        calls = fmt.partial_calls(text[:end])
        for i, call in enumerate(calls):
            if i < len(seen):
                assert call.arguments.startswith(seen[i])
                seen[i] = call.arguments
            else:
                seen.append(call.arguments)
    assert seen == ['{"city":"Pa}ris","n":[1,{"x":2}]}', "{}"]
    calls = fmt.canonical_calls(text)
    assert calls is not None
    assert [c.function.arguments for c in calls] == seen
