"""HTTP routes for ``/v1/jobs`` and the Dapr subscription that completes them (the topic
and its dead letter as the contract table declares them for the gateway)."""

from __future__ import annotations

import json

from flask import Blueprint, Response, jsonify, request

from autoglm.core import contracts
from autoglm.core.pubsub import Ack
from autoglm.core.schemas import PUBSUB, RESULTS_TOPIC
from autoglm.gateway.jobs.serving import JobService
from autoglm.gateway.pipeline import require
from autoglm.gateway.security.rbac import Action

RESULTS_ROUTE = "/dapr/events/inference-results"
_DAPR_STATUS = {Ack.SUCCESS: "SUCCESS", Ack.RETRY: "RETRY", Ack.DROP: "DROP"}


def jobs_blueprint(service: JobService) -> Blueprint:
    bp = Blueprint("jobs", __name__)
    results = contracts.topic(RESULTS_TOPIC)
    if contracts.GATEWAY not in results.subscribers:
        raise KeyError(f"the gateway does not subscribe to {RESULTS_TOPIC!r} in the table")

    @bp.post("/v1/jobs")
    def submit_job() -> tuple[Response, int]:
        job = service.submit(require(Action.JOBS), request.get_data())
        return jsonify(job.to_json()), 202

    @bp.get("/v1/jobs/<job_id>")
    def get_job(job_id: str) -> Response:
        return jsonify(service.get(require(Action.JOBS), job_id).to_json())

    @bp.get("/dapr/subscribe")
    def subscriptions() -> Response:
        return jsonify(
            [
                {
                    "pubsubname": PUBSUB,
                    "topic": results.name,
                    "route": RESULTS_ROUTE,
                    "deadLetterTopic": results.dead_letter,
                }
            ]
        )

    @bp.post(RESULTS_ROUTE)
    def on_result() -> Response:
        envelope = request.get_json(silent=True) or {}
        data = envelope.get("data", envelope)
        ack = service.on_result(json.dumps(data).encode())
        return jsonify({"status": _DAPR_STATUS[ack]})

    return bp
