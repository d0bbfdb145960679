"""HTTP route for ``POST /v1/completions``; parsing and work live in ``serving``."""

from __future__ import annotations

from flask import Blueprint

from autoglm.gateway.openai.completions.serving import CompletionService
from autoglm.gateway.routing import openai_route


def completions_blueprint(service: CompletionService) -> Blueprint:
    bp = Blueprint("completions", __name__)
    openai_route(bp, "/v1/completions", service.parse, service.create, service.open_stream)
    return bp
