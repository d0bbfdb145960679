"""KV caches: one left-padded batch cache for the running sequences, and a prefix cache.

``BatchKV`` keeps every running sequence's keys and values in one ``DynamicCache`` whose
rows are left-padded to a common length, so a decode step is one forward pass for the
whole batch. A sequence joins by padding either itself or the batch; it leaves by
dropping its row, and columns that became padding for every row are trimmed away.
Prompts are never recomputed during decoding.

``PrefixCache`` keeps finished sequences' KV (prompt and generated tokens) so the next
turn of a conversation — whose prompt starts with the previous turn — only computes the
new tokens. It is bounded in bytes and evicts least recently used entries.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

#: Per layer (keys, values), each ``[1, kv_heads, tokens, head_dim]``.
LayerKV = list[tuple[torch.Tensor, torch.Tensor]]


def cache_from_layers(layers: LayerKV) -> DynamicCache:
    cache = DynamicCache()
    for idx, (keys, values) in enumerate(layers):
        cache.update(keys, values, idx)
    return cache


def _layers(cache: DynamicCache) -> list[Any]:
    """The per-layer K/V holders (``DynamicLayer``: ``.keys`` / ``.values`` tensors)."""
    return list(cache.layers)


def cache_layers(cache: DynamicCache) -> LayerKV:
    return [(layer.keys, layer.values) for layer in _layers(cache)]


def _left_pad(t: torch.Tensor, n: int) -> torch.Tensor:
    if n == 0:
        return t
    pad = t.new_zeros((*t.shape[:2], n, t.shape[3]))
    return torch.cat([pad, t], dim=2)


class BatchKV:
    """The running batch's cache plus its attention mask ``[rows, tokens]``."""

    def __init__(self) -> None:
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return 0 if self.mask is None else int(self.mask.shape[1])

    def add(self, layers: LayerKV, mask: torch.Tensor | None = None) -> None:
        """Append sequences as new rows: ``layers`` hold ``n`` rows, left-padded to a
        common length, with their ``[n, tokens]`` mask (default: one unpadded row)."""
        new_len = int(layers[0][0].shape[2])
        if mask is None:
            mask = torch.ones((1, new_len), dtype=torch.long, device=layers[0][0].device)
        if self.cache is None or self.mask is None:
            self.cache = cache_from_layers(layers)
            self.mask = mask
            return
        grow = max(0, new_len - self.length)
        pad_new = max(0, self.length - new_len)
        for layer, (keys, values) in zip(_layers(self.cache), layers, strict=True):
            layer.keys = torch.cat([_left_pad(layer.keys, grow), _left_pad(keys, pad_new)])
            layer.values = torch.cat([_left_pad(layer.values, grow), _left_pad(values, pad_new)])
        old = torch.nn.functional.pad(self.mask, (grow, 0))
        self.mask = torch.cat([old, torch.nn.functional.pad(mask, (pad_new, 0))])

    def remove(self, keep: list[int]) -> None:
        """Keep only the rows in ``keep`` (in order); trim all-padding columns."""
        if not keep:
            self.cache, self.mask = None, None
            return
        assert self.cache is not None and self.mask is not None
        index = torch.tensor(keep, device=self.mask.device)
        mask = self.mask.index_select(0, index)
        # Leading columns that are padding in every remaining row carry nothing.
        lead = int((mask.sum(dim=0) > 0).long().argmax())
        for layer in _layers(self.cache):
            layer.keys = layer.keys.index_select(0, index)[:, :, lead:]
            layer.values = layer.values.index_select(0, index)[:, :, lead:]
        self.mask = mask[:, lead:]

    def extend_mask(self) -> torch.Tensor:
        """The mask for a decode step: every row gains one real token."""
        assert self.mask is not None
        self.mask = torch.nn.functional.pad(self.mask, (0, 1), value=1)
        return self.mask

    def row_layers(self, row: int, tokens: int) -> LayerKV:
        """A copy of one row's last ``tokens`` positions (its real tokens)."""
        assert self.cache is not None
        return [
            (
                layer.keys[row : row + 1, :, -tokens:].clone(),
                layer.values[row : row + 1, :, -tokens:].clone(),
            )
            for layer in _layers(self.cache)
        ]


@dataclass
class _Entry:
    tokens: tuple[int, ...]
    layers: LayerKV
    nbytes: int


class PrefixCache:
    """LRU map from token sequences to their KV, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int, min_tokens: int = 8) -> None:
        self.max_bytes = max_bytes
        self.min_tokens = min_tokens
        self._entries: OrderedDict[tuple[int, ...], _Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def put(self, tokens: list[int], layers: LayerKV) -> None:
        if len(tokens) < self.min_tokens or self.max_bytes <= 0:
            return
        nbytes = sum(k.numel() * k.element_size() * 2 for k, _ in layers)
        if nbytes > self.max_bytes:
            return
        key = tuple(tokens)
        with self._lock:
            old = self._entries.pop(key, None)
            if old:
                self._bytes -= old.nbytes
            self._entries[key] = _Entry(key, layers, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def lookup(self, prompt: list[int]) -> tuple[int, LayerKV | None]:
        """Longest cached common prefix of ``prompt`` (leaving at least one token to run)."""
        best_len, best = 0, None
        limit = len(prompt) - 1
        with self._lock:
            for key, entry in self._entries.items():
                n = _common_prefix(key, prompt, limit)
                if n > best_len:
                    best_len, best = n, entry
            if best is None or best_len < self.min_tokens:
                self.misses += 1
                return 0, None
            self._entries.move_to_end(best.tokens)
            self.hits += 1
        return best_len, [(k[:, :, :best_len], v[:, :, :best_len]) for k, v in best.layers]


def _common_prefix(a: tuple[int, ...], b: list[int], limit: int) -> int:
    n = min(len(a), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
