"""Content filter: blocked input is a 400 content_filter; output is cut at the first hit."""

from __future__ import annotations

import pytest

from autoglm.core.errors import InvalidRequestError
from autoglm.gateway.security.content_filter import ContentFilter

FILTER = ContentFilter(terms=["forbidden", "绝密", "C4 recipe"], patterns=[r"\b\d{4}-\d{4}\b"])


def test_empty_filter_passes_everything() -> None:
    empty = ContentFilter()
    empty.check_input("forbidden anything")
    assert empty.first_violation("forbidden") is None


@pytest.mark.parametrize(
    "text",
    [
        "this is FORBIDDEN",
        "Forbidden!",
        "文件是绝密的",
        "the c4   recipe".replace("   ", " "),
        "card 1234-5678 here",
        "\uff46\uff4f\uff52\uff42\uff49\uff44\uff44\uff45\uff4e",  # full-width letters
        "for\u200bbidden",  # zero-width space inside the word
        "forbid\u00adden",  # soft hyphen
    ],
)
def test_blocked_input_is_refused(text: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        FILTER.check_input(text)
    assert info.value.code == "content_filter"
    assert info.value.status == 400


@pytest.mark.parametrize(
    "text", ["", "an ordinary question", "unforbiddenness", "forbiddens", "12345-67890", "绝"]
)
def test_clean_input_passes(text: str) -> None:
    FILTER.check_input(text)
    assert FILTER.first_violation(text) is None


def test_first_violation_is_the_offset_to_cut_at() -> None:
    text = "Sure. The forbidden word, then forbidden again."
    assert FILTER.first_violation(text) == text.index("forbidden")
    assert FILTER.first_violation("好的\uff0c绝密文件") == 3
    assert FILTER.first_violation("ok 1234-5678") == 3


def test_offsets_refer_to_the_original_text_after_normalisation() -> None:
    # A ligature and zero-width characters before the hit; the hit in full-width letters.
    text = "\ufb01ne \u200b\u200b \uff23\uff14 recipe follows"
    cut = FILTER.first_violation(text)
    assert cut == text.index("\uff23")
    assert FILTER.first_violation(text[:cut]) is None


def test_partial_term_at_the_end_is_not_a_hit_yet() -> None:
    """Streaming checks the text so far; a prefix of a term must not cut early."""
    assert FILTER.first_violation("and then forbid") is None
    assert FILTER.first_violation("and then forbidden") == 9


@pytest.mark.parametrize("bad", ["(unclosed", "a*"])
def test_bad_patterns_fail_at_construction(bad: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        ContentFilter(patterns=[bad])


def test_blank_terms_are_ignored() -> None:
    assert ContentFilter(terms=["", "  "]).first_violation("anything") is None


def test_stream_holdback_covers_the_longest_term() -> None:
    assert ContentFilter().stream_holdback == 0
    assert ContentFilter(["kill"]).stream_holdback == 64
    long_term = "a forbidden phrase that is much longer than sixty-four characters in all"
    assert ContentFilter([long_term]).stream_holdback == 2 * len(long_term)
