"""What ``/v1/attachments`` exchanges: the upload declaration and replies are the
archiver's own models (``autoglm.core.archive_protocol``); a download is its first range,
already read and verified, plus the rest to stream."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from autoglm.core.archive_protocol import AttachmentGetReply


@dataclass
class Download:
    """A finished attachment: its metadata (the first range's reply) and its bytes,
    read range by range as the client consumes them."""

    info: AttachmentGetReply
    chunks: Iterator[bytes]

    @property
    def content_disposition(self) -> str:
        return content_disposition(self.info.filename)


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback name plus the exact name, UTF-8 percent-encoded
    (header values must be Latin-1, and a name may be in any script)."""
    fallback = filename.encode("ascii", "replace").decode().replace('"', "").replace("\\", "")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
