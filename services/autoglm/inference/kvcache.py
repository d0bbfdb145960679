"""The paged KV cache: one preallocated pool of fixed-size blocks, and the attention that
reads each sequence's own blocks.

The pool is one tensor ``[layers, 2, kv_heads, (blocks + 1) * block_size, head_dim]``
sized once from a memory budget (``kv_cache_mb`` on CPU, a fraction of free memory on
CUDA); its last block is a padding block that padded block tables point at (always
masked out). Head-major: a KV head's keys of consecutive slots are contiguous, the layout
attention reads (``[kv_heads, tokens, dim]``); with the heads interleaved per slot, a
decode of a 2,850-token sequence read each head's keys and values as every other 256
bytes, 26 % slower (4 such decodes x 4 layers: 2.05 -> 1.52 ms, demo model, float32).
Which blocks belong to which sequence is ``blocks.BlockManager``'s business; this module
only turns block tables into index tensors and computes attention. Keys and values are
read a whole block at a time (one ``index_select`` of block ids per layer, each row a
contiguous ``block_size`` slice of one head: about twice as fast as reading token slots,
and the indices are built from block tables, not from per-token lists).

A step runs every scheduled sequence's new tokens as one packed row (``[1, tokens]``) of
the unmodified Hugging Face model, with ``attn_implementation="autoglm_paged"`` — an
attention function registered in transformers' ``AttentionInterface`` (the same hook its
own ``paged|sdpa`` uses); for GLM models (``LEAN_MODEL_TYPES``) the step calls the
model's own modules in its ``forward``'s order without that method's wrappers
(``step_forward``). Per layer it writes the new keys and values into their slots, then
runs ``scaled_dot_product_attention`` per group over the group's own cached tokens:

* decoding sequences (one query each), grouped by length so that a long sequence does not
  make short ones attend over padding: a group reads ``[rows, longest in group]`` slots,
  the query heads that share a KV head folded into that head's queries (SDPA's
  ``enable_gqa`` reads a row's keys and values once per query head);
* each prefill chunk alone, causally over its sequence's cached tokens plus itself (on
  CPU in two parts merged by log-sum-exp: ``_after_cached``).

A sequence of at least ``SLICE_MIN`` tokens whose blocks are consecutive in the pool
(``blocks.BlockManager`` places them so where it can) is read as one slice of the pool,
without a copy: reading a 2,800-token sequence's keys and values block by block copied
~12 MB per decode step (float32, demo model), as much again as the attention itself reads.

Without a step plan (``model.generate``, a plain forward) it is ordinary SDPA, so the same
model object also serves Hugging Face ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.functional import scaled_dot_product_attention

ATTN_IMPLEMENTATION = "autoglm_paged"
#: Sequences at least this long are read as a slice of the pool when their blocks are
#: consecutive; shorter decodes are gathered into one batched attention per group.
SLICE_MIN = 256


@dataclass
class _Group:
    """Queries ``[start, end)`` of the packed row and the cache blocks they read."""

    start: int
    end: int
    #: Decode group: ``[kv_heads, rows, blocks]`` ids of the heads' blocks in the pool
    #: layer viewed as ``[kv_heads x blocks, block_size, dim]`` (padded with the padding
    #: block); prefill: ``[kv_heads, 1, blocks]``; None: one sequence read as a slice of
    #: the pool from slot ``first`` (its blocks are consecutive: nothing to gather).
    blocks: torch.Tensor | None
    #: Keys each row reads (the group's longest sequence): exactly as many as Hugging
    #: Face attends over, so a sequence alone computes what ``generate`` computes.
    keys: int
    #: Additive masks in the pool's dtype: ``[rows, 1, 1, keys]`` (decodes padded to the
    #: group's longest), lower-right causal ``[queries, keys]`` (a chunk after cached
    #: tokens, off CPU); None for "all".
    mask: Any
    causal: bool = False
    first: int = 0
    #: One query per row (decodes); else one sequence's chunk in one row.
    decode: bool = False
    #: A chunk after this many cached tokens, attended in two parts (CPU: see
    #: ``_after_cached``); 0: one SDPA call (with ``mask``/``causal``).
    cached: int = 0


@dataclass
class StepPlan:
    """Where a step's packed tokens write and what each group reads (all layers)."""

    #: (first, end) of the packed row and where those tokens' keys and values go: an
    #: index tensor of slots, or the first of consecutive slots (a slice copy: a chunk
    #: into consecutive blocks; ``index_copy_`` is several times slower per element).
    writes: list[tuple[int, int, torch.Tensor | int]]
    groups: list[_Group] = field(default_factory=list)


