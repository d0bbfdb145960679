"""HTTP route for ``POST /v1/chat/completions``; parsing and work live in ``serving``."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from autoglm.gateway.openai.chat.serving import ChatCompletionService


def chat_blueprint(service: ChatCompletionService) -> Blueprint:
    bp = Blueprint("chat", __name__)

    @bp.post("/v1/chat/completions")
    def create_chat_completion() -> Response:
        chat_request = service.parse(request.get_data())
        return jsonify(service.create(chat_request).to_json())

    return bp
