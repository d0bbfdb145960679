"""Constrained decoding, tool calls, log-probabilities, n and penalties in the engine,
with the demo model's random weights: every constrained output must parse and validate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import ChatMessage, GenerateRequest, SamplingParams
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.outputs import stream_frames
from autoglm.inference.sampling import SequenceSampler

SCHEMAS: dict[str, dict[str, Any]] = {
    "nested": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 10},
            "address": {
                "type": "object",
                "properties": {
                    "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                    "city": {"enum": ["Paris", "Rome", "Oslo"]},
                },
                "required": ["zip", "city"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "address"],
        "additionalProperties": False,
    },
    "array": {
        "type": "object",
        "properties": {
            "scores": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": 100},
                "minItems": 1,
                "maxItems": 4,
            }
        },
        "required": ["scores"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {
            "answer": {"enum": ["yes", "no", "maybe"]},
            "sure": {"type": "boolean"},
        },
        "required": ["answer", "sure"],
        "additionalProperties": False,
    },
    "list_of_objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 999}},
            "required": ["id"],
            "additionalProperties": False,
        },
        "maxItems": 3,
    },
}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"enum": ["Paris", "Rome"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def engine(demo_model_dir: Path) -> Iterator[AutoGLMEngine]:
    eng = AutoGLMEngine(demo_model_dir, model_id="demo-glm", prefix_cache_mb=0)
    yield eng
    eng.close()


def _chat(text: str, max_tokens: int = 96, **kw: Any) -> GenerateRequest:
    sampling = kw.pop("sampling", {})
    return GenerateRequest.model_validate(
        {
            "messages": [{"role": "user", "content": text}],
            "sampling": {"max_tokens": max_tokens, **sampling},
            **kw,
        }
    )


def _fmt(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


def test_hundreds_of_constrained_outputs_parse_and_validate(engine: AutoGLMEngine) -> None:
    """200 sampled outputs over four schemas (nested objects, arrays, enums, required
    fields), 40 of them streamed, all in shared batches."""
    handles = []
    for i in range(160):
        name = list(SCHEMAS)[i % len(SCHEMAS)]
        req = _chat(
            f"item {i}",
            response_format=_fmt(SCHEMAS[name]),
            sampling={"temperature": 1.0, "seed": i},
        )
        handles.append((name, engine.submit(req), False))
    for i in range(40):
        name = list(SCHEMAS)[i % len(SCHEMAS)]
        req = _chat(f"stream {i}", response_format=_fmt(SCHEMAS[name]), sampling={"seed": i})
        handles.append((name, engine.submit(req, stream=True), True))
    stopped = 0
    for name, handle, streamed in handles:
        text = "".join(handle) if streamed else None
        result = engine.finish(handle, handle.result(300))
        if streamed:
            assert text == result.text
        if result.finish_reason == "length":
            continue  # max_tokens cut the value off: documented, not a valid document
        assert result.finish_reason == "stop"
        jsonschema.validate(json.loads(result.text), SCHEMAS[name])
        stopped += 1
    assert stopped >= 190, f"only {stopped} of 200 outputs completed"


def test_length_cut_is_reported(engine: AutoGLMEngine) -> None:
    req = _chat("x", max_tokens=3, response_format=_fmt(SCHEMAS["nested"]))
    result = engine.generate(req)
    assert result.finish_reason == "length"
    assert result.text.startswith('{"')
    with pytest.raises(ValueError):
        json.loads(result.text)


def test_json_object_regex_and_choice(engine: AutoGLMEngine) -> None:
    for seed in range(10):
        sampling = {"seed": seed}
        choice = engine.generate(
            _chat(
                "a", structured_outputs={"choice": ["red", "green", "dark blue"]}, sampling=sampling
            )
        )
        assert choice.text in ("red", "green", "dark blue") and choice.finish_reason == "stop"
        regex = engine.generate(
            _chat("b", structured_outputs={"regex": r"[A-Z]{2}-[0-9]{3}"}, sampling=sampling)
        )
        assert len(regex.text) == 6 and regex.text[2] == "-" and regex.text[3:].isdigit()
        obj = engine.generate(
            _chat(
                "c",
                max_tokens=200,
                structured_outputs={
                    "json": {"type": "object", "properties": {}, "additionalProperties": False}
                },
                sampling=sampling,
            )
        )
        assert json.loads(obj.text) == {}


def test_constraint_on_a_raw_prompt(engine: AutoGLMEngine) -> None:
    req = GenerateRequest(prompt="The answer:", structured_outputs={"choice": ["A", "B"]})
    assert engine.generate(req).text in ("A", "B")


@pytest.mark.parametrize(
    ("fmt", "needle"),
    [
        (_fmt({"type": "nonsense"}), "type"),
        (_fmt({"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}), "nowhere"),
        ({"type": "json_schema"}, "json_schema"),
    ],
)
def test_invalid_schema_is_refused_naming_the_problem(
    engine: AutoGLMEngine, fmt: dict[str, Any], needle: str
) -> None:
    with pytest.raises((InvalidRequestError, ValueError)) as exc:
        engine.submit(_chat("x", response_format=fmt))
    assert needle in str(exc.value)


def test_uncompilable_regex_and_grammar_are_refused(engine: AutoGLMEngine) -> None:
    with pytest.raises(InvalidRequestError, match="regex"):
        engine.submit(_chat("x", structured_outputs={"regex": "a(b"}))
    with pytest.raises(InvalidRequestError):
        engine.submit(_chat("x", structured_outputs={"grammar": "start: undefined_rule"}))


def test_forced_tool_calls_validate_against_their_schemas(engine: AutoGLMEngine) -> None:
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    for seed in range(12):
        result = engine.generate(
            _chat(
                "weather?",
                max_tokens=400,  # parallel calls: the random model may chain a few
                tools=[WEATHER, TIME],
                tool_choice="required",
                parallel_tool_calls=seed % 2 == 0,
                sampling={"seed": seed},
            )
        )
        assert result.finish_reason == "tool_calls", result.text
        assert result.tool_calls and result.text == ""
        if seed % 2:
            assert len(result.tool_calls) == 1
        for call in result.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
    named = engine.generate(
        _chat(
            "time?",
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    )
    assert [c.function.name for c in named.tool_calls or []] == ["get_time"]


def test_tool_calls_stream_as_deltas(engine: AutoGLMEngine) -> None:
    req = _chat("w", tools=[WEATHER], tool_choice="required", parallel_tool_calls=False)
    handle = engine.submit(req, stream=True)
    frames = list(stream_frames(handle))
    result = engine.finish(handle, handle.result(60))
    deltas = [f["tool_calls"][0] for f in frames if "tool_calls" in f]
    assert deltas[0]["function"]["name"] == "get_weather" and deltas[0]["id"]
    args = "".join(d["function"]["arguments"] for d in deltas)
    assert result.tool_calls and args == result.tool_calls[0].function.arguments
    assert deltas[0]["id"] == result.tool_calls[0].id
    assert len(deltas) > 3  # the arguments come in pieces, as they are generated
    assert not any(f.get("delta") for f in frames)


def test_tool_history_is_rendered_and_none_ignores_tools(engine: AutoGLMEngine) -> None:
    call = {"id": "call_1", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
    messages = [
        ChatMessage(role="user", content="weather in Rome?"),
        ChatMessage(role="assistant", tool_calls=[call]),  # type: ignore[list-item]
        ChatMessage(role="tool", tool_call_id="call_1", content="sunny"),
    ]
    loaded = engine.get(None)
    prompt = loaded.adapter.chat_prompt(loaded.tokenizer, messages, None)
    assert "get_weather\n" in prompt and "sunny" in prompt
    req = GenerateRequest(
        messages=messages,
        tools=[WEATHER],
        tool_choice="none",
        sampling=SamplingParams(max_tokens=4),
    )  # type: ignore[list-item]
    assert engine.generate(req).tool_calls is None


def test_n_is_one_group_with_distinct_seeded_choices(engine: AutoGLMEngine) -> None:
    req = _chat("pick", max_tokens=12, n=3, sampling={"seed": 5, "logprobs": True})
    result = engine.generate(req)
    assert len(result.choices) == 3
    assert result.completion_tokens == sum(c.completion_tokens for c in result.choices)
    single = engine.generate(_chat("pick", max_tokens=12, sampling={"seed": 6}))
    assert result.choices[1].text == single.text  # choice i is seeded seed + i
    assert all(c.logprobs for c in result.choices)
    constrained = engine.generate(
        _chat("x", n=4, response_format=_fmt(SCHEMAS["enum"]), sampling={"seed": 1})
    )
    for choice in constrained.choices:
        jsonschema.validate(json.loads(choice.text), SCHEMAS["enum"])


def test_logprobs_top_alternatives_and_stream(engine: AutoGLMEngine) -> None:
    req = _chat(
        "hi", max_tokens=8, sampling={"temperature": 0, "logprobs": True, "top_logprobs": 5}
    )
    result = engine.generate(req)
    assert result.logprobs and len(result.logprobs) <= 8
    for entry in result.logprobs:
        assert len(entry.top_logprobs) == 5
        assert entry.top_logprobs[0].token == entry.token  # greedy: the top token
        assert entry.logprob <= 0 and entry.bytes is not None
    handle = engine.submit(req, stream=True)
    streamed = [lp for f in stream_frames(handle) for lp in f.get("logprobs", [])]
    assert [e["token"] for e in streamed] == [e.token for e in result.logprobs]


def _sampler(**params: Any) -> SequenceSampler:
    return SequenceSampler(SamplingParams(**params), None, {0}, prompt_ids=[3])


def test_penalties_bias_and_min_tokens_change_the_logits() -> None:
    logits = torch.tensor([1.0, 2.0, 3.0, 4.0])
    rep = _sampler(repetition_penalty=2.0).process(logits)
    assert rep[3].item() == 2.0  # seen in the prompt: 4 / 2
    freq = _sampler(frequency_penalty=1.0, presence_penalty=0.5)
    freq.next_token(torch.tensor([0.0, 0.0, 9.0, 0.0]))
    freq.next_token(torch.tensor([0.0, 0.0, 9.0, 0.0]))
    assert freq.process(logits)[2].item() == pytest.approx(3.0 - 2 * 1.0 - 0.5)
    bias = _sampler(logit_bias={1: 100.0}, temperature=0)
    assert bias.next_token(logits)[0] == 1
    early = _sampler(min_tokens=2, temperature=0)
    assert early.next_token(torch.tensor([9.0, 1.0, 0.0, 0.0])) == (1, "")
    assert early.next_token(torch.tensor([9.0, 1.0, 0.0, 0.0])) == (1, "")
    assert early.next_token(torch.tensor([9.0, 1.0, 0.0, 0.0])) == (0, "eos")
    ignore = _sampler(ignore_eos=True, temperature=0)
    assert ignore.next_token(torch.tensor([9.0, 1.0, 0.0, 0.0])) == (0, "")
    extra = _sampler(stop_token_ids=[2], temperature=0)
    assert extra.next_token(torch.tensor([0.0, 1.0, 9.0, 0.0])) == (2, "eos")


def test_ignore_eos_runs_to_max_tokens(engine: AutoGLMEngine) -> None:
    result = engine.generate(_chat("x", max_tokens=20, sampling={"ignore_eos": True}))
    assert result.finish_reason == "length" and result.completion_tokens == 20


def test_batched_masks_match_per_row_processing(engine: AutoGLMEngine) -> None:
    """One step over a batch mixing free, penalised and constrained rows: the batched
    mask path picks what each row's own processors would."""
    from autoglm.inference.outputs import prepare
    from autoglm.inference.sampling import next_tokens

    loaded = engine.get(None)
    vocab = int(loaded.model.get_output_embeddings().weight.shape[0])
    torch.manual_seed(0)
    logits = torch.randn(4, vocab)
    reqs = [
        _chat("a", sampling={"temperature": 0}),
        _chat("b", sampling={"temperature": 0, "presence_penalty": 1.0}),
        _chat("c", response_format=_fmt(SCHEMAS["enum"]), sampling={"temperature": 0}),
        _chat("d", structured_outputs={"choice": ["x", "y"]}, sampling={"temperature": 0}),
    ]

    def samplers() -> list[SequenceSampler]:
        return [
            prepare(loaded, r).sampler(r.sampling, None, set(loaded.eos_token_ids), [1])
            for r in reqs
        ]

    batched = next_tokens(samplers(), logits)
    one_by_one = [s.next_token(logits[i]) for i, s in enumerate(samplers())]
    assert batched == one_by_one
    assert batched[0][0] == int(torch.argmax(logits[0]))
    assert loaded.tokenizer.decode([batched[2][0]]) == "{"


def test_grammars_are_compiled_once_per_schema(engine: AutoGLMEngine) -> None:
    compiler = engine.get(None).grammar()
    schema = {
        "type": "object",
        "properties": {"once": {"type": "boolean"}},
        "required": ["once"],
        "additionalProperties": False,
    }
    before = compiler.compilations
    results = [
        engine.generate(_chat(f"q{i}", response_format=_fmt(schema), sampling={"seed": i}))
        for i in range(3)
    ]
    assert compiler.compilations == before + 1
    assert all(json.loads(r.text)["once"] in (True, False) for r in results)
    with pytest.raises(InvalidRequestError):
        engine.submit(_chat("x", structured_outputs={"regex": "a(b"}))
    with pytest.raises(InvalidRequestError):  # the failure is cached too, and still a 400
        engine.submit(_chat("x", structured_outputs={"regex": "a(b"}))
