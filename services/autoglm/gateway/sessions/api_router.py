"""HTTP routes for ``/v1/sessions``; the work lives in ``serving``. Keys are scoped by
the caller's tenant, so another tenant's session id is simply not found."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from autoglm.gateway.pipeline import require
from autoglm.gateway.security.rbac import Action
from autoglm.gateway.sessions.serving import SessionService


def sessions_blueprint(service: SessionService) -> Blueprint:
    bp = Blueprint("sessions", __name__)

    @bp.post("/v1/sessions")
    def create_session() -> tuple[Response, int]:
        record = service.create(require(Action.SESSIONS), request.get_data())
        return jsonify(record.to_json()), 201

    @bp.get("/v1/sessions/<session_id>")
    def get_session(session_id: str) -> Response:
        return jsonify(service.get(require(Action.SESSIONS), session_id).to_json())

    @bp.delete("/v1/sessions/<session_id>")
    def delete_session(session_id: str) -> Response:
        service.delete(require(Action.SESSIONS), session_id)
        return jsonify({"id": session_id, "object": "session.deleted", "deleted": True})

    @bp.post("/v1/sessions/<session_id>/restore")
    def restore_session(session_id: str) -> Response:
        ctx = require(Action.SESSIONS_ADMIN)
        return jsonify(service.restore(ctx, session_id, request.get_data()).to_json())

    return bp
