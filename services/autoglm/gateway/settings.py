"""Settings of the gateway app (env prefix ``AUTOGLM_GATEWAY_``)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from autoglm.core.settings import AppSettings


class GatewaySettings(AppSettings):
    env_prefix: ClassVar[str] = "AUTOGLM_GATEWAY_"

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    #: Dapr app id of the inference app, reached by service invocation.
    inference_app_id: str = "inference"
    default_model: str = "demo-glm"
    request_timeout_s: float = Field(default=120.0, gt=0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_n: int = Field(default=8, ge=1)
    workers: int = Field(default=1, ge=1)
    threads: int = Field(default=16, ge=1)
