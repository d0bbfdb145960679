"""HTTP routes of the Responses API (``/v1/responses``); parsing and work live in
``serving``. Ids are looked up under the caller's tenant, so another tenant's response
is not found (404)."""

from __future__ import annotations

from flask import Blueprint, Response, g, jsonify, request

from autoglm.core.schemas import parse
from autoglm.gateway.guards import require, uncharged
from autoglm.gateway.openai.responses.protocol import (
    DeletedResponse,
    InputItemsQuery,
    RetrieveQuery,
)
from autoglm.gateway.openai.responses.serving import ResponseService
from autoglm.gateway.security.rbac import Action
from autoglm.gateway.sse import sse_response


def responses_blueprint(service: ResponseService) -> Blueprint:
    bp = Blueprint("responses", __name__)

    @bp.post("/v1/responses")
    def create_response() -> Response:
        principal = require(Action.INFERENCE)
        body = service.parse(request.get_data())
        g.model = body.model  # for the audit event
        if body.stream:
            return sse_response(service.open_stream(principal.tenant, body))
        return jsonify(service.create(principal.tenant, body).to_json())

    @bp.get("/v1/responses/<response_id>")
    def get_response(response_id: str) -> Response:
        principal = require(Action.INFERENCE)
        query = parse(RetrieveQuery, dict(request.args))
        if query.stream:
            stream = service.stream_stored(principal.tenant, response_id, query.starting_after)
            return sse_response(stream)
        uncharged()  # its tokens were charged when it was generated
        return jsonify(service.retrieve(principal.tenant, response_id).to_json())

    @bp.delete("/v1/responses/<response_id>")
    def delete_response(response_id: str) -> Response:
        principal = require(Action.INFERENCE)
        service.delete(principal.tenant, response_id)
        return jsonify(DeletedResponse(id=response_id).model_dump(mode="json"))

    @bp.post("/v1/responses/<response_id>/cancel")
    def cancel_response(response_id: str) -> Response:
        principal = require(Action.INFERENCE)
        uncharged()
        return jsonify(service.cancel(principal.tenant, response_id).to_json())

    @bp.get("/v1/responses/<response_id>/input_items")
    def list_input_items(response_id: str) -> Response:
        principal = require(Action.INFERENCE)
        query = parse(InputItemsQuery, dict(request.args))
        page = service.input_items(principal.tenant, response_id, query)
        return jsonify(page.model_dump(mode="json"))

    return bp
