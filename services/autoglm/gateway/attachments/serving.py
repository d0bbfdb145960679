"""Resumable uploads and range-by-range downloads, through the archiver's typed methods.

The declaration's text metadata passes the content filter; the caller's tenant always
replaces whatever tenant a body names; an id that is not a ``SafeId`` is not found.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from autoglm.core import archive_protocol as proto
from autoglm.core.contracts import ATTACHMENT_GET, ATTACHMENT_PUT, ATTACHMENT_START, MeshClient
from autoglm.core.errors import ConflictError, InvalidRequestError
from autoglm.core.schemas import load_json_object, parse
from autoglm.gateway.attachments.protocol import Download
from autoglm.gateway.records import known_id
from autoglm.gateway.security.content_filter import ContentFilter

#: Uploads and reads move up to a MiB per call and touch the disk: more than the default.
TIMEOUT_S = 60.0


@dataclass
class AttachmentService:
    mesh: MeshClient
    filter: ContentFilter = field(default_factory=ContentFilter)

    def start(self, tenant: str, body: bytes) -> proto.AttachmentInfo:
        fields = load_json_object(body)
        for name in ("filename", "mime_type"):  # the text metadata that is stored
            value = fields.get(name)
            self.filter.check_texts([value] if isinstance(value, str) else [], name, f"'{name}'")
        request = parse(proto.AttachmentStartRequest, {**fields, "tenant": tenant})
        return self.mesh.call(ATTACHMENT_START, request, timeout=TIMEOUT_S)

    def put(
        self, tenant: str, attachment_id: str, offset: int | None, data: bytes
    ) -> proto.AttachmentPutReply:
        """Store the chunk at ``offset``; a wrong offset is a ``ConflictError`` whose
        ``details["expected_offset"]`` is where to resume."""
        if offset is None or offset < 0:
            raise InvalidRequestError(
                "query parameter 'offset' (a non-negative integer) is required", param="offset"
            )
        request = proto.AttachmentPutRequest(
            tenant=tenant, id=self._id(attachment_id), offset=offset, data=proto.b64encode(data)
        )
        return self.mesh.call(ATTACHMENT_PUT, request, timeout=TIMEOUT_S)

    def download(self, tenant: str, attachment_id: str) -> Download:
        """The first range is read (and the whole file verified by the archiver) before
        anything is answered; the rest follow one invocation each as they are read."""
        first = self._get(tenant, self._id(attachment_id), 0)
        if not first.complete:
            raise ConflictError(
                f"attachment {attachment_id!r} is still being uploaded", code="upload_incomplete"
            )
        return Download(first, self._ranges(tenant, attachment_id, first))

    def _ranges(
        self, tenant: str, attachment_id: str, first: proto.AttachmentGetReply
    ) -> Iterator[bytes]:
        data, offset = proto.b64decode(first.data), 0
        while data:
            yield data
            offset += len(data)
            if offset >= first.size:
                return
            data = proto.b64decode(self._get(tenant, attachment_id, offset).data)

    def _get(self, tenant: str, attachment_id: str, offset: int) -> proto.AttachmentGetReply:
        request = proto.AttachmentGetRequest(tenant=tenant, id=attachment_id, offset=offset)
        return self.mesh.call(ATTACHMENT_GET, request, timeout=TIMEOUT_S)

    @staticmethod
    def _id(attachment_id: str) -> str:
        return known_id(attachment_id, "attachment", "attachment_id")
