"""What an uploaded file really is: magic numbers checked against the declared MIME type,
an allow-list of categories, and archive inspection that never extracts.

A declared type maps to a category and to the magic it must carry; text has no magic and
must be UTF-8 without NUL bytes. Archives are read from their directory / headers and a
bounded decompression stream, so a zip bomb costs at most the configured budget.
"""

from __future__ import annotations

import codecs
import gzip
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from autoglm.archiver.settings import AttachmentPolicy
from autoglm.core.errors import UnprocessableError

Sniff = Callable[[bytes], bool]


def _prefix(*magics: bytes) -> Sniff:
    return lambda head: any(head.startswith(m) for m in magics)


def _webp(head: bytes) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def _tar(head: bytes) -> bool:
    return head[257:262] == b"ustar"


_ZIP = _prefix(b"PK\x03\x04", b"PK\x05\x06")
_OLE = _prefix(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")  # legacy .doc/.xls/.ppt


def _text(head: bytes) -> bool:
    return b"\x00" not in head


@dataclass(frozen=True)
class FileType:
    category: str
    sniff: Sniff
    #: zip / tar / gzip: inspected for bombs and unsafe member names.
    archive: str | None = None


_OOXML = "application/vnd.openxmlformats-officedocument."
TYPES: dict[str, FileType] = {
    "application/pdf": FileType("documents", _prefix(b"%PDF-")),
    f"{_OOXML}wordprocessingml.document": FileType("documents", _ZIP, "zip"),
    f"{_OOXML}spreadsheetml.sheet": FileType("documents", _ZIP, "zip"),
    f"{_OOXML}presentationml.presentation": FileType("documents", _ZIP, "zip"),
    "application/vnd.oasis.opendocument.text": FileType("documents", _ZIP, "zip"),
    "application/msword": FileType("documents", _OLE),
    "application/vnd.ms-excel": FileType("documents", _OLE),
    "application/rtf": FileType("documents", _prefix(b"{\\rtf")),
    "image/png": FileType("images", _prefix(b"\x89PNG\r\n\x1a\n")),
    "image/jpeg": FileType("images", _prefix(b"\xff\xd8\xff")),
    "image/gif": FileType("images", _prefix(b"GIF87a", b"GIF89a")),
    "image/webp": FileType("images", _webp),
    "image/bmp": FileType("images", _prefix(b"BM")),
    "image/tiff": FileType("images", _prefix(b"II*\x00", b"MM\x00*")),
    "text/plain": FileType("text", _text),
    "text/markdown": FileType("text", _text),
    "text/csv": FileType("text", _text),
    "application/json": FileType("text", _text),
    "application/zip": FileType("archives", _ZIP, "zip"),
    "application/gzip": FileType("archives", _prefix(b"\x1f\x8b"), "gzip"),
    "application/x-tar": FileType("archives", _tar, "tar"),
}
#: Binary formats that are never text, whatever their bytes decode to.
_BINARY = [ft.sniff for ft in TYPES.values() if ft.category != "text"] + [
    _prefix(b"\x7fELF", b"MZ", b"\xca\xfe\xba\xbe", b"\xcf\xfa\xed\xfe")
]


def normalise(mime_type: str) -> str:
    """``Text/Plain; charset=utf-8`` -> ``text/plain``."""
    return mime_type.split(";", 1)[0].strip().lower()


def category_of(mime_type: str, policy: AttachmentPolicy) -> str:
    """The allowed category of a declared type, or ``UnprocessableError``."""
    known = TYPES.get(normalise(mime_type))
    if known is None or known.category not in policy.allowed_categories:
        raise UnprocessableError(
            f"type {mime_type!r} is not allowed; allowed categories: "
            f"{', '.join(policy.allowed_categories)}",
            code="type_not_allowed",
            param="mime_type",
        )
    return known.category


def verify(path: Path, mime_type: str, policy: AttachmentPolicy) -> None:
    """Check the finished file's content against its declared type; raise 422 if not."""
    declared = normalise(mime_type)
    ftype = TYPES[declared]
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not ftype.sniff(head) or (ftype.category == "text" and _looks_binary(path, head)):
        raise UnprocessableError(
            f"content does not match the declared type {declared!r}",
            code="type_mismatch",
            param="mime_type",
        )
    if ftype.archive is not None:
        inspect_archive(path, ftype.archive, policy)


def _looks_binary(path: Path, head: bytes) -> bool:
    return any(sniff(head) for sniff in _BINARY) or not _utf8(path)


def _utf8(path: Path) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                if b"\x00" in chunk:
                    return False
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _unsafe(exc_message: str) -> UnprocessableError:
    return UnprocessableError(f"archive refused: {exc_message}", code="unsafe_archive")


def _check_member(name: str) -> None:
    member = PurePosixPath(name.replace("\\", "/"))
    if member.is_absolute() or ".." in member.parts or (member.parts and ":" in member.parts[0]):
        raise _unsafe(f"member {name!r} escapes the archive")


class _Budget:
    """Counts entries and unpacked bytes against the policy's limits."""

    def __init__(self, policy: AttachmentPolicy, packed: int) -> None:
        self.policy = policy
        self.limit = min(
            policy.archive_max_unpacked_bytes, int(max(packed, 1) * policy.archive_max_ratio)
        )
        self.entries = 0
        self.unpacked = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.policy.archive_max_entries:
            raise _unsafe(f"more than {self.policy.archive_max_entries} entries")

    def bytes(self, n: int) -> None:
        self.unpacked += n
        if self.unpacked > self.limit:
            raise _unsafe(
                f"unpacks to more than {self.limit} bytes (limit: "
                f"{self.policy.archive_max_unpacked_bytes} bytes, ratio "
                f"{self.policy.archive_max_ratio:g})"
            )


def inspect_archive(path: Path, kind: str, policy: AttachmentPolicy) -> None:
    """Walk the archive within a budget; refuse bombs, traversal and corruption."""
    budget = _Budget(policy, path.stat().st_size)
    try:
        if kind == "zip":
            _inspect_zip(path, budget)
        elif kind == "gzip":
            _inspect_gzip(path, budget)
        else:
            _inspect_tar(path, "r:", budget)
    except (
        zipfile.BadZipFile,
        tarfile.TarError,
        OSError,
        EOFError,
        zlib.error,
        lzma.LZMAError,
    ) as exc:
        raise _unsafe(f"corrupt {kind} data ({exc})") from None
    except (RuntimeError, NotImplementedError, ValueError) as exc:
        # What the parsers raise for features they cannot read (passwords, exotic methods,
        # malformed fields): content we cannot vet is refused, never a 500.
        raise _unsafe(f"{kind} data cannot be inspected ({exc})") from None


_ZIP_ENCRYPTED = 0x1  # general purpose flag bit 0


def _inspect_zip(path: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            budget.entry()
            _check_member(info.filename)
            # zipfile decides from the central directory; check the same bits first so the
            # refusal names the member (an encrypted one cannot be vetted without its key).
            if info.flag_bits & _ZIP_ENCRYPTED:
                raise _unsafe(f"member {info.filename!r} is encrypted")
            try:
                opened = zf.open(info)
            except NotImplementedError as exc:
                raise _unsafe(
                    f"member {info.filename!r} uses an unsupported zip feature: {exc} "
                    f"(compression method {info.compress_type})"
                ) from None
            # Headers can lie about sizes: decompress (bounded) and count real bytes.
            with opened as member:
                while chunk := member.read(1 << 16):
                    budget.bytes(len(chunk))


def _inspect_gzip(path: Path, budget: _Budget) -> None:
    with gzip.open(path, "rb") as fh:
        head = fh.read(512)
        budget.bytes(len(head))
        is_tar = _tar(head)
        while chunk := fh.read(1 << 16):
            budget.bytes(len(chunk))
    if is_tar:
        _inspect_tar(path, "r:gz", _Budget(budget.policy, path.stat().st_size))


def _inspect_tar(path: Path, mode: str, budget: _Budget) -> None:
    with tarfile.open(path, mode) as tf:  # type: ignore[call-overload]
        for member in tf:
            budget.entry()
            _check_member(member.name)
            if member.issym() or member.islnk():
                _check_member(member.linkname)
                if PurePosixPath(member.linkname).is_absolute():
                    raise _unsafe(f"link {member.name!r} points outside the archive")
            elif not (member.isfile() or member.isdir()):
                raise _unsafe(f"member {member.name!r} is a device or fifo")
            budget.bytes(member.size)
