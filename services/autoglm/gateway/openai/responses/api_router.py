"""HTTP routes of the Responses API (``/v1/responses``); parsing and work live in
``serving``. Ids are looked up under the caller's tenant, so another tenant's response
is not found (404). Reading a stored response back charges nothing: its tokens were
charged when it was generated."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request

from autoglm.core.schemas import parse
from autoglm.gateway.openai.responses.protocol import (
    DeletedResponse,
    InputItemsQuery,
    RetrieveQuery,
)
from autoglm.gateway.openai.responses.serving import ResponseService
from autoglm.gateway.pipeline import require
from autoglm.gateway.routing import openai_route, sse_response
from autoglm.gateway.security.rbac import Action


def responses_blueprint(service: ResponseService) -> Blueprint:
    bp = Blueprint("responses", __name__)
    openai_route(bp, "/v1/responses", service.parse, service.create, service.open_stream)

    @bp.get("/v1/responses/<response_id>")
    def get_response(response_id: str) -> Response:
        tenant = require(Action.INFERENCE).tenant
        query = parse(RetrieveQuery, dict(request.args))
        if query.stream:
            return sse_response(service.stream_stored(tenant, response_id, query.starting_after))
        return jsonify(service.retrieve(tenant, response_id).to_json())

    @bp.delete("/v1/responses/<response_id>")
    def delete_response(response_id: str) -> Response:
        service.delete(require(Action.INFERENCE).tenant, response_id)
        return jsonify(DeletedResponse(id=response_id).model_dump(mode="json"))

    @bp.post("/v1/responses/<response_id>/cancel")
    def cancel_response(response_id: str) -> Response:
        tenant = require(Action.INFERENCE).tenant
        return jsonify(service.cancel(tenant, response_id).to_json())

    @bp.get("/v1/responses/<response_id>/input_items")
    def list_input_items(response_id: str) -> Response:
        tenant = require(Action.INFERENCE).tenant
        query = parse(InputItemsQuery, dict(request.args))
        page = service.input_items(tenant, response_id, query)
        return jsonify(page.model_dump(mode="json"))

    return bp
