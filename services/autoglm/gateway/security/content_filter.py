"""Blocked terms and patterns: refused in input, cut from output."""

from __future__ import annotations

import re
from collections.abc import Sequence

from autoglm.core.errors import InvalidRequestError


class ContentFilter:
    def __init__(self, terms: Sequence[str] = (), patterns: Sequence[str] = ()) -> None:
        parts = [re.escape(t) for t in terms if t] + [p for p in patterns if p]
        # Invalid patterns fail at start-up (settings), not per request.
        self._regex = (
            re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE) if parts else None
        )

    def check_input(self, text: str) -> None:
        if self._regex is not None and self._regex.search(text):
            raise InvalidRequestError(
                "the input contains blocked content", code="content_filter", param="messages"
            )

    def first_violation(self, text: str) -> int | None:
        """Offset where output must be cut, or None when it is clean."""
        if self._regex is None:
            return None
        match = self._regex.search(text)
        return match.start() if match else None
