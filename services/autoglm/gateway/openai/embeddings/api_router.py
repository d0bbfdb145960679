"""HTTP route for ``POST /v1/embeddings``."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from autoglm.gateway.guards import require
from autoglm.gateway.openai.embeddings.serving import EmbeddingService
from autoglm.gateway.security.rbac import Action


def embeddings_blueprint(service: EmbeddingService) -> Blueprint:
    bp = Blueprint("embeddings", __name__)

    @bp.post("/v1/embeddings")
    def create_embedding() -> Response:
        require(Action.INFERENCE)
        embedding_request = service.parse(request.get_data())
        g.model = embedding_request.model  # for the audit event
        return jsonify(service.create(embedding_request).to_json())

    return bp