class PagedKVCache:
    def __init__(
        self,
        config: Any,
        device: torch.device,
        dtype: torch.dtype,
        *,
        budget_bytes: int,
        block_size: int = 16,
    ) -> None:
        self.block_size = block_size
        self.layers = int(config.num_hidden_layers)
        self.kv_heads = int(
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        )
        self.head_dim = int(
            getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        )
        self.bytes_per_token = self.layers * 2 * self.kv_heads * self.head_dim * dtype.itemsize
        self.bytes_per_block = self.bytes_per_token * block_size
        self.num_blocks = max(1, budget_bytes // self.bytes_per_block)
        #: Padded block table entries point here (masked out, never written).
        self.pad_block = self.num_blocks
        self.pool = torch.zeros(
            (self.layers, 2, self.kv_heads, (self.num_blocks + 1) * block_size, self.head_dim),
            dtype=dtype,
            device=device,
        )
        self.device = device
        #: The first block of each KV head in a layer's pool viewed block by block.
        self._head_offsets = torch.arange(self.kv_heads, device=device) * (self.num_blocks + 1)

    def _per_head(self, table: torch.Tensor) -> torch.Tensor:
        """Block ids ``[rows, blocks]`` -> ``[kv_heads, rows, blocks]`` ids in a layer's
        pool viewed as ``[kv_heads x blocks, block_size, dim]`` (one gather per step)."""
        return table[None] + self._head_offsets[:, None, None]

    @property
    def nbytes(self) -> int:
        return self.pool.numel() * self.pool.element_size()

    def plan(
        self,
        prefills: list[tuple[list[int], int, int]],
        decodes: list[tuple[list[int], int]],
    ) -> StepPlan:
        """The plan of a step whose packed row is the ``decodes`` (block table, length
        after this step), in the given order, then the ``prefills`` (block table, tokens
        cached before, tokens computed now). Decodes should come sorted by length."""
        bs = self.block_size
        decode_slots: list[int] = []
        writes: list[tuple[int, int, torch.Tensor | int]] = []
        groups: list[_Group] = []
        pos = 0
        dev = self.device
        dtype = self.pool.dtype
        # Decodes in packing order: a long one with consecutive blocks alone (read as a
        # slice), the others in length groups (gathered).
        parts: list[tuple[list[int], int] | list[tuple[list[int], int]]] = []
        pending: list[tuple[list[int], int]] = []
        for blocks, length in decodes:
            if length >= SLICE_MIN and _consecutive(blocks, -(-length // bs)):
                parts.extend(_length_groups(pending))
                parts.append((blocks, length))
                pending = []
            else:
                pending.append((blocks, length))
        parts.extend(_length_groups(pending))
        for members in parts:
            if isinstance(members, tuple):
                blocks, length = members
                last = length - 1
                decode_slots.append(blocks[last // bs] * bs + last % bs)
                groups.append(
                    _Group(pos, pos + 1, None, length, None, first=blocks[0] * bs, decode=True)
                )
                pos += 1
                continue
            longest = max(n for _, n in members)
            width = -(-longest // bs)
            rows = []
            lengths = []
            for blocks, length in members:
                last = length - 1
                decode_slots.append(blocks[last // bs] * bs + last % bs)
                used = list(blocks[: -(-length // bs)])
                rows.append(used + [self.pad_block] * (width - len(used)))
                lengths.append(length)
            mask = None
            if min(lengths) != longest:
                # Additive, in the pool's dtype, once per step (a boolean one would be
                # converted again in every layer).
                limit = torch.tensor(lengths, device=dev)[:, None]
                padding = torch.arange(longest, device=dev)[None, :] >= limit
                mask = torch.zeros(padding.shape, dtype=dtype, device=dev)
                mask = mask.masked_fill_(padding, float("-inf"))[:, None, None, :]
            table = self._per_head(torch.tensor(rows, device=dev))
            groups.append(_Group(pos, pos + len(rows), table, longest, mask, decode=True))
            pos += len(rows)
        for blocks, cached, n in prefills:
            keys = cached + n
            table = torch.tensor(blocks[: -(-keys // bs)], device=dev)
            if _consecutive(blocks[cached // bs :], len(table) - cached // bs):
                writes.append((pos, pos + n, blocks[cached // bs] * bs + cached % bs))
            else:
                positions = torch.arange(cached, cached + n, device=dev)
                writes.append((pos, pos + n, table[positions // bs] * bs + positions % bs))
            first = blocks[0] * bs
            sliced = keys >= SLICE_MIN and _consecutive(blocks, len(table))
            # A chunk after cached tokens: causal, aligned bottom-right. On CPU in two
            # parts without a mask (``_after_cached``); elsewhere an additive mask in the
            # pool's dtype, built once per step and shared by every layer
            # (``causal_lower_right`` is materialized again in each call, and a boolean
            # mask is converted in each call). From position 0: SDPA's own causal.
            mask = None
            split = bool(cached) and dev.type == "cpu"
            if cached and not split:
                mask = torch.full((n, keys), float("-inf"), dtype=dtype, device=dev).triu_(
                    cached + 1
                )
            groups.append(
                _Group(
                    pos,
                    pos + n,
                    None if sliced else self._per_head(table[None]),
                    keys,
                    mask,
                    causal=not cached,
                    first=first,
                    cached=cached if split else 0,
                )
            )
            pos += n
        if decode_slots:  # the decodes come first in the packed row
            writes.insert(0, (0, len(decode_slots), torch.tensor(decode_slots, device=dev)))
        return StepPlan(writes, groups)

    def attention(
        self,
        layer: int,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        plan: StepPlan,
        scaling: float | None,
    ) -> torch.Tensor:
        """Store this layer's new ``key``/``value`` ``[1, kv_heads, tokens, dim]`` and attend;
        returns ``[1, tokens, heads, dim]``."""
        k_pool, v_pool = self.pool[layer, 0], self.pool[layer, 1]  # [kv, slots, dim]
        new_keys, new_values = key[0], value[0]  # [kv, tokens, dim]
        for start, end, where in plan.writes:
            if isinstance(where, int):
                k_pool[:, where : where + end - start] = new_keys[:, start:end]
                v_pool[:, where : where + end - start] = new_values[:, start:end]
            else:
                k_pool.index_copy_(1, where, new_keys[:, start:end])
                v_pool.index_copy_(1, where, new_values[:, start:end])
        bs = self.block_size
        kv_heads, _, dim = k_pool.shape
        k_blocks = k_pool.view(-1, bs, dim)  # [kv_heads x blocks, block_size, dim]
        v_blocks = v_pool.view(-1, bs, dim)
        heads = query.shape[1]
        # Each group writes its rows of the result in place (no list of outputs to
        # concatenate: one copy fewer per group and layer).
        result = query.new_empty(query.shape[2], heads, dim)  # [tokens, heads, dim]
        for g in plan.groups:
            # -> [rows, kv, len, dim], the last block's unused slots cut off
            if g.blocks is None:  # consecutive blocks: a slice of the pool, no copy
                rows = 1
                keys = k_pool[None, :, g.first : g.first + g.keys]
                values = v_pool[None, :, g.first : g.first + g.keys]
            else:
                # index_select on the first dimension: several times faster than
                # indexing, and than index_select on the blocks' dimension of
                # [kv_heads, blocks, block_size, dim]
                _, rows, width = g.blocks.shape
                flat = g.blocks.view(-1)
                shape = (kv_heads, rows, width * bs, dim)
                keys = k_blocks.index_select(0, flat).view(shape).transpose(0, 1)
                values = v_blocks.index_select(0, flat).view(shape).transpose(0, 1)
                keys, values = keys[:, :, : g.keys], values[:, :, : g.keys]
            q = query[0, :, g.start : g.end]  # [heads, queries, dim]
            if g.decode:
                # One query per row, the heads that share a KV head as that head's
                # queries: each row's keys and values are read once, not once per head
                # (with ``enable_gqa`` SDPA reads them for every query head).
                folded = q.transpose(0, 1).reshape(rows, kv_heads, heads // kv_heads, -1)
                out = scaled_dot_product_attention(
                    folded, keys, values, attn_mask=g.mask, scale=scaling
                )
                result[g.start : g.end].view(out.shape).copy_(out)  # [rows, kv, group, dim]
                continue
            if g.cached:
                _after_cached(q[None], keys, values, g.cached, scaling, result[g.start : g.end])
                continue
            out = scaled_dot_product_attention(
                q[None],
                keys,
                values,
                attn_mask=g.mask,
                is_causal=g.causal,
                scale=scaling,
                enable_gqa=heads != kv_heads,
            )
            result[g.start : g.end].copy_(out[0].transpose(0, 1))  # [queries, heads, dim]
        return result[None]


def _after_cached(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    cached: int,
    scale: float | None,
    out: torch.Tensor,
) -> None:
    """Causal attention of a chunk ``query`` ``[1, heads, n, dim]`` whose keys and values
    ``[1, kv_heads, cached + n, dim]`` start with ``cached`` earlier tokens (CPU), written
    into ``out`` ``[n, heads, dim]``.

    One SDPA call with a lower-right causal mask computes every (query, key) pair of the
    rectangle, masked ones included, and adds the mask in each block: a 400-token chunk
    after 2,400 cached tokens does 7 % more pairs than it needs, a 2,000-token chunk after
    300 cached tokens 2.2 times as many. Instead: the cached prefix unmasked, the chunk
    over itself with SDPA's causal kernel (which skips the blocks above the diagonal), the
    two merged by their log-sum-exps; that is exact softmax attention, only summed in a
    different order (demo model, float32: within 3e-7 of the masked call, 15-40 % less
    time). The prefix part folds the heads that share a KV head into its rows, so each KV
    head is read once; the chunk's own part passes the KV heads as they are (the flash
    kernel maps query heads to KV heads itself: no ``repeat_interleave`` copies).

    The merge is one pass: the prefix part's weight ``exp(lse1) / (exp(lse1) +
    exp(lse2))`` is ``sigmoid(lse1 - lse2)``, and ``lerp`` blends the two outputs with it
    straight into ``out`` (before: eight elementwise passes and four copies, the large
    ones a parallel region each). All 433-token chunks of a 2,814-token prompt, one
    layer, demo model, one thread, CPU time: 88.9 -> 83.6 ms (one causal call over the
    whole prompt: 79.3 ms); two threads on the busy 2-vCPU VM: 392 -> 232 ms.
    """
    heads, n, dim = query.shape[1:]
    kv_heads = keys.shape[1]
    group = heads // kv_heads
    split = (1, kv_heads, group, n)  # a query head h is (h // group, h % group)
    folded = query.reshape(1, kv_heads, group * n, dim)
    out1, lse1 = _flash(folded, keys[:, :, :cached], values[:, :, :cached], scale=scale)
    out2, lse2 = _flash(
        query, keys[:, :, cached:], values[:, :, cached:], is_causal=True, scale=scale
    )
    weight = torch.sigmoid(lse1.view(split) - lse2.view(split))[..., None]
    prefix, own = out1.view(*split, dim), out2.view(*split, dim)
    # ``out`` as [1, kv_heads, group, n, dim], the layout of the two parts
    target = out.view(n, kv_heads, group, dim).permute(1, 2, 0, 3)[None]
    if query.dtype == torch.float32:
        torch.lerp(own, prefix, weight, out=target)
    else:  # blended in float32 (the weight's precision), rounded once
        target.copy_(torch.lerp(own.float(), prefix.float(), weight))


def _flash(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    is_causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDPA's CPU flash kernel, which also returns each query's log-sum-exp (float32)."""
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, is_causal, scale=scale
    )
    return out, lse


def _consecutive(blocks: list[int], n: int) -> bool:
    """Whether the first ``n`` blocks are consecutive in the pool."""
    first = blocks[0]
    return blocks[n - 1] - first == n - 1 and blocks[:n] == list(range(first, first + n))


def _length_groups(decodes: list[tuple[list[int], int]]) -> list[list[tuple[list[int], int]]]:
    """Split decodes (sorted by length) into groups where padding to the group's longest
    costs at most as much as the group's real tokens (and always isolate outliers)."""
    groups: list[list[tuple[list[int], int]]] = []
    for member in decodes:
        if groups:
            group = groups[-1]
            real = sum(n for _, n in group) + member[1]
            if member[1] * (len(group) + 1) <= 2 * real:
                group.append(member)
                continue
        groups.append([member])
    return groups


def paged_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``autoglm_paged`` attention implementation (see the module docstring)."""
    cache: PagedKVCache | None = kwargs.get("paged_cache")
    plan: StepPlan | None = kwargs.get("paged_plan")
    if cache is None or plan is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    # Every Hugging Face attention module knows its layer (the cache needs it too).
    layer = module.layer_idx
    assert isinstance(layer, int), "attention module without a layer_idx"
    return cache.attention(layer, query, key, value, plan, scaling), None


#: Model types whose ``...Model.forward`` is exactly embed -> rotary embeddings -> decoder
#: layers -> final norm (and whose ``...ForCausalLM`` applies ``lm_head`` to the rows
#: kept): ``step_forward`` calls those parts directly for them.
LEAN_MODEL_TYPES = frozenset({"glm", "glm4"})

#: (input_ids ``[1, tokens]``, position_ids ``[1, tokens]``, rows to keep, step plan)
#: -> logits ``[rows, vocab]``.
StepForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, StepPlan], torch.Tensor]


def step_forward(model: Any, cache: PagedKVCache, lean: bool = True) -> StepForward:
    """The forward pass of an engine step: logits of the kept rows of the packed row.

    For the model types in ``LEAN_MODEL_TYPES`` it runs the model's own modules (the
    embedding, its rotary embedding, each decoder layer, the final norm, ``lm_head``) in
    the order and with the arguments that the model's ``forward`` uses, without its
    wrappers: output capturing, config defaults, the causal mask (``autoglm_paged``
    attention reads the step plan, never a mask) and the output dataclasses. Same
    modules, same operations, same results (tested bitwise); on the 2-vCPU VM those
    wrappers were ~15 % of a one-sequence decode step (py-spy). Other models (or
    ``lean`` False): their ``forward``.
    """
    inner = getattr(model, "model", None)
    parts = ("embed_tokens", "rotary_emb", "layers", "norm")
    lean = (
        lean
        and getattr(getattr(model, "config", None), "model_type", None) in LEAN_MODEL_TYPES
        and inner is not None
        and all(hasattr(inner, name) for name in parts)
        and hasattr(model, "lm_head")
    )

    def full(
        ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, plan: StepPlan
    ) -> torch.Tensor:
        out = model(
            input_ids=ids,
            position_ids=positions,
            use_cache=False,
            logits_to_keep=keep,
            paged_cache=cache,
            paged_plan=plan,
        )
        logits: torch.Tensor = out.logits[0]
        return logits

    if not lean:
        return full
    assert inner is not None
    layers = list(inner.layers[: inner.config.num_hidden_layers])

    def fast(
        ids: torch.Tensor, positions: torch.Tensor, keep: torch.Tensor, plan: StepPlan
    ) -> torch.Tensor:
        hidden = inner.embed_tokens(ids)
        rotary = inner.rotary_emb(hidden, position_ids=positions)
        for layer in layers:
            hidden = layer(
                hidden,
                attention_mask=None,
                position_embeddings=rotary,
                position_ids=positions,
                past_key_values=None,
                use_cache=False,
                paged_cache=cache,
                paged_plan=plan,
            )
        hidden = inner.norm(hidden)
        logits: torch.Tensor = model.lm_head(hidden[:, keep, :])
        return logits[0]

    return fast


def register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, paged_attention_forward)
