"""Masking of personal data and credentials in audit events and opt-in body logs."""

from __future__ import annotations

import re

_RULES: list[tuple[re.Pattern[str], str]] = [
    # Bearer tokens and JWTs before anything that could match inside them.
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+"), "Bearer [REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[JWT]"),
    (re.compile(r"\b(?:sk|pk|ak|key)[-_][A-Za-z0-9_-]{12,}\b"), "[API_KEY]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"), "[EMAIL]"),
    # Chinese resident ID (18 digits, last may be X) and US SSN.
    (re.compile(r"\b\d{17}[\dXx]\b"), "[ID_NUMBER]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[ID_NUMBER]"),
    # Phone numbers: international or local, 7+ digits with common separators.
    (re.compile(r"(?<![\w])\+?\d[\d\s().-]{6,}\d(?![\w])"), "[PHONE]"),
]


def mask_pii(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return text
