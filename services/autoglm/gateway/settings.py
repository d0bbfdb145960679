"""Settings of the gateway app (env prefix ``AUTOGLM_GATEWAY_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from autoglm.core.settings import AppSettings


class GatewaySettings(AppSettings):
    env_prefix: ClassVar[str] = "AUTOGLM_GATEWAY_"

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    #: Ignored: threads of the former gthread server, accepted so that older
    #: configurations (``AUTOGLM_GATEWAY_THREADS``) still start. See ``worker_connections``.
    threads: int | None = Field(default=None, ge=1)
    #: Connections each (gevent) worker serves at once; more wait in the backlog.
    worker_connections: int = Field(default=1000, ge=1)
    #: A request line and headers must arrive within this (also the keep-alive idle
    #: timeout); a body within ``body_timeout_s`` of the request's start, else 408.
    header_timeout_s: int = Field(default=10, ge=1)
    body_timeout_s: float = Field(default=30.0, gt=0)
    #: Serve HTTPS directly (running without a mesh); both files or neither.
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    #: Dapr app ids reached by service invocation.
    inference_app_id: str = "inference"
    archiver_app_id: str = "archiver"
    request_timeout_s: float = Field(default=120.0, gt=0)
    #: Send a session's non-streamed turns to its ``InferenceSession`` actor, so they
    #: reach the inference replica holding the session's prefix (README: affinity).
    session_affinity: bool = True
    #: Sessions whose last turn this process wrote, kept (record and ETag) so that their
    #: next turn here skips the state read; 0 = off. Only for a single gateway process
    #: (or session-sticky routing): more than one worker turns it off, replicas must
    #: (README: sessions; it turns itself off once another writer is seen).
    session_cache_entries: int = Field(default=1024, ge=0)

    # -- limits
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_n: int = Field(default=8, ge=1)
    default_max_tokens: int = Field(default=128, ge=1)
    max_tokens_limit: int = Field(default=4096, ge=1)
    #: Per tenant, shared by all replicas through the state store; 0 = unlimited.
    rate_limit_requests_per_min: int = Field(default=600, ge=0)
    rate_limit_tokens_per_min: int = Field(default=0, ge=0)
    #: Requests that fail authentication, per client address (X-Forwarded-For only
    #: with ``trust_forwarded_for``); 0 = unlimited.
    rate_limit_anonymous_per_min: int = Field(default=30, ge=0)

    # -- security
    #: Secret store name and entries (Vault via Dapr) holding JWT keys and API-key hashes.
    secret_store: str = "vault"
    jwt_secret: str = "jwt"
    api_keys_secret: str = "api-keys"
    #: Keys are re-read after this long, so rotation needs no restart.
    auth_cache_ttl_s: float = Field(default=60.0, gt=0)
    #: Trust X-Forwarded-For for the audit's client ip (only behind a trusted proxy).
    trust_forwarded_for: bool = False
    blocked_terms: list[str] = Field(default_factory=list)
    blocked_patterns: list[str] = Field(default_factory=list)

    # -- response cache (deterministic requests only)
    response_cache_enabled: bool = False
    response_cache_ttl_s: int = Field(default=300, ge=1)
    response_cache_entries: int = Field(default=1024, ge=1)

    #: How long finished job records are kept.
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)

    @model_validator(mode="after")
    def _tls_pair(self) -> GatewaySettings:
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        return self
