"""HTTP routes for ``/v1/attachments``: resumable uploads proxied to the archiver.

``POST`` declares the file (name, MIME type, size, SHA-256), each ``PUT ?offset=N``
sends the next chunk as the raw body, ``GET`` returns the finished file. A chunk at
the wrong offset gets 409 with the offset to resume from in ``Upload-Offset``.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, stream_with_context

from autoglm.core.errors import ConflictError
from autoglm.gateway.attachments.serving import AttachmentService
from autoglm.gateway.errors import error_response
from autoglm.gateway.pipeline import require
from autoglm.gateway.security.rbac import Action


def attachments_blueprint(service: AttachmentService) -> Blueprint:
    bp = Blueprint("attachments", __name__)

    @bp.post("/v1/attachments")
    def start_upload() -> tuple[Response, int]:
        ctx = require(Action.ATTACHMENTS)
        info = service.start(ctx.tenant, request.get_data())
        return jsonify(info.model_dump(mode="json")), 201

    @bp.put("/v1/attachments/<attachment_id>")
    def put_chunk(attachment_id: str) -> Response:
        ctx = require(Action.ATTACHMENTS)
        offset = request.args.get("offset", type=int)
        try:
            reply = service.put(ctx.tenant, attachment_id, offset, request.get_data())
        except ConflictError as exc:
            resp = error_response(exc)
            expected = exc.details.get("expected_offset")
            if expected is not None:
                resp.headers["Upload-Offset"] = str(expected)
            return resp
        resp = jsonify(reply.model_dump(mode="json"))
        resp.headers["Upload-Offset"] = str(reply.offset)
        return resp

    @bp.get("/v1/attachments/<attachment_id>")
    def get_attachment(attachment_id: str) -> Response:
        ctx = require(Action.ATTACHMENTS)
        download = service.download(ctx.tenant, attachment_id)
        resp = Response(stream_with_context(download.chunks), mimetype=download.info.mime_type)
        resp.headers["Content-Length"] = str(download.info.size)
        resp.headers["x-autoglm-sha256"] = download.info.sha256
        resp.headers["Content-Disposition"] = download.content_disposition
        return resp

    return bp
