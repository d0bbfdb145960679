"""HTTP routes for ``/v1/sessions``. Keys are scoped by the caller's tenant, so another
tenant's session id is simply not found."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from autoglm.core.schemas import parse
from autoglm.gateway.pipeline import require
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.security.rbac import Action
from autoglm.gateway.sessions.protocol import CreateSessionRequest, RestoreSessionRequest
from autoglm.gateway.sessions.store import SessionStore


def sessions_blueprint(
    store: SessionStore, content_filter: ContentFilter | None = None
) -> Blueprint:
    bp = Blueprint("sessions", __name__)
    blocked = content_filter or ContentFilter()

    @bp.post("/v1/sessions")
    def create_session() -> tuple[Response, int]:
        ctx = require(Action.SESSIONS)
        body = parse(CreateSessionRequest, request.get_data() or b"{}")
        blocked.check_texts((m.content for m in body.messages), "messages")
        blocked.check_texts(body.metadata.values(), "metadata")
        return jsonify(store.create(ctx.tenant, body).to_json()), 201

    @bp.get("/v1/sessions/<session_id>")
    def get_session(session_id: str) -> Response:
        ctx = require(Action.SESSIONS)
        record, _ = store.get(ctx.tenant, session_id)
        return jsonify(record.to_json())

    @bp.delete("/v1/sessions/<session_id>")
    def delete_session(session_id: str) -> Response:
        ctx = require(Action.SESSIONS)
        store.delete(ctx.tenant, session_id)
        return jsonify({"id": session_id, "object": "session.deleted", "deleted": True})

    @bp.post("/v1/sessions/<session_id>/restore")
    def restore_session(session_id: str) -> Response:
        ctx = require(Action.SESSIONS_ADMIN)
        body = parse(RestoreSessionRequest, request.get_data() or b"{}")
        tenant = body.tenant or ctx.tenant
        return jsonify(store.restore_version(tenant, session_id, body.version).to_json())

    return bp
