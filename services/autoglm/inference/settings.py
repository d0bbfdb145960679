"""Settings of the inference app (env prefix ``AUTOGLM_INFERENCE_``)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from autoglm.core.settings import AppSettings
from autoglm.inference.policy import TenantLimits


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    path: Path
    #: Loaded and warmed before the app is ready; never evicted.
    priority: bool = False

    @field_validator("path")
    @classmethod
    def _exists(cls, value: Path) -> Path:
        if not (value / "config.json").is_file():
            raise ValueError(
                f"no model at {value} (config.json missing); run 'autoglm models init-demo'"
            )
        return value


class InferenceSettings(AppSettings):
    env_prefix: ClassVar[str] = "AUTOGLM_INFERENCE_"

    host: str = "127.0.0.1"
    #: gRPC port the Dapr sidecar calls (``--app-port``).
    port: int = Field(default=50051, ge=1, le=65535)
    #: Prometheus metrics (text format) on this side port; 0 disables.
    metrics_port: int = Field(default=9464, ge=0, le=65535)
    #: Models served; the first is the default for requests that name none.
    models: list[ModelConfig] = Field(
        default_factory=lambda: [
            ModelConfig(id="demo-glm", path=Path(".models/demo-glm"), priority=True),
            ModelConfig(
                id="all-MiniLM-L6-v2", path=Path(".models/all-MiniLM-L6-v2"), priority=True
            ),
        ],
        min_length=1,
    )
    device_map: str = "auto"
    dtype: Literal["float32", "float16", "bfloat16", "int8"] = "float32"
    gpu_memory_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    max_context_length: int = Field(default=8192, ge=16)
    max_batch_size: int = Field(default=32, ge=1)
    max_queue: int = Field(default=256, ge=1)
    #: Calls (generations, streams, admin) the gRPC server takes at once; beyond this
    #: gRPC refuses. Default: a full batch, a full queue and a few for health and admin.
    callback_threads: int | None = Field(default=None, ge=1)
    #: On SIGTERM/SIGINT, generations in flight get this long to finish before they
    #: are cancelled and the engine is closed.
    shutdown_grace_s: float = Field(default=30.0, ge=0)
    #: Unreferenced KV blocks kept for prefix sharing, at most (0: no prefix sharing).
    prefix_cache_mb: int = Field(default=256, ge=0)
    #: KV cache pool per generative model on CPU (preallocated, paged in blocks).
    kv_cache_mb: int = Field(default=512, ge=1)
    #: On CUDA the pool takes this fraction of the memory free after loading the model.
    kv_cache_gpu_fraction: float = Field(default=0.5, gt=0.0, le=0.95)
    #: Tokens per KV block.
    kv_block_size: int = Field(default=16, ge=1, le=1024)
    #: Tokens per forward pass at most (prompt chunks when no sequence is decoding).
    max_step_tokens: int = Field(default=2048, ge=16)
    #: Prompt tokens per step on top of the decodes while sequences decode, at least
    #: (and exactly, while the step cost is still being learned or the factor is 0).
    interleaved_prefill_tokens: int = Field(default=48, ge=1)
    #: While sequences decode, prompt chunks are sized (from the measured step cost) so
    #: that a step takes at most this multiple of its decodes' time alone: bounds the
    #: time per output token of running sequences while long prompts are admitted.
    #: 0 (or <= 1): a fixed ``interleaved_prefill_tokens`` per step.
    prefill_tpot_factor: float = Field(default=3.0, ge=0)
    #: ... but a step carrying prompt chunks may always take this long (a few sequences
    #: decoding alone make steps too short for efficient chunks).
    prefill_step_floor_ms: float = Field(default=80.0, ge=0)
    #: Each tenant's share of a model's scheduler (weight, caps, queue).
    tenant_limits: TenantLimits = Field(default_factory=TenantLimits)
    #: Per-tenant overrides of ``tenant_limits``, by tenant id.
    tenant_overrides: dict[str, TenantLimits] = Field(default_factory=dict)
    memory_budget_mb: int = Field(default=16384, ge=1)
    request_timeout_s: float = Field(default=300.0, gt=0)
    num_threads: int | None = Field(default=None, ge=1)
    #: Serve weights without a valid signature. Development only; off in prod.
    trust_unsigned: bool = False
    #: Vault secret (via the Dapr secret store) holding ``public-key`` for model signatures.
    signing_secret: str = "model-signing"
    #: Dapr app ids allowed to call ``load_model`` / ``unload_model``.
    admin_callers: list[str] = Field(default_factory=lambda: ["gateway"])
    #: How long processed pub/sub request ids are remembered for de-duplication.
    idempotency_ttl_s: int = Field(default=86400, ge=60)
    #: A pub/sub delivery's claim on its request id lapses this long after its last
    #: renewal (renewed every third of it while generating): how soon a crashed
    #: replica's work is taken over. Short, so that it lapses while daprd is still
    #: retrying the delivery, not after it gave up (then Redis redelivers only after
    #: the component's processingTimeout).
    claim_ttl_s: int = Field(default=10, ge=3)
    #: Host the ``InferenceSession`` actor type (session affinity; needs a daprd with a
    #: placement service and an actor state store). Without placement the stream stays
    #: unregistered and callers use plain service invocation.
    session_actors: bool = True
    #: Fault injection for the chaos tests (tests/chaos/): off unless ``faults_enabled``.
    #: A two-step switch, so a stray delay in a deployed config alone does nothing.
    faults_enabled: bool = False
    #: With ``faults_enabled``: sleep this long before every generation (slow model).
    fault_delay_ms: int = Field(default=0, ge=0, le=600_000)
    #: With ``faults_enabled``: answer the first N ``ListTopicSubscriptions`` of daprd
    #: UNAVAILABLE (a sidecar that comes up without the app's subscriptions).
    fault_refuse_subscription_lists: int = Field(default=0, ge=0, le=100)

    @property
    def max_concurrent_calls(self) -> int:
        return self.callback_threads or self.max_batch_size + self.max_queue + 8
