"""The paged cache's attention against plain SDPA on the same keys and values."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.nn.functional import scaled_dot_product_attention as sdpa

from autoglm.inference.kvcache import PagedKVCache, _after_cached

HEADS, KV_HEADS, DIM = 4, 2, 64


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("cached", "n"), [(1, 1), (40, 7), (300, 200), (16, 900)])
def test_chunk_after_cached_tokens_is_causal_attention(
    dtype: torch.dtype, cached: int, n: int
) -> None:
    """The two-part attention of a chunk, written into its rows of a step's result,
    equals one SDPA call with the lower-right causal mask (up to rounding): every query
    head reads its own KV head (heads 0-1 KV head 0, heads 2-3 KV head 1)."""
    gen = torch.Generator().manual_seed(cached + n)
    # [1, tokens, heads, dim] transposed, as Hugging Face's attention modules pass them
    q = torch.randn(1, n, HEADS, DIM, generator=gen).transpose(1, 2).to(dtype)
    k = torch.randn(1, cached + n, KV_HEADS, DIM, generator=gen).transpose(1, 2).to(dtype)
    v = torch.randn(1, cached + n, KV_HEADS, DIM, generator=gen).transpose(1, 2).to(dtype)
    mask = torch.ones(n, cached + n, dtype=torch.bool).tril_(cached)
    expected = sdpa(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
    got = torch.full((n, HEADS, DIM), float("nan"), dtype=dtype)  # [queries, heads, dim]
    _after_cached(q, k, v, cached, DIM**-0.5, got)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), expected[0].transpose(0, 1), atol=tol, rtol=tol)


def test_a_decode_step_attends_each_sequence_over_its_own_tokens() -> None:
    """Decodes of different lengths (gathered in a group, or read as a slice) and chunks
    after cached tokens (read as a slice, or gathered from scattered blocks) in one step:
    each query row gets SDPA over exactly its sequence's keys."""
    config = SimpleNamespace(
        num_hidden_layers=1,
        num_key_value_heads=KV_HEADS,
        num_attention_heads=HEADS,
        head_dim=DIM,
        hidden_size=HEADS * DIM,
    )
    cache = PagedKVCache(config, torch.device("cpu"), torch.float32, budget_bytes=1 << 22)
    bs = cache.block_size
    k_pool, v_pool = cache.pool[0, 0], cache.pool[0, 1]  # [kv_heads, slots, dim]
    k_pool.normal_()
    v_pool.normal_()
    # (block table, length after this step): two short ones, one long and consecutive
    decodes = [([3, 9], 20), ([5, 7], 30), (list(range(20, 40)), 300)]
    # (block table, cached, new): consecutive (a slice), scattered (gathered)
    chunks = [(list(range(60, 80)), 100, 200), ([90, 85, 88, 83], 20, 30)]
    plan = cache.plan(chunks, decodes)
    tokens = len(decodes) + sum(n for _, _, n in chunks)
    query = torch.randn(1, HEADS, tokens, DIM)
    key = torch.randn(1, KV_HEADS, tokens, DIM)
    value = torch.randn(1, KV_HEADS, tokens, DIM)
    out = cache.attention(0, query, key, value, plan, DIM**-0.5)[0]  # [tokens, heads, dim]

    def slots(blocks: list[int], length: int) -> torch.Tensor:
        return torch.tensor([blocks[i // bs] * bs + i % bs for i in range(length)])

    for row, (blocks, length) in enumerate(decodes):
        at = slots(blocks, length)
        torch.testing.assert_close(k_pool[:, at[-1]], key[0, :, row])  # written, then read
        keys, values = k_pool[:, at], v_pool[:, at]
        want = sdpa(query[:, :, row : row + 1], keys[None], values[None], enable_gqa=True)
        torch.testing.assert_close(out[row], want[0, :, 0], atol=1e-5, rtol=1e-5)
    start = len(decodes)
    for blocks, cached, n in chunks:
        at = slots(blocks, cached + n)
        keys, values = k_pool[None, :, at], v_pool[None, :, at]
        mask = torch.ones(n, cached + n, dtype=torch.bool).tril_(cached)
        q = query[:, :, start : start + n]
        want = sdpa(q, keys, values, attn_mask=mask, enable_gqa=True)[0].transpose(0, 1)
        torch.testing.assert_close(out[start : start + n], want, atol=1e-5, rtol=1e-5)
        start += n
