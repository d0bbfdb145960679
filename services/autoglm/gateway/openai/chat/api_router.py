"""HTTP route for ``POST /v1/chat/completions``; parsing and work live in ``serving``."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from autoglm.gateway.guards import require
from autoglm.gateway.openai.chat.serving import CACHE_HEADER, ChatCompletionService
from autoglm.gateway.security.rbac import Action
from autoglm.gateway.sse import sse_response


def chat_blueprint(service: ChatCompletionService) -> Blueprint:
    bp = Blueprint("chat", __name__)

    @bp.post("/v1/chat/completions")
    def create_chat_completion() -> Response:
        principal = require(Action.INFERENCE)
        chat_request = service.parse(request.get_data())
        g.model = chat_request.model  # for the audit event
        if chat_request.stream:
            return sse_response(service.open_stream(principal.tenant, chat_request))
        outcome = service.create(principal.tenant, chat_request)
        resp = jsonify(outcome.body)
        if service.cache is not None:
            resp.headers[CACHE_HEADER] = "hit" if outcome.cached else "miss"
        return resp

    return bp
