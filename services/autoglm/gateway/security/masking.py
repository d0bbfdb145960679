"""Masking of personal data and credentials in audit events and opt-in body logs.

Each rule is specific enough to leave dates, times, IP addresses, ids and counts alone,
since an audit trail with every number blanked is useless. Digits are delimited with
digit look-arounds rather than ``\\b``, because in Chinese text a number directly follows
a CJK character ("电话13812345678"), which ``\\b`` treats as part of the same word.
Credentials go first, so that an e-mail-like or number-like run inside a token is not
half-masked by a later rule.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

#: A payment card number: 13 to 19 digits in one run, or grouped the way cards are
#: printed (4-4-4-4[-3], Amex 4-6-5) with spaces or dashes; not part of a longer run
#: of letters or digits (hex ids stay untouched), nor after a "+" (phone numbers).
_CARD = re.compile(
    r"(?<![0-9A-Za-z+])"
    r"(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{4}(?:\1\d{3})?|\d{4}([ -])\d{6}\2\d{5})"
    r"(?![0-9A-Za-z])"
)


def _luhn_ok(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _mask_card(match: re.Match[str]) -> str:
    """Only numbers that pass the Luhn check: long counters and timestamps stay."""
    digits = re.sub(r"[ -]", "", match.group())
    return "[CARD]" if _luhn_ok(digits) else match.group()


_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[JWT]"),
    # key=value / "key": "value" credentials in query strings, headers and JSON.
    (
        re.compile(
            r"(?i)\b((?:api[_-]?key|access[_-]?token|refresh[_-]?token|secret|password|passwd)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"
        ),
        r"\1[REDACTED]",
    ),
    # Prefixed API keys: OpenAI style sk-..., ours (agk_...), and similar.
    (re.compile(r"\b(?:sk|pk|rk|ak|agk)[-_][A-Za-z0-9_-]{16,}"), "[API_KEY]"),
    (
        re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"),
        "[EMAIL]",
    ),
    # Chinese resident identity card: region, birth date 18xx-20xx, sequence, check digit.
    (
        re.compile(
            r"(?<![0-9])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
            r"\d{3}[0-9Xx](?![0-9A-Za-z])"
        ),
        "[ID_NUMBER]",
    ),
    (_CARD, _mask_card),
    # US social security number.
    (re.compile(r"(?<![0-9-])\d{3}-\d{2}-\d{4}(?![0-9-])"), "[ID_NUMBER]"),
    # Chinese mobile, optionally +86, optionally grouped 3-4-4.
    (
        re.compile(r"(?<![0-9+])(?:\+?86[\s-]?)?1[3-9]\d[\s-]?\d{4}[\s-]?\d{4}(?![0-9])"),
        "[PHONE]",
    ),
    # International numbers written with a leading +.
    (
        re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,5}(?![0-9])"),
        "[PHONE]",
    ),
    # North American (555) 123-4567 / 555-123-4567 / 555.123.4567.
    (re.compile(r"(?<![0-9])(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}(?![0-9])"), "[PHONE]"),
    # Chinese landline with area code: 010-12345678, 0755-1234567.
    (re.compile(r"(?<![0-9-])0\d{2,3}-\d{7,8}(?![0-9])"), "[PHONE]"),
]


def mask_pii(text: str) -> str:
    """``text`` with phone numbers, e-mail addresses, card and ID numbers and credentials
    masked. Short values (an audit event's subject, path and model, which repeat from
    request to request) are remembered: the rules cost ~0.05 ms per value, every request
    masks four (issue 15)."""
    if len(text) <= _REMEMBERED_LEN:
        return _mask_remembered(text)
    return _mask(text)


#: Values up to this long are remembered, at most ``maxsize`` of them (least recently
#: used first out).
_REMEMBERED_LEN = 256


@functools.lru_cache(maxsize=4096)
def _mask_remembered(text: str) -> str:
    return _mask(text)


def _mask(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
