"""Retention of the audit archive: late events never replace an archive; the scheduler
survives any failure of a pass."""

from __future__ import annotations

import datetime as dt
import gzip
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from autoglm.archiver.codec import Cipher, Codec, CodecError
from autoglm.archiver.metrics import ArchiverMetrics
from autoglm.archiver.retention import Retention, RetentionScheduler
from autoglm.archiver.settings import RetentionPolicy

TODAY = dt.date(2024, 6, 10)
POLICY = RetentionPolicy(compress_after_days=1, delete_after_days=30)


def _retention(base: Path, codec: Codec | None = None) -> Retention:
    codec = codec or Codec("gzip", False, lambda: Cipher(os.urandom(32)))
    return Retention(base, POLICY, codec, ArchiverMetrics())


def test_late_events_become_a_new_part_instead_of_replacing_the_archive(tmp_path: Path) -> None:
    tenant = tmp_path / "acme"
    tenant.mkdir()
    raw = tenant / "2024-06-01.jsonl"
    retention = _retention(tmp_path)
    raw.write_bytes(b'{"n": 1}\n')
    assert retention.run(today=TODAY)["compressed"] == 1
    # Two late events for the same, already compressed day, each followed by a pass.
    for n in (2, 3):
        raw.write_bytes(b'{"n": %d}\n' % n)
        assert retention.run(today=TODAY)["compressed"] == 1
    names = sorted(p.name for p in tenant.iterdir())
    assert names == ["2024-06-01.1.jsonl.gz", "2024-06-01.2.jsonl.gz", "2024-06-01.jsonl.gz"]
    parts = ["2024-06-01.jsonl.gz", "2024-06-01.1.jsonl.gz", "2024-06-01.2.jsonl.gz"]
    events = b"".join(gzip.decompress((tenant / p).read_bytes()) for p in parts)
    assert events == b'{"n": 1}\n{"n": 2}\n{"n": 3}\n'
    # Parts age out with their day.
    assert retention.run(today=TODAY + dt.timedelta(days=30))["deleted"] == 3
    assert not list(tenant.iterdir())


def test_a_part_written_with_other_settings_is_not_replaced_either(tmp_path: Path) -> None:
    tenant = tmp_path / "acme"
    tenant.mkdir()
    (tenant / "2024-06-01.jsonl.zst").write_bytes(b"written while compression was zstd")
    (tenant / "2024-06-01.jsonl").write_bytes(b'{"late": true}\n')
    key = Cipher(os.urandom(32))
    retention = _retention(tmp_path, Codec("gzip", True, lambda: key))
    assert retention.run(today=TODAY)["compressed"] == 1
    assert (tenant / "2024-06-01.jsonl.zst").read_bytes() == b"written while compression was zstd"
    sealed = (tenant / "2024-06-01.1.jsonl.gz.enc").read_bytes()
    # The AAD names the part: it opens as part 1 only.
    assert gzip.decompress(key.open(sealed, b"audit:acme/2024-06-01.1.jsonl")) == (
        b'{"late": true}\n'
    )
    with pytest.raises(CodecError):
        key.open(sealed, b"audit:acme/2024-06-01.jsonl")


def test_an_append_during_compression_keeps_the_raw_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tenant = tmp_path / "acme"
    tenant.mkdir()
    raw = tenant / "2024-06-01.jsonl"
    raw.write_bytes(b'{"n": 1}\n')
    retention = _retention(tmp_path)
    encode = retention.codec.encode

    def encode_then_append(data: bytes, aad: bytes) -> Any:
        with raw.open("ab") as fh:  # the audit log acknowledges a late event meanwhile
            fh.write(b'{"n": 2}\n')
        return encode(data, aad)

    monkeypatch.setattr(retention.codec, "encode", encode_then_append)
    assert retention.run(today=TODAY)["compressed"] == 0
    assert sorted(p.name for p in tenant.iterdir()) == ["2024-06-01.jsonl"]
    assert raw.read_bytes() == b'{"n": 1}\n{"n": 2}\n'


def test_scheduler_logs_any_failure_and_keeps_its_schedule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    second = threading.Event()

    class Flaky:
        def run(self) -> dict[str, int]:
            calls.append(1)
            if len(calls) == 1:
                raise CodecError("the archive key could not be fetched")
            second.set()
            return {"compressed": 0, "deleted": 0}

    scheduler = RetentionScheduler(Flaky(), interval_s=0.01)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="autoglm.archiver.retention"):
        scheduler.start()
        try:
            assert second.wait(5), "the scheduler died after a failed pass"
        finally:
            scheduler.stop()
    failed = [r for r in caplog.records if r.getMessage() == "retention pass failed"]
    assert failed and "could not be fetched" in failed[0].__dict__["reason"]
