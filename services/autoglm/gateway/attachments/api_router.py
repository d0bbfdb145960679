"""HTTP routes for ``/v1/attachments``: resumable uploads proxied to the archiver.

``POST`` declares the file (name, MIME type, size, SHA-256), each ``PUT ?offset=N``
sends the next chunk as the raw body, ``GET`` returns the finished file. A chunk at
the wrong offset gets 409 with the offset to resume from in ``Upload-Offset``.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Blueprint, Response, jsonify, request

from autoglm.core.errors import ConflictError, InvalidRequestError
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.guards import require
from autoglm.gateway.security.rbac import Action


def attachments_blueprint(sidecar: SidecarAPI, *, archiver_app_id: str) -> Blueprint:
    bp = Blueprint("attachments", __name__)

    def call(method: str, payload: dict[str, Any]) -> dict[str, Any]:
        return sidecar.invoke(archiver_app_id, method, payload, timeout=60)

    @bp.post("/v1/attachments")
    def start_upload() -> tuple[Response, int]:
        principal = require(Action.ATTACHMENTS)
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            raise InvalidRequestError("body must be a JSON object", code="invalid_json")
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
        reply = call("attachment_get", {"tenant": principal.tenant, "id": attachment_id})
        data = base64.b64decode(reply.pop("data", "") or "")
        resp = Response(data, mimetype=str(reply.get("mime_type", "application/octet-stream")))
        resp.headers["x-autoglm-sha256"] = str(reply.get("sha256", ""))
        filename = str(reply.get("filename", attachment_id)).replace('"', "")
        resp.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
        return resp

    return bp
