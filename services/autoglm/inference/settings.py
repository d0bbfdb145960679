"""Settings of the inference app (env prefix ``AUTOGLM_INFERENCE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field, field_validator

from autoglm.core.settings import AppSettings


class InferenceSettings(AppSettings):
    env_prefix: ClassVar[str] = "AUTOGLM_INFERENCE_"

    #: gRPC port the Dapr sidecar calls (``--app-port``).
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=1, le=65535)
    model_path: Path = Path(".models/demo-glm")
    model_id: str = Field(default="demo-glm", min_length=1)
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    max_context_length: int = Field(default=8192, ge=16)
    num_threads: int | None = Field(default=None, ge=1)

    @field_validator("model_path")
    @classmethod
    def _model_exists(cls, value: Path) -> Path:
        if not (value / "config.json").is_file():
            raise ValueError(
                f"no model at {value} (config.json missing); run 'autoglm models init-demo'"
            )
        return value
