"""PII masking for audit events: what is masked and, as important, what is left alone."""

from __future__ import annotations

import pytest

from autoglm.gateway.security.masking import mask_pii
from autoglm.gateway.security.tokens import new_api_key

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsInRlbmFudCI6ImFjbWUifQ"
    ".Zm9vYmFyYmF6cXV4cXV1eGNvcmdlZ3JhdWx0Z2FycGx5"
)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("mail alice.smith+x@example.co.uk now", "mail [EMAIL] now"),
        ("电话13812345678请回电", "电话[PHONE]请回电"),
        ("call +86 138-1234-5678", "call [PHONE]"),
        ("call 138 1234 5678", "call [PHONE]"),
        ("call +1 (555) 123-4567 today", "call [PHONE] today"),
        ("call (555) 123-4567", "call [PHONE]"),
        ("call 555.123.4567", "call [PHONE]"),
        ("uk +44 20 7946 0958", "uk [PHONE]"),
        ("office 010-12345678", "office [PHONE]"),
        ("身份证号110101199003071234", "身份证号[ID_NUMBER]"),
        ("id 11010119900307123X.", "id [ID_NUMBER]."),
        ("ssn 078-05-1120", "ssn [ID_NUMBER]"),
        ("Authorization: Bearer abc.def-ghi", "Authorization: Bearer [REDACTED]"),
        (f"token {JWT} leaked", "token [JWT] leaked"),
        ("key sk-proj-ABCDEFGHIJKLMNOPqrstuv", "key [API_KEY]"),
        ('{"api_key": "s3cr3t-value"}', '{"api_key": "[REDACTED]"}'),
        ("GET /x?access_token=abc123&y=1", "GET /x?access_token=[REDACTED]&y=1"),
        ("password=hunter2", "password=[REDACTED]"),
    ],
)
def test_personal_data_and_credentials_are_masked(text: str, masked: str) -> None:
    assert mask_pii(text) == masked


def test_our_own_api_keys_are_masked() -> None:
    key, _, _ = new_api_key(tenant="acme", role="user", subject="ci")
    assert mask_pii(f"used {key} here") == "used [API_KEY] here"


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-22T08:49:36Z",
        "2026-11-22 08:49:36.123",
        "client 192.168.10.254 port 8080",
        "request 3f1c2a4e-9b7d-4c21-8e3a-5d6f7a8b9c0d",
        "version 1.18.3, 4096 tokens, 1234567 bytes",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736",
        "epoch 1763801376123",
        "price 12.50 and 3+4=7",
        "",
    ],
)
def test_ordinary_values_are_left_alone(text: str) -> None:
    assert mask_pii(text) == text


def test_several_kinds_in_one_text() -> None:
    out = mask_pii("bob@example.com, 13912345678, 110101199003071234, Bearer xyz")
    assert out == "[EMAIL], [PHONE], [ID_NUMBER], Bearer [REDACTED]"
