"""Block bookkeeping of the paged KV cache: free list, reference counts, prefix sharing.

Pure Python (no torch), so the scheduler's policy and its tests run without a model. The
tensors these block numbers index live in ``kvcache.PagedKVCache``.

A sequence owns a *block table*: the numbers of the fixed-size blocks (``block_size``
tokens each) holding its keys and values, in order. A block that is full and computed is
registered under a hash of its tokens chained with the hash of the block before it (as
vLLM's automatic prefix caching does), so a later prompt that starts with the same tokens
shares it by reference instead of computing it again. A block nobody references any more
stays cached, in least-recently-used order, until the pool needs it back: a cached block
is as good as a free one for allocation, it is only reused last.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

#: (hash of the previous block, this block's tokens): the identity of a full block.
BlockKey = tuple[int, tuple[int, ...]]


@dataclass
class BlockTable:
    """One sequence's blocks, and how many of them are registered for sharing."""

    blocks: list[int] = field(default_factory=list)
    #: Leading blocks registered (or matched) by content hash.
    hashed: int = 0
    #: Hash of the last registered block (the parent of the next one).
    last_hash: int = 0


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, max_cached_blocks: int | None = None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        #: Unreferenced blocks kept for prefix sharing at most (``None``: the whole pool;
        #: 0: prefix sharing off).
        self.max_cached_blocks = num_blocks if max_cached_blocks is None else max_cached_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._refs = [0] * num_blocks
        self._key_of: list[int | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        #: Cached, unreferenced blocks, least recently used first.
        self._lru: OrderedDict[int, None] = OrderedDict()
        #: Prompt blocks served from the cache / looked up.
        self.hits = 0
        self.queries = 0
        self.evictions = 0

    # -- capacity --------------------------------------------------------------------
    @property
    def prefix_sharing(self) -> bool:
        return self.max_cached_blocks > 0

    @property
    def num_free(self) -> int:
        """Blocks an allocation can take now (free plus cached-unreferenced)."""
        return len(self._free) + len(self._lru)

    @property
    def num_used(self) -> int:
        """Blocks referenced by at least one sequence."""
        return self.num_blocks - self.num_free

    @property
    def num_cached(self) -> int:
        return len(self._lru)

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def missing(self, table: BlockTable, tokens: int) -> int:
        """Blocks ``table`` must gain to hold ``tokens`` tokens."""
        return max(0, self.blocks_for(tokens) - len(table.blocks))

    # -- allocation ------------------------------------------------------------------
    def allocate(self, table: BlockTable, tokens: int) -> bool:
        """Grow ``table`` to hold ``tokens`` tokens; all or nothing."""
        need = self.missing(table, tokens)
        if need > self.num_free:
            return False
        for _ in range(need):
            table.blocks.append(self._take())
        return True

    def _take(self) -> int:
        if self._free:
            block = self._free.popleft()
        else:
            block, _ = self._lru.popitem(last=False)
            self._forget(block)
            self.evictions += 1
        self._refs[block] = 1
        return block

    def _forget(self, block: int) -> None:
        key = self._key_of[block]
        if key is not None:
            self._key_of[block] = None
            if self._by_hash.get(key) == block:
                del self._by_hash[key]

    def free(self, table: BlockTable) -> None:
        """Give a sequence's blocks back; registered ones stay cached for sharing."""
        for block in reversed(table.blocks):  # tail first: evicted before the head
            self._refs[block] -= 1
            if self._refs[block] > 0:
                continue
            if self._key_of[block] is not None and self.prefix_sharing:
                self._lru[block] = None
            else:
                self._forget(block)
                self._free.append(block)
        table.blocks, table.hashed, table.last_hash = [], 0, 0
        while len(self._lru) > self.max_cached_blocks:
            block, _ = self._lru.popitem(last=False)
            self._forget(block)
            self._free.append(block)
            self.evictions += 1

    def clear(self) -> None:
        """Drop every cached, unreferenced block (back to the free list)."""
        while self._lru:
            block, _ = self._lru.popitem(last=False)
            self._forget(block)
            self._free.append(block)

    # -- prefix sharing --------------------------------------------------------------
    @staticmethod
    def block_hash(parent: int, tokens: tuple[int, ...]) -> int:
        return hash((parent, tokens))

    def match_prefix(self, table: BlockTable, tokens: list[int]) -> int:
        """Share the cached blocks ``tokens`` starts with into the empty ``table``;
        returns how many tokens they cover (always leaving one token to compute)."""
        assert not table.blocks
        if not self.prefix_sharing:
            return 0
        bs = self.block_size
        full = (len(tokens) - 1) // bs
        self.queries += full
        parent = 0
        for i in range(full):
            key = self.block_hash(parent, tuple(tokens[i * bs : (i + 1) * bs]))
            block = self._by_hash.get(key)
            if block is None:
                break
            if self._refs[block] == 0:
                del self._lru[block]
            self._refs[block] += 1
            table.blocks.append(block)
            parent = key
        table.hashed, table.last_hash = len(table.blocks), parent
        self.hits += len(table.blocks)
        return len(table.blocks) * bs

    def register(self, table: BlockTable, tokens: list[int], computed: int) -> None:
        """Register the blocks of ``table`` that ``computed`` tokens filled completely."""
        if not self.prefix_sharing:
            return
        bs = self.block_size
        full = min(computed // bs, len(table.blocks))
        while table.hashed < full:
            i = table.hashed
            key = self.block_hash(table.last_hash, tuple(tokens[i * bs : (i + 1) * bs]))
            block = table.blocks[i]
            if key not in self._by_hash and self._key_of[block] is None:
                self._by_hash[key] = block
                self._key_of[block] = key
            table.hashed, table.last_hash = i + 1, key
