"""Next-token choice per sequence: logits processors, then greedy or sampled choice.

``SequenceSampler`` is the one object the scheduler asks for a sequence's next token
(``next_token``). In order it applies the repetition penalty (extension), OpenAI's
presence / frequency penalties, ``logit_bias``, ``min_tokens`` (end tokens banned before
it), the grammar mask of constrained decoding, then records log-probabilities and picks
the token (greedy, or temperature / top-k / top-p). Each sequence keeps its own state, so
constrained and free, penalised and plain sequences share one batch.

Log-probabilities are those of the processed distribution before temperature: what the
model was allowed to say, so a constrained sequence never reports a banned alternative.

Each sequence may carry its own ``torch.Generator`` (seeded from the request), so a
seeded request produces the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from autoglm.core.schemas import SamplingParams, TokenLogprob, TopLogprob

if TYPE_CHECKING:
    from autoglm.inference.constraints import Constraint

#: What ended a sequence with its latest token: an end token (not part of the text),
#: the grammar reaching its end (the token is part of the text), or nothing yet.
End = Literal["", "eos", "grammar"]


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token from one row of logits ``[vocab]``."""
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits.float() / params.temperature
    if params.top_k and params.top_k < scores.numel():
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = torch.softmax(sorted_scores, dim=-1).cumsum(dim=-1)
        # Drop tokens once the mass before them already reaches top_p (keep at least one).
        drop = cumulative - torch.softmax(sorted_scores, dim=-1) >= params.top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(seed)


@dataclass
class SequenceOutput:
    """What a sequence reports besides its tokens; filled on the scheduler thread, read
    by the caller (appends only, so a reader sees a consistent prefix)."""

    logprobs: list[TokenLogprob] = field(default_factory=list)


