"""Retention of rolled daily files (the audit archive), run by an internal scheduler.

An internal thread rather than a Dapr ``bindings.cron`` component: the job needs the
archive volume, which only the archiver mounts, and it keeps working where no binding
component is deployed. Every ``interval_seconds`` it:

* compresses ``{day}.jsonl`` files older than ``compress_after_days`` to
  ``{day}.jsonl.gz`` (or ``.zst``), AES-GCM sealed as ``....enc`` when ``encrypt`` is on,
  written atomically before the original is removed. An event that arrives late for a day
  already compressed recreates ``{day}.jsonl``; it becomes the next free part
  ``{day}.{n}.jsonl.gz`` (n = 1, 2, ...), never a rewrite of an earlier archive. A day's
  events are the concatenation of its parts in ``n`` order;
* deletes files (raw or compressed) older than ``delete_after_days``.

Today's file is never touched: it is still being appended to.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import re
from pathlib import Path

from autoglm.archiver.atomic import atomic_write, fsync_dir
from autoglm.archiver.codec import Codec, associated_data
from autoglm.archiver.metrics import ArchiverMetrics
from autoglm.archiver.periodic import Periodic
from autoglm.archiver.settings import RetentionPolicy

log = logging.getLogger(__name__)

_DAILY = re.compile(r"^(\d{4}-\d{2}-\d{2})(\.\d+)?\.jsonl(\.gz|\.zst)?(\.enc)?$")
_SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}
#: Every name one part may have, whatever the settings were when it was written.
_VARIANTS = [c + e for c in ("", ".gz", ".zst") for e in ("", ".enc")]


class Retention:
    def __init__(
        self, base: Path, policy: RetentionPolicy, codec: Codec, metrics: ArchiverMetrics
    ) -> None:
        self.base = base
        self.policy = policy
        self.codec = codec
        self.metrics = metrics

    def run(self, today: dt.date | None = None) -> dict[str, int]:
        """One pass; returns how many files were compressed and deleted."""
        today = today or dt.datetime.now(dt.UTC).date()
        done = {"compressed": 0, "deleted": 0}
        for path in sorted(self.base.glob("*/*")):
            match = _DAILY.match(path.name)
            if match is None or not path.is_file():
                continue
            age = (today - dt.date.fromisoformat(match.group(1))).days
            if age > self.policy.delete_after_days:
                path.unlink()
                fsync_dir(path.parent)
                done["deleted"] += 1
            elif age > self.policy.compress_after_days and not any(match.groups()[1:]):
                done["compressed"] += self._compress(path)
        for action, count in done.items():
            self.metrics.retention.labels(action).inc(count)
        return done

    def _compress(self, path: Path) -> bool:
        suffix = _SUFFIX[self.codec.compression] + (".enc" if self.codec.encrypt else "")
        if not suffix:
            return False  # compression "none" without encryption: nothing to change
        stem = _free_stem(path)
        # The AAD names the part, so one part's blob cannot pass for another's.
        aad = associated_data("audit", path.parent.name, stem)
        data = path.read_bytes()
        blob, _ = self.codec.encode(data, aad)
        target = path.with_name(stem + suffix)
        atomic_write(target, blob)
        if path.stat().st_size != len(data):
            # A late event was appended meanwhile: retry the whole file on the next pass.
            target.unlink()
            fsync_dir(path.parent)
            return False
        path.unlink()
        fsync_dir(path.parent)
        return True


def _free_stem(path: Path) -> str:
    """``{day}.jsonl``, or ``{day}.{n}.jsonl`` for the first ``n`` with no part on disk."""
    day = path.name.removesuffix(".jsonl")
    for n in itertools.count():
        stem = f"{day}.{n}.jsonl" if n else path.name
        # Part 0's raw name is ``path`` itself, the file being compressed.
        if not any(path.with_name(stem + v).exists() for v in _VARIANTS if n or v):
            return stem
    raise AssertionError("unreachable")


class RetentionScheduler(Periodic):
    """A retention pass at start and every ``interval_s``. Any failure (disk, codec, key
    fetch) is logged and the pass retried on schedule."""

    what = "retention pass"
    at_start = True

    def __init__(self, retention: Retention, interval_s: float) -> None:
        super().__init__(interval_s)
        self.retention = retention

    def work(self) -> None:
        log.info("retention pass", extra=self.retention.run())
