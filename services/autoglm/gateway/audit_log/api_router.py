"""HTTP route for ``GET /v1/audit``: reads the archiver's audit archive (admin only).

Only ``admin`` holds ``audit.read``, and it may read any tenant; the ownership check is
still made, so a role given the action later stays inside its own tenant.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from autoglm.core.schemas import parse
from autoglm.gateway.audit_log.protocol import AuditQuery
from autoglm.gateway.audit_log.serving import AuditLogService
from autoglm.gateway.pipeline import require
from autoglm.gateway.security.rbac import Action


def audit_log_blueprint(service: AuditLogService) -> Blueprint:
    bp = Blueprint("audit_log", __name__)

    @bp.get("/v1/audit")
    def read_audit() -> Response:
        ctx = require(Action.AUDIT_READ)
        query = parse(AuditQuery, request.args.to_dict())
        return jsonify(service.read(ctx.caller, query).model_dump(mode="json"))

    return bp
