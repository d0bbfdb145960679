"""Tool-call formats per model family: how tools are described to a model whose chat
template does not take them, the grammar that forces a call (``tool_choice`` 'required'
or a named function), and the parser that turns the model's text back into OpenAI
``tool_calls``.

- GLM-4 (``GLM4Format``): a call is the function's name on its own line, then its
  arguments as a JSON object (``get_weather\\n{"city": "Paris"}``); parallel calls follow
  each other on new lines. GLM-4.5's ``<tool_call>name<arg_key>k</arg_key><arg_value>v
  </arg_value></tool_call>`` blocks are parsed too.
- Llama 3 (``LlamaJsonFormat``): ``{"name": "get_weather", "parameters": {...}}``, calls
  separated by ``;``, an optional ``<|python_tag|>`` first.
- Hermes / Qwen (``HermesFormat``): ``<tool_call>{"name": ..., "arguments": {...}}
  </tool_call>`` blocks.

Text that does not parse as calls of the offered tools stays text content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import (
    GenerateRequest,
    NamedToolChoice,
    ToolCall,
    ToolCallFunction,
    ToolDef,
)
from autoglm.inference.constraints import lark_literal, schema_problem

_DECODER = json.JSONDecoder()


def _arguments(value: object) -> str:
    return json.dumps(value, ensure_ascii=False)


def _schema(tool: ToolDef, index: int) -> dict[str, Any]:
    schema = tool.function.parameters or {"type": "object", "properties": {}}
    problem = schema_problem(schema)
    if problem:
        raise InvalidRequestError(
            f"tools[{index}].function.parameters: {problem}",
            param=f"tools.{index}.function.parameters",
            code="invalid_schema",
        )
    # Compact JSON: a model cannot pad forced arguments with endless whitespace.
    return {**schema, "x-guidance": {"whitespace_flexible": False}}


def _offered(request: GenerateRequest) -> list[ToolDef]:
    """The tools a forced call may use: the named one, or all of them."""
    tools = request.tools or []
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        return [t for t in tools if t.function.name == choice.function.name]
    return tools


@dataclass
class PartialCall:
    """A call as far as the text goes: its name, its arguments' JSON text so far, and
    whether that JSON object is complete."""

    name: str
    arguments: str
    complete: bool
    #: Where the text after this call (and its separator) starts.
    end: int


def json_end(text: str, start: int) -> int | None:
    """Index just past the JSON object starting at ``text[start]``, or None while it is
    incomplete (strings and nesting are followed, so braces in strings do not count)."""
    depth, in_string, escaped = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


class ToolFormat:
    name: ClassVar[str] = "hermes"
    #: Between parallel calls in forced output.
    separator: ClassVar[str] = "\n"
    #: What precedes a call's arguments (group ``name``), and what follows them up to
    #: the next call, in the family's canonical layout (the forced grammar's).
    header: ClassVar[re.Pattern[str]] = re.compile(
        r'\s*<tool_call>\s*\{"name":\s*"(?P<name>[A-Za-z0-9_.-]+)",\s*"arguments":\s*(?=\{)'
    )
    trailer: ClassVar[re.Pattern[str]] = re.compile(r"\s*\}\s*</tool_call>\s*")
    #: Stands for a call's arguments in the format shown to the model (``describe``).
    arguments_placeholder: ClassVar[str] = "{<arguments>}"

    # -- prompt ----------------------------------------------------------------------
    def describe(self, tools: list[ToolDef]) -> str:
        """Tools as a system message, for chat templates that do not render them."""
        specs = "\n".join(json.dumps(t.model_dump(mode="json", exclude_none=True)) for t in tools)
        return (
            "You can call these functions:\n"
            f"{specs}\n"
            "To call one, answer only with the call, in this format:\n"
            + self.render_call("<function name>", self.arguments_placeholder)
        )

    def render_call(self, name: str, arguments: str) -> str:
        """A past call as the model writes it (for templates without tool support)."""
        call = f'{{"name": {json.dumps(name)}, "arguments": {arguments}}}'
        return f"<tool_call>\n{call}\n</tool_call>"

    # -- forcing ---------------------------------------------------------------------
    def forced_grammar(self, request: GenerateRequest) -> str | None:
        """A Lark grammar allowing only calls of the offered tools, when the request
        forces one ('required' or a named function); None otherwise."""
        choice = request.tool_choice
        if not (choice == "required" or isinstance(choice, NamedToolChoice)):
            return None
        rules = []
        calls = []
        for i, tool in enumerate(_offered(request)):
            index = (request.tools or []).index(tool)
            rules.append(f"args{i}: %json {json.dumps(_schema(tool, index))}")
            calls.append(self.call_rule(tool.function.name, f"args{i}"))
        many = request.parallel_tool_calls and not isinstance(choice, NamedToolChoice)
        repeat = f" ({lark_literal(self.separator)} call)*" if many else ""
        return "\n".join([f"start: call{repeat}", "call: " + " | ".join(calls), *rules])

    def call_rule(self, name: str, args: str) -> str:
        head = '<tool_call>\n{"name": ' + json.dumps(name) + ', "arguments": '
        return f"{lark_literal(head)} {args} {lark_literal(chr(125) + chr(10) + '</tool_call>')}"

    # -- parsing ---------------------------------------------------------------------
    def parse(self, text: str, request: GenerateRequest) -> tuple[str, list[ToolCall]]:
        """(content, calls): the calls in ``text`` when all of it is calls of offered
        tools (content is then ""), else (text, [])."""
        names = {t.function.name for t in request.tools or []}
        try:
            calls = self.parse_calls(text.strip())
        except (ValueError, KeyError, TypeError):
            return text, []
        if not calls or any(c.function.name not in names for c in calls):
            return text, []
        if not request.parallel_tool_calls:
            calls = calls[:1]
        return "", calls

    def partial_calls(self, text: str) -> list[PartialCall]:
        """The calls in ``text`` as far as they go, read in the canonical layout: the
        incremental view streaming uses (arguments grow as text arrives)."""
        calls: list[PartialCall] = []
        pos = 0
        while True:
            head = self.header.match(text, pos)
            if head is None:
                return calls
            start = head.end()
            end = json_end(text, start)
            if end is None:
                calls.append(PartialCall(head["name"], text[start:].rstrip(), False, len(text)))
                return calls
            tail = self.trailer.match(text, end)
            pos = tail.end() if tail is not None else end
            if self.separator.strip():
                pos = _skip(text, pos, self.separator.strip())
            calls.append(PartialCall(head["name"], text[start:end], True, pos))
            if tail is None:
                return calls

    def canonical_calls(self, text: str) -> list[ToolCall] | None:
        """The calls when ``text`` is exactly calls in the canonical layout, with their
        arguments' text as written (so streamed pieces add up to it); else None."""
        calls = self.partial_calls(text)
        if not calls or not all(c.complete for c in calls) or text[calls[-1].end :].strip():
            return None
        out = []
        for call in calls:
            if not isinstance(json.loads(call.arguments), dict):
                return None
            out.append(
                ToolCall(function=ToolCallFunction(name=call.name, arguments=call.arguments))
            )
        return out

    def parse_calls(self, text: str) -> list[ToolCall]:
        canonical = self.canonical_calls(text)
        if canonical is not None:
            return canonical
        return self.parse_free(text)

    def parse_free(self, text: str) -> list[ToolCall]:
        """Calls written less canonically (other key order, arguments as a string...)."""
        return [
            _call(data["name"], data.get("arguments", {}))
            for data in map(json.loads, _tool_call_blocks(text))
        ]

    def maybe_call(self, text: str, request: GenerateRequest) -> bool:
        """Whether streamed text so far may still turn out to be a tool call (so it is
        held back rather than sent as content)."""
        stripped = text.lstrip()
        return "<tool_call>".startswith(stripped[:11]) or stripped.startswith("<tool_call>")


