"""HTTP routes for ``/v1/attachments``: resumable uploads proxied to the archiver.

``POST`` declares the file (name, MIME type, size, SHA-256), each ``PUT ?offset=N``
sends the next chunk as the raw body, ``GET`` returns the finished file. A chunk at
the wrong offset gets 409 with the offset to resume from in ``Upload-Offset``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from flask import Blueprint, Response, jsonify, request, stream_with_context

from autoglm.core.archive_protocol import ATTACHMENT_GET, AttachmentGetReply, b64decode
from autoglm.core.errors import ConflictError, InvalidRequestError
from autoglm.core.schemas import load_json_object
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.guards import require
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.security.rbac import Action


def content_disposition(filename: str) -> str:
    """RFC 6266: an ASCII fallback name plus the exact name, UTF-8 percent-encoded
    (header values must be Latin-1, and a name may be in any script)."""
    fallback = filename.encode("ascii", "replace").decode().replace('"', "").replace("\\", "")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


def attachments_blueprint(
    sidecar: SidecarAPI, *, archiver_app_id: str, content_filter: ContentFilter | None = None
) -> Blueprint:
    bp = Blueprint("attachments", __name__)
    blocked = content_filter or ContentFilter()

    def call(method: str, payload: dict[str, Any]) -> dict[str, Any]:
        return sidecar.invoke(archiver_app_id, method, payload, timeout=60)

    @bp.post("/v1/attachments")
    def start_upload() -> tuple[Response, int]:
        principal = require(Action.ATTACHMENTS)
        body = load_json_object(request.get_data())
        for field in ("filename", "mime_type"):  # the text metadata that is stored
            value = body.get(field)
            blocked.check_texts([value] if isinstance(value, str) else [], field, f"'{field}'")
        reply = call("attachment_start", {**body, "tenant": principal.tenant})
        return jsonify(reply), 201

    @bp.put("/v1/attachments/<attachment_id>")
    def put_chunk(attachment_id: str) -> Response:
        principal = require(Action.ATTACHMENTS)
        offset = request.args.get("offset", type=int)
        if offset is None or offset < 0:
            raise InvalidRequestError(
                "query parameter 'offset' (a non-negative integer) is required", param="offset"
            )
        payload = {
            "tenant": principal.tenant,
            "id": attachment_id,
            "offset": offset,
            "data": base64.b64encode(request.get_data()).decode(),
        }
        try:
            reply = call("attachment_put", payload)
        except ConflictError as exc:
            resp = jsonify({"error": {k: v for k, v in exc.to_payload().items() if k != "status"}})
            resp.status_code = 409
            expected = exc.details.get("expected_offset")
            if expected is not None:
                resp.headers["Upload-Offset"] = str(expected)
            return resp
        resp = jsonify(reply)
        resp.headers["Upload-Offset"] = str(reply.get("offset", ""))
        return resp

    @bp.get("/v1/attachments/<attachment_id>")
    def get_attachment(attachment_id: str) -> Response:
        principal = require(Action.ATTACHMENTS)
        first = AttachmentGetReply.model_validate(
            call(ATTACHMENT_GET, {"tenant": principal.tenant, "id": attachment_id})
        )
        if not first.complete:
            raise ConflictError(
                f"attachment {attachment_id!r} is still being uploaded", code="upload_incomplete"
            )

        def body() -> Iterator[bytes]:
            # The first range was read (and the whole file verified) before the status
            # line went out; the rest follow one invocation each.
            data, offset = b64decode(first.data), 0
            while data:
                yield data
                offset += len(data)
                if offset >= first.size:
                    return
                reply = call(
                    ATTACHMENT_GET,
                    {"tenant": principal.tenant, "id": attachment_id, "offset": offset},
                )
                data = b64decode(reply["data"])

        resp = Response(stream_with_context(body()), mimetype=first.mime_type)
        resp.headers["Content-Length"] = str(first.size)
        resp.headers["x-autoglm-sha256"] = first.sha256
        resp.headers["Content-Disposition"] = content_disposition(first.filename)
        return resp

    return bp
