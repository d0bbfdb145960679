"""HTTP route for ``POST /v1/completions``."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from autoglm.gateway.guards import require
from autoglm.gateway.openai.completions.serving import CompletionService
from autoglm.gateway.security.rbac import Action
from autoglm.gateway.sse import sse_response


def completions_blueprint(service: CompletionService) -> Blueprint:
    bp = Blueprint("completions", __name__)

    @bp.post("/v1/completions")
    def create_completion() -> Response:
        principal = require(Action.INFERENCE)
        completion_request = service.parse(request.get_data())
        g.model = completion_request.model  # for the audit event
        if completion_request.stream:
            return sse_response(service.open_stream(principal.tenant, completion_request))
        return jsonify(service.create(principal.tenant, completion_request).to_json())

    return bp