def _tool_call_blocks(text: str) -> list[str]:
    """What each ``<tool_call>...</tool_call>`` of ``text`` holds; a ValueError when
    anything stands outside them."""
    if re.sub(r"<tool_call>.*?</tool_call>", "", text, flags=re.S).strip():
        raise ValueError("text outside the calls")
    return re.findall(r"<tool_call>(.*?)</tool_call>", text, re.S)


def _skip(text: str, pos: int, literal: str) -> int:
    """``pos`` past ``literal`` (and whitespace) when it follows, else ``pos``."""
    rest = text[pos:].lstrip()
    if rest.startswith(literal):
        return len(text) - len(rest) + len(literal)
    return pos


def _call(name: object, arguments: object) -> ToolCall:
    if not isinstance(name, str):
        raise ValueError("name is not a string")
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    if not isinstance(arguments, dict):
        raise ValueError("arguments are not an object")
    return ToolCall(function=ToolCallFunction(name=name, arguments=_arguments(arguments)))


class HermesFormat(ToolFormat):
    pass


class GLM4Format(ToolFormat):
    name = "glm4"
    header = re.compile(r"\s*(?P<name>[A-Za-z0-9_.-]+)\n\s*(?=\{)")
    trailer = re.compile(r"\s*")
    arguments_placeholder = "{<arguments as a JSON object>}"

    def render_call(self, name: str, arguments: str) -> str:
        return f"{name}\n{arguments}"

    def call_rule(self, name: str, args: str) -> str:
        return f"{lark_literal(name + chr(10))} {args}"

    def parse_free(self, text: str) -> list[ToolCall]:
        if "<tool_call>" in text:
            return self._parse_glm45(text)
        calls = []
        rest = text
        while rest:
            name, sep, rest = rest.partition("\n")
            if not sep:
                raise ValueError("no arguments")
            args, end = _DECODER.raw_decode(rest.lstrip())
            calls.append(_call(name.strip(), args))
            rest = rest.lstrip()[end:].lstrip()
        return calls

    @staticmethod
    def _parse_glm45(text: str) -> list[ToolCall]:
        calls = []
        for block in _tool_call_blocks(text):
            name, _, body = block.strip().partition("<arg_key>")
            args: dict[str, Any] = {}
            for key, value in re.findall(
                r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", "<arg_key>" + body, re.S
            ):
                try:
                    args[key.strip()] = json.loads(value)
                except ValueError:
                    args[key.strip()] = value
            calls.append(_call(name.strip(), args))
        return calls

    def maybe_call(self, text: str, request: GenerateRequest) -> bool:
        stripped = text.lstrip()
        if stripped.startswith("<tool_call>") or "<tool_call>".startswith(stripped):
            return True
        first = stripped.split("\n", 1)[0]
        names = [t.function.name for t in request.tools or []]
        if "\n" in stripped:
            return first.strip() in names
        return any(n.startswith(first) for n in names)