class TokenText:
    """Token id -> text and bytes, for log-probabilities (cached per tokenizer)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._cache: dict[int, tuple[str, list[int]]] = {}

    def __call__(self, token: int) -> tuple[str, list[int]]:
        hit = self._cache.get(token)
        if hit is None:
            text = str(self.tokenizer.decode([token]))
            piece = self.tokenizer.convert_ids_to_tokens(token)
            raw = _byte_level(piece) if isinstance(piece, str) else None
            hit = (text, list(raw if raw is not None else text.encode()))
            self._cache[token] = hit
        return hit


def _byte_level(piece: str) -> bytes | None:
    """The bytes of a byte-level BPE piece (GPT-2 / GLM-4 / Llama-3 vocabularies)."""
    table = _unicode_to_bytes()
    try:
        return bytes(table[c] for c in piece)
    except KeyError:
        return None


_U2B: dict[str, int] = {}


def _unicode_to_bytes() -> dict[str, int]:
    if not _U2B:
        bs = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
        cs = list(bs)
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        _U2B.update({chr(c): b for b, c in zip(bs, cs, strict=True)})
    return _U2B


class SequenceSampler:
    def __init__(
        self,
        params: SamplingParams,
        generator: torch.Generator | None,
        eos_token_ids: set[int] | frozenset[int],
        prompt_ids: list[int],
        *,
        constraint: Constraint | None = None,
        output: SequenceOutput | None = None,
        token_text: TokenText | None = None,
    ) -> None:
        self.params = params
        self.generator = generator
        self.constraint = constraint
        self.output = output or SequenceOutput()
        self.token_text = token_text
        ends = set() if params.ignore_eos else set(eos_token_ids)
        self.end_ids = frozenset(ends | set(params.stop_token_ids))
        self.generated = 0
        self._counts: dict[int, int] = {}
        self._seen: set[int] = set(prompt_ids) if params.repetition_penalty != 1.0 else set()
        self._bias = (
            (
                torch.tensor(list(params.logit_bias), dtype=torch.long),
                torch.tensor(list(params.logit_bias.values()), dtype=torch.float32),
            )
            if params.logit_bias
            else None
        )
        self._penalised = (
            params.presence_penalty != 0.0
            or params.frequency_penalty != 0.0
            or params.repetition_penalty != 1.0
        )
        #: Nothing to do to the logits: the batch's argmax is the greedy choice.
        #: (``ignore_eos`` changes no logit: an end token is generated, it just does not
        #: end the sequence.)
        self.plain = not (
            self._penalised
            or self._bias is not None
            or params.min_tokens
            or constraint is not None
            or params.logprobs
        )

    @property
    def masked_greedy(self) -> bool:
        """Greedy with nothing but a grammar mask: batched in ``next_tokens``."""
        params = self.params
        return (
            self.constraint is not None
            and params.greedy
            and not (self._penalised or self._bias is not None or params.min_tokens)
            and not params.logprobs
        )

    # -- the scheduler's call --------------------------------------------------------
    def next_token(self, logits: torch.Tensor, greedy: int | None = None) -> tuple[int, End]:
        """The next token from one row of logits ``[vocab]`` (``greedy``: the batch's
        argmax of that row, used when nothing changes the logits), and whether it ends
        the sequence."""
        if self.plain and self.params.greedy and greedy is not None:
            token = greedy
        else:
            scores = self.process(logits)
            token = sample(scores, self.params, self.generator)
            if self.params.logprobs:
                self._record(scores, token)
        return self.accept(token)

    def accept(self, token: int) -> tuple[int, End]:
        """Record the chosen token; whether it ends the sequence."""
        self.generated += 1
        if token in self.end_ids:
            return token, "eos"
        if self._penalised:
            self._counts[token] = self._counts.get(token, 0) + 1
            self._seen.add(token)
        if self.constraint is not None and self.constraint.advance(token):
            return token, "grammar"
        return token, ""

    # -- processors ------------------------------------------------------------------
    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits after every processor of this sequence (a float32 copy)."""
        params = self.params
        scores = logits.float().clone()
        vocab = scores.shape[-1]
        if params.repetition_penalty != 1.0 and self._seen:
            idx = torch.tensor([t for t in self._seen if t < vocab], dtype=torch.long)
            idx = idx.to(scores.device)
            picked = scores[idx]
            scores[idx] = torch.where(
                picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty
            )
        if self._counts and (params.presence_penalty or params.frequency_penalty):
            tokens = [t for t in self._counts if t < vocab]
            idx = torch.tensor(tokens, dtype=torch.long, device=scores.device)
            counts = torch.tensor(
                [self._counts[t] for t in tokens], dtype=torch.float32, device=scores.device
            )
            scores[idx] -= params.frequency_penalty * counts + params.presence_penalty
        if self._bias is not None:
            idx, values = self._bias
            keep = idx < vocab
            scores[idx[keep].to(scores.device)] += values[keep].to(scores.device)
        if self.generated < params.min_tokens and self.end_ids:
            ends = [t for t in self.end_ids if t < vocab]
            scores[torch.tensor(ends, dtype=torch.long, device=scores.device)] = float("-inf")
        if self.constraint is not None:
            allowed = self.constraint.allowed(vocab)
            if allowed is not None:
                allowed = allowed.to(scores.device)
                if self.generated < params.min_tokens:
                    allowed = allowed.clone()
                    for t in self.end_ids:
                        if t < vocab:
                            allowed[t] = False
                    if not bool(allowed.any()):  # only an end is left: the grammar wins
                        allowed = self.constraint.allowed(vocab)
                        assert allowed is not None
                        allowed = allowed.to(scores.device)
                scores = scores.masked_fill(~allowed, float("-inf"))
                if self.constraint.end_allowed:
                    # The grammar is complete: any of the model's end tokens may end it.
                    for t in self.end_ids:
                        if t < vocab and self.generated >= params.min_tokens:
                            scores[t] = logits[t].float()
        return scores

    def _record(self, scores: torch.Tensor, token: int) -> None:
        if token in self.end_ids or self.token_text is None:
            return  # an end token is not part of the output
        logp = torch.log_softmax(scores, dim=-1)
        tops: list[TopLogprob] = []
        k = self.params.top_logprobs
        if k:
            values, ids = torch.topk(logp, min(k, logp.shape[-1]))
            for value, tid in zip(values.tolist(), ids.tolist(), strict=True):
                if value == float("-inf"):
                    break
                text, raw = self.token_text(int(tid))
                tops.append(TopLogprob(token=text, logprob=_finite(value), bytes=raw))
        text, raw = self.token_text(token)
        self.output.logprobs.append(
            TokenLogprob(
                token=text, logprob=_finite(float(logp[token])), bytes=raw, top_logprobs=tops
            )
        )


