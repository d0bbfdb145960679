"""Grammar-constrained decoding with llguidance: JSON schemas, regexes, choices, Lark.

A request's constraint (``response_format``, ``structured_outputs``, or forced tool
calls) becomes an llguidance grammar. ``GrammarCompiler`` (one per loaded model) checks
and compiles it on the caller's thread — never the scheduler's — and caches the check by
grammar text, so a schema used again costs one lookup. A bad schema or grammar is an
``InvalidRequestError`` naming the problem, before anything is queued.

Each sequence gets its own ``Constraint`` (an ``LLMatcher``). Its mask is computed on
the scheduler thread when the sequence's next token is chosen: llguidance computes one
lazily in about 10 µs for the demo vocabulary, and unpacking the bit set takes a few µs
(numpy). Handing it to a thread pool to overlap with the forward pass measured about
250 µs per sequence and step in thread hand-offs and GIL waits, far more than the work.
The masks of a step's greedy constrained rows are applied to the logits in one batched
operation (``sampling.next_tokens``). Tokens outside the tokenizer (padded logits) are
never allowed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import GenerateRequest

log = logging.getLogger(__name__)

#: JSON output without free whitespace: a model cannot pad it forever.
_JSON_OPTIONS: Any = {"whitespace_flexible": False}


def schema_problem(schema: object) -> str | None:
    """What is wrong with a JSON schema (Draft 2020-12 meta-schema), or None."""
    if not isinstance(schema, dict):
        return "the schema must be a JSON object"
    import jsonschema

    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.absolute_path)
        return f"invalid JSON schema{f' at {where!r}' if where else ''}: {exc.message}"
    return None


def json_grammar(schema: dict[str, Any], param: str) -> str:
    import llguidance

    problem = schema_problem(schema)
    if problem:
        raise InvalidRequestError(problem, param=param, code="invalid_schema")
    try:
        return str(llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=_JSON_OPTIONS))
    except (ValueError, TypeError) as exc:
        raise InvalidRequestError(
            f"schema cannot be compiled: {exc}", param=param, code="invalid_schema"
        ) from None


def lark_literal(text: str) -> str:
    """A Lark string literal for ``text`` (JSON escapes are valid Lark escapes)."""
    return json.dumps(text)


def request_grammar(request: GenerateRequest) -> tuple[str, str] | None:
    """The (grammar, request field) of a request's output constraint, if it has one.
    Tool calls are handled by the model adapter, which knows the call format."""
    import llguidance

    fmt = request.response_format
    if fmt is not None:
        if fmt.type == "json_object":
            return json_grammar({"type": "object"}, "response_format"), "response_format"
        if fmt.type == "json_schema" and fmt.json_schema is not None:
            param = "response_format.json_schema.schema"
            return json_grammar(fmt.json_schema.schema_ or {"type": "object"}, param), param
        return None
    so = request.structured_outputs
    if so is None:
        return None
    if so.json_ is not None:
        schema = {"type": "object"} if isinstance(so.json_, bool) else so.json_
        return json_grammar(schema, "structured_outputs.json"), "structured_outputs.json"
    if so.regex is not None:
        return str(llguidance.LLMatcher.grammar_from_regex(so.regex)), "structured_outputs.regex"
    if so.choice is not None:
        alternatives = " | ".join(lark_literal(c) for c in so.choice)
        grammar = llguidance.LLMatcher.grammar_from_lark(f"start: {alternatives}")
        return str(grammar), "structured_outputs.choice"
    assert so.grammar is not None
    return str(llguidance.LLMatcher.grammar_from_lark(so.grammar)), "structured_outputs.grammar"


class GrammarCompiler:
    """One model's tokenizer as llguidance sees it, plus a cache of compiled grammars:
    grammar text -> a matcher in its initial state (copied for each sequence) or the
    reason it cannot be used. LRU, ``cache_size`` entries."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_id: int, cache_size: int = 256):
        import llguidance.hf

        self.vocab_size = vocab_size
        self.tokenizer = llguidance.hf.from_tokenizer(
            tokenizer, n_vocab=vocab_size, eos_token=eos_token_id
        )
        self.eos = eos_token_id
        self._compiled: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()
        self.cache_size = cache_size
        self.compilations = 0

    def _compile(self, grammar: str) -> Any:
        """A matcher of ``grammar`` in its initial state, or the problem as a string."""
        import llguidance

        failed, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            grammar, self.tokenizer
        )
        if failed:
            return "; ".join(messages)
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=1)
        if matcher.is_error():
            return str(matcher.get_error())
        self.compilations += 1
        return matcher

    def constraint(self, grammar: str, param: str) -> Constraint:
        """A matcher for one sequence: a copy of the cached compiled grammar (compiled
        on first use). Raises InvalidRequestError when llguidance cannot use it."""
        with self._lock:
            entry = self._compiled.get(grammar)
            if entry is not None:
                self._compiled.move_to_end(grammar)
        if entry is None:
            entry = self._compile(grammar)
            with self._lock:
                self._compiled[grammar] = entry
                while len(self._compiled) > self.cache_size:
                    self._compiled.popitem(last=False)
        if isinstance(entry, str):
            raise InvalidRequestError(
                f"constraint cannot be compiled: {entry[:500]}",
                param=param,
                code="invalid_grammar",
            )
        with self._lock:  # a template is only ever copied, one copy at a time
            matcher = entry.deep_copy()
        return Constraint(matcher, self.vocab_size, self.eos)


class Constraint:
    """One sequence's grammar state: the mask of allowed next tokens, and progress."""

    def __init__(self, matcher: Any, vocab_size: int, eos: int) -> None:
        self.matcher = matcher
        self.vocab_size = vocab_size
        self.eos = eos
        self.end_allowed = False
        self.failed = False

    def fork(self) -> Constraint:
        """An independent copy (``n`` > 1: each choice follows the grammar on its own)."""
        return Constraint(self.matcher.deep_copy(), self.vocab_size, self.eos)

    def allowed_np(self, vocab: int) -> npt.NDArray[np.bool_] | None:
        """Bool mask ``[vocab]`` of the tokens the grammar allows next (None: nothing
        to enforce, the grammar is finished or broken)."""
        words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(words, bitorder="little")[: self.vocab_size].view(np.bool_)
        self.end_allowed = self.eos < mask.shape[0] and bool(mask[self.eos])
        if vocab > mask.shape[0]:
            mask = np.concatenate([mask, np.zeros(vocab - mask.shape[0], dtype=np.bool_)])
        if not mask.any():
            return None
        return mask[:vocab]

    def allowed(self, vocab: int) -> torch.Tensor | None:
        mask = self.allowed_np(vocab)
        return None if mask is None else torch.from_numpy(mask.copy())

    def advance(self, token: int) -> bool:
        """Consume ``token``; True when the grammar is complete (nothing may follow)."""
        if token == self.eos and self.end_allowed:
            return True
        if not self.matcher.consume_token(token):
            self.failed = True
            log.warning("token rejected by grammar", extra={"error": self.matcher.get_error()})
            return True
        return bool(self.matcher.is_stopped())
