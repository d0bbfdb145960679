"""Append-only audit archive: one JSONL file per tenant and UTC day, and reading it back.

``{root}/audit/{tenant}/{YYYY-MM-DD}.jsonl``; each event is appended and fsynced before it
is acknowledged (events that arrive together share one write and fsync). A file stops
growing when its day ends ("rolled"); ``retention`` then compresses and eventually
deletes it. A day's events are its compressed parts
``{day}[.{n}].jsonl.{gz|zst}[.enc]`` in ``n`` order, then the raw ``{day}.jsonl`` (today's
file, or late events not yet compressed).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import re
import time
import zlib
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import Any

import zstandard

from autoglm.archiver import paths
from autoglm.archiver.atomic import GroupAppender
from autoglm.archiver.codec import Cipher, Codec, CodecError, CodecInfo, associated_data
from autoglm.core.archive_protocol import AuditQueryReply, AuditQueryRequest
from autoglm.core.errors import InternalError, UnavailableError
from autoglm.core.schemas import AuditEvent

log = logging.getLogger(__name__)

_PART = re.compile(
    r"^(?P<day>\d{4}-\d{2}-\d{2})(?:\.(?P<n>\d+))?\.jsonl(?P<comp>\.gz|\.zst)?(?P<enc>\.enc)?$"
)
_COMPRESSION = {".gz": "gzip", ".zst": "zstd", None: "none"}


class CorruptAuditError(InternalError, code="corrupt_audit"):
    """An archived audit part that cannot be read back."""


def _no_key() -> Cipher:
    raise UnavailableError("no archive key is configured to open encrypted audit files")


class AuditLog:
    def __init__(self, root: Path, codec: Codec | None = None) -> None:
        self.dir = root / "audit"
        # Only decoding is used here; what the codec would encode with does not matter.
        self.codec = codec or Codec("none", False, _no_key)
        # Events delivered together share a write and an fsync of their day's file.
        self._appender = GroupAppender()

    def append(self, event: AuditEvent) -> Path:
        day = time.strftime("%Y-%m-%d", time.gmtime(event.time))
        path = paths.tenant_file(self.dir, event.tenant, f"{day}.jsonl")
        self._appender.append(path, event.model_dump_json().encode() + b"\n")
        return path

    def query(self, req: AuditQueryRequest) -> AuditQueryReply:
        """One page of ``req.day``'s events; an unknown tenant or day is an empty page.

        Offsets count lines across the day's parts. Lines are streamed and reading stops
        one line past the page, so memory is bounded by the page (plus one encrypted part,
        which AES-GCM must authenticate whole before any of it can be trusted)."""
        events: list[dict[str, Any]] = []
        more = False
        with contextlib.closing(self._lines(req.tenant, req.day)) as lines:
            for position, line in enumerate(lines):
                if position < req.offset:
                    continue
                if position == req.offset + req.limit:
                    more = True
                    break
                event = _event(line)
                if event is None:
                    # Still counted, so offsets stay stable; appends are whole lines, so
                    # this is damage on disk, not a write in progress.
                    log.warning("unreadable audit line skipped", extra={"day": req.day})
                else:
                    events.append(event)
        return AuditQueryReply(
            tenant=req.tenant,
            day=req.day,
            events=events,
            next_offset=req.offset + req.limit if more else None,
        )

    def _lines(self, tenant: str, day: str) -> Generator[bytes]:
        folder = paths.inside(self.dir, tenant)
        parts = sorted(
            (_order(match), path.name)
            for path in (folder.glob(f"{day}.*") if folder.is_dir() else ())
            if (match := _PART.match(path.name)) is not None and match["day"] == day
        )
        for _, name in parts:
            try:
                yield from self._part(folder / name, tenant)
            except FileNotFoundError:
                # Retention compressed or deleted the part after it was listed; the
                # events moved, so a partial page would silently miss some.
                raise UnavailableError("the audit day changed while it was read; retry") from None

    def _part(self, path: Path, tenant: str) -> Iterator[bytes]:
        match = _PART.match(path.name)
        assert match is not None  # listed by ``_lines``
        compression = _COMPRESSION[match["comp"]]
        try:
            if match["enc"]:
                # Retention binds each sealed part to its tenant and uncompressed name.
                stem = path.name.removesuffix(match["enc"]).removesuffix(match["comp"] or "")
                aad = associated_data("audit", tenant, stem)
                plain = self.codec.decode(path.read_bytes(), CodecInfo(compression, True), aad)
                yield from _complete(io.BytesIO(plain))
            elif compression == "gzip":
                with gzip.open(path, "rb") as fh:
                    yield from _complete(fh)
            elif compression == "zstd":
                with path.open("rb") as raw:
                    yield from _complete(
                        io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
                    )
            else:
                with path.open("rb") as fh:
                    yield from _complete(fh)
        # BadGzipFile is an OSError, but a damaged file, not an unavailable disk.
        except (CodecError, gzip.BadGzipFile, EOFError, zlib.error, zstandard.ZstdError) as exc:
            raise CorruptAuditError(f"audit file {tenant}/{path.name}: {exc}") from None


def _order(match: re.Match[str]) -> tuple[int, int]:
    """Compressed parts by ``n``, then raw files: the raw ``{day}.jsonl`` beside
    compressed parts holds late events, newer than all of them."""
    raw = not (match["comp"] or match["enc"])
    return int(raw), int(match["n"] or 0)


def _event(line: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _complete(stream: Iterable[bytes]) -> Iterator[bytes]:
    """The stream's newline-terminated lines: a last line without one is an append in
    progress (today's file), left for the next read."""
    for line in stream:
        if line.endswith(b"\n"):
            yield line
