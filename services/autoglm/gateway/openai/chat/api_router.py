"""HTTP route for ``POST /v1/chat/completions``; parsing and work live in ``serving``."""

from __future__ import annotations

from flask import Blueprint

from autoglm.gateway.openai.chat.serving import ChatCompletionService
from autoglm.gateway.routing import openai_route


def chat_blueprint(service: ChatCompletionService) -> Blueprint:
    bp = Blueprint("chat", __name__)
    openai_route(bp, "/v1/chat/completions", service.parse, service.create, service.open_stream)
    return bp
