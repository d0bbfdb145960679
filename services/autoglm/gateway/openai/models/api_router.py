"""HTTP routes for ``/v1/models``; loading and unloading are admin-only."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from autoglm.gateway.openai.models.serving import ModelService
from autoglm.gateway.pipeline import require
from autoglm.gateway.security.rbac import Action


def models_blueprint(service: ModelService) -> Blueprint:
    bp = Blueprint("models", __name__)

    @bp.get("/v1/models")
    def list_models() -> Response:
        require(Action.MODELS_READ)
        return jsonify(service.list().to_json())

    @bp.get("/v1/models/<model_id>")
    def get_model(model_id: str) -> Response:
        require(Action.MODELS_READ)
        return jsonify(service.get(model_id).to_json())

    @bp.post("/v1/models/<model_id>/load")
    def load_model(model_id: str) -> Response:
        require(Action.MODELS_ADMIN)
        return jsonify(service.manage(model_id, "load"))

    @bp.post("/v1/models/<model_id>/unload")
    def unload_model(model_id: str) -> Response:
        require(Action.MODELS_ADMIN)
        return jsonify(service.manage(model_id, "unload"))

    return bp
