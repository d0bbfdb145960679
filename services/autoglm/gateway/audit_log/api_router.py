"""HTTP route for ``GET /v1/audit``: reads the archiver's audit archive (admin only).

Only ``admin`` holds ``audit.read``, and it may read any tenant; the ownership check is
still made, so a role given the action later stays inside its own tenant.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from autoglm.core.archive_protocol import AUDIT_QUERY, AuditQueryReply, AuditQueryRequest
from autoglm.core.schemas import parse
from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.audit_log.protocol import AuditQuery
from autoglm.gateway.guards import require
from autoglm.gateway.security.rbac import Action, authorize


def audit_log_blueprint(sidecar: SidecarAPI, *, archiver_app_id: str) -> Blueprint:
    bp = Blueprint("audit_log", __name__)

    @bp.get("/v1/audit")
    def read_audit() -> Response:
        principal = require(Action.AUDIT_READ)
        query = parse(AuditQuery, request.args.to_dict())
        tenant = query.tenant or principal.tenant
        authorize(principal, Action.AUDIT_READ, owner_tenant=tenant)
        payload = AuditQueryRequest(**query.model_dump(exclude={"tenant"}), tenant=tenant)
        reply = AuditQueryReply.model_validate(
            sidecar.invoke(archiver_app_id, AUDIT_QUERY, payload.model_dump(mode="json"))
        )
        return jsonify(reply.model_dump(mode="json"))

    return bp
