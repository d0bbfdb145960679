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

Placement: a sequence's blocks are kept consecutive where the pool allows, so that the
attention reads a long sequence's keys and values as one slice of the pool instead of
gathering them block by block (``kvcache``). A sequence's first fresh block starts a
*region* of as many free consecutive blocks as it expects to need (prompt plus
``max_tokens``), handed out by a cursor that moves through the pool, and each next block
is the one after its last when that is free. It is only a preference: when that block is
taken, any free block will do.
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
    #: Where the next fresh block would best go (placement; -1: anywhere).
    next_block: int = -1


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, max_cached_blocks: int | None = None):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks = num_blocks
        self.block_size = block_size
        #: Unreferenced blocks kept for prefix sharing at most (``None``: the whole pool;
        #: 0: prefix sharing off).
        self.max_cached_blocks = num_blocks if max_cached_blocks is None else max_cached_blocks
        #: Free blocks (not cached): the truth is ``_is_free``; the deque is their order
        #: for allocations without a preferred place, and may hold stale entries
        #: (blocks since taken by placement), skipped when popped.
        self._is_free = [True] * num_blocks
        self._free: deque[int] = deque(range(num_blocks))
        self._num_free = num_blocks
        #: Where the next region search starts.
        self._cursor = 0
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
        return self._num_free + len(self._lru)

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
    def allocate(self, table: BlockTable, tokens: int, expected: int = 0) -> bool:
        """Grow ``table`` to hold ``tokens`` tokens; all or nothing. ``expected``: the
        tokens the sequence may come to hold (placement: its region's size)."""
        need = self.missing(table, tokens)
        if need > self.num_free:
            return False
        if need and table.next_block < 0 and expected:
            table.next_block = self._region(self.blocks_for(expected) - len(table.blocks))
        for _ in range(need):
            block = self._take(table.next_block)
            table.blocks.append(block)
            table.next_block = block + 1
        return True

    def _region(self, size: int) -> int:
        """The first block of ``size`` free consecutive ones from the cursor on (the
        cursor moves past them), or -1 when there is no such run."""
        n = self.num_blocks
        size = max(1, min(size, n))
        free = self._is_free
        i, run = self._cursor, 0
        for _ in range(n + size):
            if i >= n:
                i, run = 0, 0  # a region does not wrap around
            run = run + 1 if free[i] else 0
            i += 1
            if run == size:
                self._cursor = i % n
                return i - size
        return -1

    def _take(self, preferred: int = -1) -> int:
        if 0 <= preferred < self.num_blocks and self._is_free[preferred]:
            block = preferred
        elif self._num_free:
            block = self._free.popleft()
            while not self._is_free[block]:
                block = self._free.popleft()
        else:
            block, _ = self._lru.popitem(last=False)
            self._forget(block)
            self.evictions += 1
            self._refs[block] = 1
            return block
        self._is_free[block] = False
        self._num_free -= 1
        self._refs[block] = 1
        return block

    def _release(self, block: int) -> None:
        self._forget(block)
        self._is_free[block] = True
        self._num_free += 1
        self._free.append(block)
        if len(self._free) > 2 * self.num_blocks:  # drop stale entries now and then
            self._free = deque(dict.fromkeys(b for b in self._free if self._is_free[b]))

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
                self._release(block)
        table.blocks, table.hashed, table.last_hash, table.next_block = [], 0, 0, -1
        while len(self._lru) > self.max_cached_blocks:
            block, _ = self._lru.popitem(last=False)
            self._release(block)
            self.evictions += 1

    def clear(self) -> None:
        """Drop every cached, unreferenced block (back to the free list)."""
        while self._lru:
            block, _ = self._lru.popitem(last=False)
            self._release(block)

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