def next_tokens(samplers: list[SequenceSampler], logits: torch.Tensor) -> list[tuple[int, End]]:
    """The next token of every row of ``logits`` ``[rows, vocab]`` and whether it ends
    its sequence: plain greedy rows take the batch's argmax; greedy rows whose only
    processor is a grammar get their masks applied in one batched operation; the others
    go through their own processors."""
    greedy = torch.argmax(logits, dim=-1).tolist()
    chosen: list[int | None] = [None] * len(samplers)
    masked = [i for i, s in enumerate(samplers) if s.masked_greedy]
    if masked:
        vocab = logits.shape[-1]
        rows, masks = [], []
        for i in masked:
            constraint = samplers[i].constraint
            assert constraint is not None
            mask = constraint.allowed_np(vocab)
            if mask is None:
                chosen[i] = greedy[i]
                continue
            if constraint.end_allowed:  # the grammar is complete: any end token ends it
                mask = mask.copy()
                mask[[t for t in samplers[i].end_ids if t < vocab]] = True
            rows.append(i)
            masks.append(mask)
        if rows:
            import numpy as np

            allowed = np.stack(masks)
            if logits.device.type == "cpu":
                # numpy on CPU: a few µs, where small torch ops pay intra-op thread
                # hand-offs (milliseconds on a busy machine).
                picked = logits.float().numpy()[rows]
                picked[~allowed] = -np.inf
                tokens = picked.argmax(axis=1).tolist()
            else:
                index = torch.tensor(rows, device=logits.device)
                keep = torch.from_numpy(allowed).to(logits.device)
                masked_rows = logits.index_select(0, index).masked_fill(~keep, float("-inf"))
                tokens = torch.argmax(masked_rows, dim=-1).tolist()
            for i, token in zip(rows, tokens, strict=True):
                chosen[i] = int(token)
    out = []
    for i, sampler in enumerate(samplers):
        token = chosen[i]
        out.append(
            sampler.accept(token) if token is not None else sampler.next_token(logits[i], greedy[i])
        )
    return out


def _finite(value: float) -> float:
    """JSON has no -inf: OpenAI reports -9999.0 for impossible tokens."""
    return value if value > -9999.0 else -9999.0


@dataclass
class SamplingPlan:
    """What the engine prepared for one request before queueing it: its constraint (the
    grammar checked and compiled off the scheduler thread) and where its outputs go."""

    constraint: Constraint | None = None
    token_text: TokenText | None = None
    output: SequenceOutput = field(default_factory=SequenceOutput)
    #: The model family's tool-call format when the request offers tools (tools.py).
    tool_format: Any = None
    #: The output is tool calls by grammar ('required' or a named function).
    forced_tools: bool = False
    #: Ids of the calls a stream announced, so the final result carries the same ones.
    call_ids: list[str] = field(default_factory=list)

    def sampler(
        self,
        params: SamplingParams,
        generator: torch.Generator | None,
        eos_token_ids: set[int] | frozenset[int],
        prompt_ids: list[int],
    ) -> SequenceSampler:
        return SequenceSampler(
            params,
            generator,
            eos_token_ids,
            prompt_ids,
            constraint=self.constraint,
            output=self.output,
            token_text=self.token_text,
        )
