"""Flask application factory for the gateway."""

from __future__ import annotations

from flask import Flask

from autoglm.core.sidecar import SidecarAPI
from autoglm.gateway.errors import register_error_handlers
from autoglm.gateway.health import health_blueprint
from autoglm.gateway.openai.chat.api_router import chat_blueprint
from autoglm.gateway.openai.chat.serving import ChatCompletionService
from autoglm.gateway.settings import GatewaySettings


def create_app(settings: GatewaySettings, sidecar: SidecarAPI) -> Flask:
    app = Flask("autoglm.gateway")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    register_error_handlers(app)
    app.register_blueprint(health_blueprint(sidecar, settings))
    app.register_blueprint(chat_blueprint(ChatCompletionService(sidecar, settings)))
    return app
