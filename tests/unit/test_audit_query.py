"""The archiver's ``audit_query``: a day's raw, compressed and sealed parts read back in
order, page by page, with tenant and day checked before any path is built."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import pytest

from autoglm.archiver.audit import AuditLog
from autoglm.archiver.codec import Cipher, Codec
from autoglm.archiver.metrics import ArchiverMetrics
from autoglm.archiver.retention import Retention
from autoglm.archiver.serving import ArchiverService
from autoglm.archiver.settings import Compression, RetentionPolicy
from autoglm.core.schemas import AuditEvent
from tests.unit.test_archiver_sessions import build, invoke

KEY = Cipher(os.urandom(32))
DAY = dt.date(2024, 6, 1)
DAY_TIME = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC).timestamp()
LATER = DAY + dt.timedelta(days=5)  # old enough to be compressed, young enough to be kept


def service(root: Path, key: Cipher = KEY) -> ArchiverService:
    _, svc = build(root)
    svc.audit = AuditLog(root, Codec("gzip", False, lambda: key))
    return svc


def append(root: Path, n: int, tenant: str = "acme") -> None:
    AuditLog(root).append(
        AuditEvent(
            tenant=tenant,
            action="POST /v1/chat/completions",
            resource="/v1/chat/completions",
            status=200,
            latency_ms=1.0,
            time=DAY_TIME,
            request_id=f"r{n}",
        )
    )


def compress(root: Path, compression: Compression, encrypt: bool) -> None:
    codec = Codec(compression, encrypt, lambda: KEY)
    policy = RetentionPolicy(compress_after_days=1, delete_after_days=30)
    assert (
        Retention(root / "audit", policy, codec, ArchiverMetrics()).run(today=LATER)["compressed"]
        == 1
    )


def query(svc: ArchiverService, **body: Any) -> dict[str, Any]:
    reply: dict[str, Any] = invoke(svc, "audit_query", json.dumps(body))
    return reply


def request_ids(reply: dict[str, Any]) -> list[str]:
    return [e["request_id"] for e in reply["events"]]


def test_a_day_is_its_parts_in_order_whatever_each_was_written_with(tmp_path: Path) -> None:
    # Part 0 gzip, part 1 gzip sealed with the archive key, part 2 zstd, then late
    # events still raw: the layout retention leaves when settings change over time.
    append(tmp_path, 1)
    append(tmp_path, 2)
    compress(tmp_path, "gzip", encrypt=False)
    append(tmp_path, 3)
    compress(tmp_path, "gzip", encrypt=True)
    append(tmp_path, 4)
    compress(tmp_path, "zstd", encrypt=False)
    append(tmp_path, 5)
    tenant = tmp_path / "audit" / "acme"
    assert sorted(p.name for p in tenant.iterdir()) == [
        "2024-06-01.1.jsonl.gz.enc",
        "2024-06-01.2.jsonl.zst",
        "2024-06-01.jsonl",
        "2024-06-01.jsonl.gz",
    ]
    reply = query(service(tmp_path), tenant="acme", day="2024-06-01")
    assert request_ids(reply) == ["r1", "r2", "r3", "r4", "r5"]
    assert reply["tenant"] == "acme" and reply["day"] == "2024-06-01"
    assert reply["next_offset"] is None
    assert reply["events"][0]["status"] == 200


def test_pages_follow_next_offset_to_the_end(tmp_path: Path) -> None:
    for n in range(1, 4):
        append(tmp_path, n)
    compress(tmp_path, "gzip", encrypt=True)
    for n in range(4, 6):
        append(tmp_path, n)
    svc = service(tmp_path)
    seen: list[str] = []
    offsets: list[int | None] = []
    offset: int | None = 0
    while offset is not None:
        reply = query(svc, tenant="acme", day="2024-06-01", offset=offset, limit=2)
        assert len(reply["events"]) <= 2
        seen += request_ids(reply)
        offset = reply["next_offset"]
        offsets.append(offset)
    assert seen == ["r1", "r2", "r3", "r4", "r5"]
    assert offsets == [2, 4, None]
    # An exact fit ends without a further page; past the end is an empty page.
    assert query(svc, tenant="acme", day="2024-06-01", offset=3, limit=2)["next_offset"] is None
    assert query(svc, tenant="acme", day="2024-06-01", offset=9)["events"] == []


def test_a_line_being_appended_is_not_returned_half_written(tmp_path: Path) -> None:
    append(tmp_path, 1)
    raw = tmp_path / "audit" / "acme" / "2024-06-01.jsonl"
    with raw.open("ab") as fh:
        fh.write(b'{"request_id": "r2", "sta')
    reply = query(service(tmp_path), tenant="acme", day="2024-06-01")
    assert request_ids(reply) == ["r1"] and reply["next_offset"] is None


def test_unknown_tenants_and_days_are_empty_and_tenants_stay_apart(tmp_path: Path) -> None:
    append(tmp_path, 1, tenant="acme")
    append(tmp_path, 2, tenant="globex")
    svc = service(tmp_path)
    assert request_ids(query(svc, tenant="globex", day="2024-06-01")) == ["r2"]
    for body in (
        {"tenant": "initech", "day": "2024-06-01"},
        {"tenant": "acme", "day": "2024-06-02"},
    ):
        reply = query(svc, **body)
        assert "error" not in reply
        assert reply["events"] == [] and reply["next_offset"] is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tenant": "..", "day": "2024-06-01"}, "tenant"),
        ({"tenant": "acme/../globex", "day": "2024-06-01"}, "tenant"),
        ({"tenant": ".hidden", "day": "2024-06-01"}, "tenant"),
        ({"tenant": "acme", "day": "../globex/2024-06-01"}, "day"),
        ({"tenant": "acme", "day": "2024-06-*"}, "day"),
        ({"tenant": "acme", "day": "2024-02-30"}, "day"),
        ({"tenant": "acme", "day": "2024-06-01", "limit": 1001}, "limit"),
        ({"tenant": "acme", "day": "2024-06-01", "offset": -1}, "offset"),
    ],
)
def test_traversal_and_malformed_queries_are_refused(
    tmp_path: Path, body: dict[str, Any], param: str
) -> None:
    append(tmp_path, 1, tenant="globex")
    reply = query(service(tmp_path), **body)
    assert reply["error"]["status"] == 400 and reply["error"]["param"] == param


def test_a_part_sealed_with_another_key_is_an_error_not_an_outage(tmp_path: Path) -> None:
    append(tmp_path, 1)
    compress(tmp_path, "zstd", encrypt=True)
    svc = service(tmp_path, key=Cipher(os.urandom(32)))
    reply = query(svc, tenant="acme", day="2024-06-01")
    assert reply["error"]["status"] == 500 and reply["error"]["code"] == "corrupt_audit"
    # Unreadable bytes say nothing about the disk: the archiver stays ready.
    assert svc.readiness.ready


def test_reading_stops_at_the_page_and_never_opens_later_parts(tmp_path: Path) -> None:
    for n in range(1, 4):
        append(tmp_path, n)
    compress(tmp_path, "gzip", encrypt=False)
    # A damaged later part: a page that ends before it must not touch it.
    (tmp_path / "audit" / "acme" / "2024-06-01.1.jsonl.zst").write_bytes(b"not zstd")
    svc = service(tmp_path)
    reply = query(svc, tenant="acme", day="2024-06-01", limit=2)
    assert request_ids(reply) == ["r1", "r2"] and reply["next_offset"] == 2
    assert query(svc, tenant="acme", day="2024-06-01", offset=2)["error"]["code"] == (
        "corrupt_audit"
    )


def test_a_damaged_line_is_skipped_but_keeps_its_place(tmp_path: Path) -> None:
    append(tmp_path, 1)
    raw = tmp_path / "audit" / "acme" / "2024-06-01.jsonl"
    with raw.open("ab") as fh:
        fh.write(b"\x00\x00garbage\n42\n")
    append(tmp_path, 2)
    svc = service(tmp_path)
    first = query(svc, tenant="acme", day="2024-06-01", limit=3)
    assert request_ids(first) == ["r1"] and first["next_offset"] == 3
    assert request_ids(query(svc, tenant="acme", day="2024-06-01", offset=3)) == ["r2"]
