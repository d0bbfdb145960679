"""Map every failure to OpenAI-shaped JSON once, for all routes.

Clients get ``{"error": {"message", "type", "code", "param"}}`` with the matching status
and an ``x-request-id`` header; unexpected exceptions are logged with the request id and
answered with a generic 500 that reveals nothing internal.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from autoglm.core.errors import AutoGLMError, InternalError, RateLimitError
from autoglm.gateway.pipeline import current_context

log = logging.getLogger(__name__)

_HTTP_TYPES = {
    404: ("not_found_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    413: ("invalid_request_error", "payload_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


def error_response(exc: AutoGLMError) -> Response:
    payload = exc.to_payload()
    status = payload.pop("status")
    resp = jsonify({"error": payload})
    resp.status_code = status
    if isinstance(exc, RateLimitError) and "retry_after" in exc.details:
        resp.headers["Retry-After"] = str(exc.details["retry_after"])
    return resp


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(AutoGLMError)
    def _known(exc: AutoGLMError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        etype, code = _HTTP_TYPES.get(status, ("invalid_request_error", "bad_request"))
        resp = jsonify(
            {
                "error": {
                    "message": exc.description or exc.name,
                    "type": etype,
                    "code": code,
                    "param": None,
                }
            }
        )
        resp.status_code = status
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        ctx = current_context()
        request_id = ctx.request_id if ctx is not None else None
        log.exception("unhandled error", extra={"request_id": request_id})
        return error_response(
            InternalError(f"internal error (request id {request_id or 'unknown'})")
        )
