"""Liveness and readiness: ready only when the sidecar, state store and inference answer."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from autoglm.core.errors import AutoGLMError
from autoglm.core.readiness import sidecar_problems
from autoglm.core.sidecar import Sidecar, SidecarAPI
from autoglm.gateway.inference_client import InferenceClient


def health_blueprint(sidecar: SidecarAPI, inference: InferenceClient) -> Blueprint:
    bp = Blueprint("health", __name__)

    @bp.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok"})

    @bp.get("/readyz")
    def readyz() -> tuple[Response, int]:
        checks: dict[str, str] = {}
        if isinstance(sidecar, Sidecar):
            checks["sidecar"] = "ok" if sidecar.healthy() else "unavailable"
            # Healthy is not enough: the sidecar must also hold our subscriptions.
            try:
                problems = sidecar_problems(sidecar.metadata(), "gateway")
                checks["subscriptions"] = "; ".join(problems) or "ok"
            except AutoGLMError as exc:
                checks["subscriptions"] = exc.message
        try:
            sidecar.get_state("readyz-probe")
            checks["statestore"] = "ok"
        except AutoGLMError as exc:
            checks["statestore"] = exc.message
        try:
            inference.models(timeout=5.0)
            checks["inference"] = "ok"
        except AutoGLMError as exc:
            checks["inference"] = exc.message
        ready = all(v == "ok" for v in checks.values())
        return jsonify({"status": "ready" if ready else "not_ready", "checks": checks}), (
            200 if ready else 503
        )

    return bp