class LlamaJsonFormat(ToolFormat):
    name = "llama3_json"
    separator = "; "
    header = re.compile(
        r'\s*(?:<\|python_tag\|>)?\s*\{"name":\s*"(?P<name>[A-Za-z0-9_.-]+)",\s*'
        r'"(?:parameters|arguments)":\s*(?=\{)'
    )
    trailer = re.compile(r"\s*\}\s*")

    def render_call(self, name: str, arguments: str) -> str:
        return f'{{"name": {json.dumps(name)}, "parameters": {arguments}}}'

    def call_rule(self, name: str, args: str) -> str:
        head = '{"name": ' + json.dumps(name) + ', "parameters": '
        return f"{lark_literal(head)} {args} {lark_literal(chr(125))}"

    def parse_free(self, text: str) -> list[ToolCall]:
        rest = text.removeprefix("<|python_tag|>").strip()
        calls = []
        while rest:
            data, end = _DECODER.raw_decode(rest)
            if not isinstance(data, dict):
                raise ValueError("not an object")
            calls.append(_call(data["name"], data.get("parameters", data.get("arguments", {}))))
            rest = rest[end:].lstrip().removeprefix(";").lstrip()
        return calls

    def maybe_call(self, text: str, request: GenerateRequest) -> bool:
        stripped = text.lstrip().removeprefix("<|python_tag|>").lstrip()
        return stripped == "" or stripped.startswith("{") or "<|python_tag|>".startswith(stripped)
