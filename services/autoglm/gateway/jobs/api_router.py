"""HTTP routes for ``/v1/jobs`` and the Dapr subscription that completes them."""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request

from autoglm.core.errors import InvalidRequestError
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import PUBSUB, RESULTS_TOPIC
from autoglm.gateway.jobs.store import JobStore
from autoglm.gateway.openai.chat.serving import ChatCompletionService
from autoglm.gateway.pipeline import require
from autoglm.gateway.security.rbac import Action

RESULTS_ROUTE = "/dapr/events/inference-results"
_DAPR_STATUS = {Ack.SUCCESS: "SUCCESS", Ack.RETRY: "RETRY", Ack.DROP: "DROP"}


def jobs_blueprint(store: JobStore, chat: ChatCompletionService) -> Blueprint:
    bp = Blueprint("jobs", __name__)

    @bp.post("/v1/jobs")
    def submit_job() -> tuple[Response, int]:
        ctx = require(Action.JOBS)
        body = chat.parse(request.get_data())
        ctx.model = body.model  # for the audit event
        if body.stream or body.n > 1 or body.session_id:
            raise InvalidRequestError(
                "a job takes one choice (n=1), without stream or session_id", param="n"
            )
        job = store.submit(ctx.tenant, chat.generate_request(body, body.messages, ctx.tenant))
        return jsonify(job.to_json()), 202

    @bp.get("/v1/jobs/<job_id>")
    def get_job(job_id: str) -> Response:
        ctx = require(Action.JOBS)
        return jsonify(store.get(ctx.tenant, job_id).to_json())

    @bp.get("/dapr/subscribe")
    def subscriptions() -> Response:
        return jsonify(
            [
                {
                    "pubsubname": PUBSUB,
                    "topic": RESULTS_TOPIC,
                    "route": RESULTS_ROUTE,
                    "deadLetterTopic": f"{RESULTS_TOPIC}.deadletter",
                }
            ]
        )

    @bp.post(RESULTS_ROUTE)
    def on_result() -> Response:
        envelope = request.get_json(silent=True) or {}
        data = envelope.get("data", envelope)
        ack = store.on_result(json.dumps(data).encode())
        return jsonify({"status": _DAPR_STATUS[ack]})

    return bp
