"""Flask application factory for the gateway: wires services to their routers."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Flask, Request
from flask.sessions import NullSession, SessionInterface

from autoglm.core.contracts import ARCHIVER, INFERENCE, MeshClient
from autoglm.core.sidecar import ActorAPI, SidecarAPI
from autoglm.gateway.attachments.api_router import attachments_blueprint
from autoglm.gateway.attachments.serving import AttachmentService
from autoglm.gateway.audit_log.api_router import audit_log_blueprint
from autoglm.gateway.audit_log.serving import AuditLogService
from autoglm.gateway.body_limit import body_deadline
from autoglm.gateway.errors import register_error_handlers
from autoglm.gateway.health import health_blueprint
from autoglm.gateway.inference_client import InferenceClient, StreamFn
from autoglm.gateway.jobs.api_router import jobs_blueprint
from autoglm.gateway.jobs.serving import JobService
from autoglm.gateway.jobs.store import JobStore
from autoglm.gateway.openai.chat.api_router import chat_blueprint
from autoglm.gateway.openai.chat.serving import ChatCompletionService
from autoglm.gateway.openai.completions.api_router import completions_blueprint
from autoglm.gateway.openai.completions.serving import CompletionService
from autoglm.gateway.openai.embeddings.api_router import embeddings_blueprint
from autoglm.gateway.openai.embeddings.serving import EmbeddingService
from autoglm.gateway.openai.models.api_router import models_blueprint
from autoglm.gateway.openai.models.serving import ModelService
from autoglm.gateway.openai.responses.api_router import responses_blueprint
from autoglm.gateway.openai.responses.serving import ResponseService
from autoglm.gateway.openai.responses.store import ResponseStore
from autoglm.gateway.openapi import openapi_blueprint
from autoglm.gateway.pipeline import RequestPipeline
from autoglm.gateway.response_cache import ResponseCache
from autoglm.gateway.security.auth import Authenticator
from autoglm.gateway.security.content_filter import ContentFilter
from autoglm.gateway.security.ratelimit import RateLimiter, TokenAccounting
from autoglm.gateway.sessions.api_router import sessions_blueprint
from autoglm.gateway.sessions.cache import SessionCache
from autoglm.gateway.sessions.serving import SessionService
from autoglm.gateway.sessions.store import SessionStore
from autoglm.gateway.sessions.turns import TurnClaims
from autoglm.gateway.settings import GatewaySettings


class _NoSessions(SessionInterface):
    """The gateway keeps no cookie sessions (its callers send tokens; its sessions are
    state-store records): every request gets the one read-only null session Flask would
    otherwise build anew for it, and nothing is ever saved."""

    _null = NullSession()

    def open_session(self, app: Flask, request: Request) -> NullSession:
        return self._null

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        return None


class GatewayFlask(Flask):
    """Flask, with the per-request costs the gateway has no use for taken out (issue 15):
    no cookie session is opened per request (``_NoSessions``), and whether a view, hook or
    error handler is a coroutine function is found once per function, not on each of its
    calls (Flask asks it ~6 times a request)."""

    session_interface = _NoSessions()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._sync[func]
        except KeyError:
            sync = self._sync[func] = super().ensure_sync(func)
            return sync
        except TypeError:  # not hashable
            return super().ensure_sync(func)


def create_app(
    settings: GatewaySettings, sidecar: SidecarAPI, stream_fn: StreamFn | None = None
) -> Flask:
    app = GatewayFlask("autoglm.gateway")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.wsgi_app = body_deadline(app.wsgi_app, settings.body_timeout_s)  # type: ignore[method-assign,assignment]
    mesh = MeshClient(
        sidecar, {INFERENCE: settings.inference_app_id, ARCHIVER: settings.archiver_app_id}
    )
    register_error_handlers(app)
    limiter = RateLimiter(
        sidecar,
        requests_per_min=settings.rate_limit_requests_per_min,
        tokens_per_min=settings.rate_limit_tokens_per_min,
        anonymous_requests_per_min=settings.rate_limit_anonymous_per_min,
    )
    # One accounting for JSON replies, streams and job results alike.
    tokens = TokenAccounting(limiter)
    RequestPipeline(
        Authenticator(
            sidecar,
            store=settings.secret_store,
            secret_name=settings.jwt_secret,
            api_keys_secret=settings.api_keys_secret,
            ttl_s=settings.auth_cache_ttl_s,
        ),
        limiter,
        tokens,
        mesh,
        app_token=os.environ.get("APP_API_TOKEN"),
        trust_forwarded=settings.trust_forwarded_for,
    ).install(app)

    client_options = {"stream_fn": stream_fn} if stream_fn else {}
    # Session actors are hosted by the app id ``inference`` only: a gateway sent to
    # another one (a canary's) keeps plain invocation.
    affinity = settings.session_affinity and settings.inference_app_id == INFERENCE
    inference = InferenceClient(
        mesh,
        timeout_s=settings.request_timeout_s,
        actors=sidecar if affinity and isinstance(sidecar, ActorAPI) else None,
        **client_options,
    )
    content_filter = ContentFilter(settings.blocked_terms, settings.blocked_patterns)
    sessions = SessionStore(
        sidecar,
        archiver_app_id=settings.archiver_app_id,
        # A claimed turn lapses once no request could still be running it.
        turns=TurnClaims(settings.request_timeout_s + 30),
        # Each worker is a process of its own: other writers of the same sessions.
        cache=SessionCache(settings.session_cache_entries if settings.workers == 1 else 0),
    )
    cache = (
        ResponseCache(
            sidecar,
            max_entries=settings.response_cache_entries,
            ttl_s=settings.response_cache_ttl_s,
        )
        if settings.response_cache_enabled
        else None
    )
    chat = ChatCompletionService(inference, content_filter, settings, sessions, cache)

    app.register_blueprint(health_blueprint(sidecar, inference))
    app.register_blueprint(openapi_blueprint())
    app.register_blueprint(chat_blueprint(chat))
    app.register_blueprint(
        completions_blueprint(CompletionService(inference, content_filter, settings))
    )
    app.register_blueprint(embeddings_blueprint(EmbeddingService(inference, content_filter)))
    app.register_blueprint(models_blueprint(ModelService(inference)))
    app.register_blueprint(sessions_blueprint(SessionService(sessions, content_filter)))
    jobs = JobStore(sidecar, ttl_s=settings.job_ttl_s, content_filter=content_filter, charge=tokens)
    app.register_blueprint(jobs_blueprint(JobService(jobs, chat)))
    responses = ResponseStore(sidecar, archiver_app_id=settings.archiver_app_id)
    app.register_blueprint(
        responses_blueprint(ResponseService(chat, responses, jobs, charge=tokens))
    )
    app.register_blueprint(attachments_blueprint(AttachmentService(mesh, content_filter)))
    app.register_blueprint(audit_log_blueprint(AuditLogService(mesh)))
    return app
