"""Incremental detokenization with stop sequences, for streaming and final text alike.

Decoding token by token breaks multi-byte characters and byte-level BPE merges, so text
is produced from a sliding window of ids (the technique vLLM and TGI use): only text that
can no longer change is emitted. Text that could still become the start of a stop sequence
is held back, so a stop string never leaks to a streaming client.
"""

from __future__ import annotations

from typing import Any


class IncrementalText:
    def __init__(self, tokenizer: Any, stops: list[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self._holdback = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self._prefix_offset = 0
        self._read_offset = 0
        self.text = ""  # all decoded text so far (stable part)
        self._emitted = 0
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token_id: int) -> str:
        """Add one token; return the newly safe text (may be empty)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
        full = self._decode(self.ids[self._prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            self.text += full[len(prefix) :]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
        for stop in self.stops:
            at = self.text.find(stop, max(0, self._emitted - len(stop)))
            if at != -1:
                self.text = self.text[:at]
                self.stopped = True
        safe = (
            len(self.text) if self.stopped else max(self._emitted, len(self.text) - self._holdback)
        )
        delta = self.text[self._emitted : safe]
        self._emitted = safe
        return delta

    def flush(self) -> str:
        """At the end of generation: everything not yet emitted."""
        if not self.stopped:
            tail = self._decode(self.ids[self._prefix_offset :])
            prefix = self._decode(self.ids[self._prefix_offset : self._read_offset])
            if len(tail) > len(prefix):
                self.text += tail[len(prefix) :].rstrip("\ufffd")
        delta = self.text[self._emitted :]
        self._emitted = len(self.text)
        return delta
