"""Blocked terms and patterns: refused in input (400 ``content_filter``), cut from output.

Text is matched after NFKC normalisation and case folding, with invisible format
characters (zero-width space, soft hyphen, ...) removed, so that full-width letters or
a zero-width space inside a word do not slip past; offsets still refer to the original
text. Terms are literal; where a term begins or ends with an ASCII letter or digit it
only matches there as a whole word ("kill" does not block "skill"), while CJK terms,
which have no word boundaries, match anywhere. Patterns are regular expressions matched
against the normalised, case-folded text.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence

from autoglm.core.errors import InvalidRequestError
from autoglm.core.schemas import GenerateResult

#: Characters with Unicode category Cf that render as nothing but split words.
_INVISIBLE = re.compile("[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\ufeff]")
_ASCII_WORD = re.compile("[a-z0-9]")


class ContentFilter:
    def __init__(self, terms: Sequence[str] = (), patterns: Sequence[str] = ()) -> None:
        parts = [_term_regex(term) for term in terms if term.strip()]
        #: Longest blocked term: a stream holds back at least this much text (x2, for
        #: invisible characters slipped between its letters).
        self.longest_term = max((len(t) for t in terms if t.strip()), default=0)
        for pattern in patterns:
            # Raised at start-up, naming the culprit, rather than on a request.
            try:
                matches_nothing = re.compile(pattern).fullmatch("") is not None
            except re.error as exc:
                raise ValueError(f"invalid blocked pattern {pattern!r}: {exc}") from None
            if matches_nothing:
                raise ValueError(f"blocked pattern {pattern!r} matches the empty string")
            parts.append(pattern)
        self._regex = (
            re.compile("|".join(f"(?:{p})" for p in parts), re.IGNORECASE) if parts else None
        )

    @property
    def enabled(self) -> bool:
        return self._regex is not None

    @property
    def stream_holdback(self) -> int:
        """Characters a stream keeps back until the next delta, so that a blocked match
        split across deltas is never half-sent: 64, or twice the longest term. (A
        pattern that matches more than this may still be cut after part was sent.)"""
        return max(64, 2 * self.longest_term) if self.enabled else 0

    def check_input(self, text: str) -> None:
        """Raise ``InvalidRequestError(code="content_filter")`` if ``text`` is blocked."""
        if self.first_violation(text) is not None:
            raise InvalidRequestError(
                "the input contains blocked content", code="content_filter", param="messages"
            )

    def check_texts(self, texts: Iterable[str | None], param: str, what: str = "the input") -> None:
        """``check_input`` for every text a request carries toward the model or into
        stored data (session history and metadata, attachment names, embeddings
        input); ``param`` names the field and ``what`` the text in the error."""
        if self._regex is None:
            return
        for text in texts:
            if text and self.first_violation(text) is not None:
                raise InvalidRequestError(
                    f"{what} contains blocked content", code="content_filter", param=param
                )

    def filter_result(self, result: GenerateResult) -> GenerateResult:
        """``result`` cut before its first blocked content, with ``finish_reason``
        ``content_filter``; unchanged when clean."""
        cut = self.first_violation(result.text)
        if cut is None:
            return result
        return result.model_copy(
            update={"text": result.text[:cut], "finish_reason": "content_filter"}
        )

    def first_violation(self, text: str) -> int | None:
        """Offset in ``text`` where output must be cut, or None when it is clean."""
        if self._regex is None:
            return None
        normalized, offsets = _normalize(text)
        match = self._regex.search(normalized)
        if match is None:
            return None
        return match.start() if offsets is None else offsets[match.start()]


def _term_regex(term: str) -> str:
    folded, _ = _normalize(term.strip())
    regex = re.escape(folded)
    if _ASCII_WORD.match(folded[0]):
        regex = "(?<![a-z0-9])" + regex
    if _ASCII_WORD.match(folded[-1]):
        regex += "(?![a-z0-9])"
    return regex


def _normalize(text: str) -> tuple[str, list[int] | None]:
    """Folded text and, unless it kept every offset, the original offset of each char.

    The common case (already NFKC, nothing invisible, folding keeps lengths) runs in C,
    which matters because streaming re-checks the whole text after every delta."""
    if unicodedata.is_normalized("NFKC", text) and not _INVISIBLE.search(text):
        folded = text.casefold()
        if len(folded) == len(text):
            return folded, None
    out: list[str] = []
    offsets: list[int] = []
    for index, char in enumerate(text):
        if _INVISIBLE.match(char):
            continue
        piece = unicodedata.normalize("NFKC", char).casefold()
        out.append(piece)
        offsets.extend([index] * len(piece))
    return "".join(out), offsets
