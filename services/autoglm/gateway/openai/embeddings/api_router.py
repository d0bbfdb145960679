"""HTTP route for ``POST /v1/embeddings``; parsing and work live in ``serving``."""

from __future__ import annotations

from flask import Blueprint

from autoglm.gateway.openai.embeddings.serving import EmbeddingService
from autoglm.gateway.routing import openai_route


def embeddings_blueprint(service: EmbeddingService) -> Blueprint:
    bp = Blueprint("embeddings", __name__)
    openai_route(bp, "/v1/embeddings", service.parse, service.create)
    return bp
