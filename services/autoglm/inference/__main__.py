"""``python -m autoglm.inference``: verify and load models, then serve Dapr callbacks.

SIGTERM/SIGINT stop the gRPC server, letting generations in flight finish for up to
``shutdown_grace_s``, then the engine is closed.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

from autoglm.core.affinity import ACTOR_METHODS
from autoglm.core.callback_server import run_until_stopped
from autoglm.core.errors import AutoGLMError
from autoglm.core.lifecycle import start_app
from autoglm.core.sidecar import Sidecar
from autoglm.inference.actor_host import ActorHost
from autoglm.inference.app import build_app, endpoint
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.metrics import InferenceMetrics
from autoglm.inference.registry import ModelSpec
from autoglm.inference.serving import InferenceService
from autoglm.inference.settings import InferenceSettings
from autoglm.models.signing import verify_model

log = logging.getLogger("autoglm.inference")


def engine_threads(configured: int | None) -> int:
    """torch's intra-op threads: as configured, else one fewer than torch would use (one
    per core). The app shares its host with its daprd (and, on one machine, with the
    gateway and the other sidecars); with a thread per core every parallel region of a
    step waits for whichever of its threads the OS gave to them. Issue 15, 2 cores, 32
    completions in flight through the gateway: 1,670-2,000 tok/s with 2 threads,
    2,090-2,370 with 1 (load/RESULTS.md)."""
    if configured:
        return configured
    import torch

    return max(1, torch.get_num_threads() - 1)


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights are local; never reach a hub
    settings = start_app("inference", InferenceSettings)
    sidecar = Sidecar()
    if settings.trust_unsigned:
        log.warning("trust_unsigned is on: model signatures are NOT checked")
        verify = None
    else:
        try:
            sidecar.wait_outbound()
            public_key = sidecar.get_secret("vault", settings.signing_secret)["public-key"]
        except (AutoGLMError, KeyError) as exc:
            log.error(
                "cannot read the model-signing public key from the secret store",
                extra={"secret": settings.signing_secret, "reason": str(exc)},
            )
            return 3

        def verify(path: Path) -> None:
            verify_model(path, public_key.encode())

    metrics = InferenceMetrics()
    try:
        engine = AutoGLMEngine(
            models=[ModelSpec(m.id, m.path, m.priority) for m in settings.models],
            device_map=settings.device_map,
            dtype=settings.dtype,
            gpu_memory_fraction=settings.gpu_memory_fraction,
            max_context_length=settings.max_context_length,
            max_batch_size=settings.max_batch_size,
            max_queue=settings.max_queue,
            prefix_cache_mb=settings.prefix_cache_mb,
            kv_cache_mb=settings.kv_cache_mb,
            kv_cache_gpu_fraction=settings.kv_cache_gpu_fraction,
            kv_block_size=settings.kv_block_size,
            max_step_tokens=settings.max_step_tokens,
            interleaved_prefill_tokens=settings.interleaved_prefill_tokens,
            prefill_tpot_factor=settings.prefill_tpot_factor,
            prefill_step_floor_ms=settings.prefill_step_floor_ms,
            tenant_limits=settings.tenant_limits,
            tenant_overrides=settings.tenant_overrides,
            memory_budget_mb=settings.memory_budget_mb,
            request_timeout_s=settings.request_timeout_s,
            num_threads=engine_threads(settings.num_threads),
            verify=verify,
            on_step=metrics.on_step,
        )
    except AutoGLMError as exc:
        log.error("model startup failed", extra={"reason": exc.message})
        return 3
    if not engine.registry.priority_ready():
        log.error("priority models failed to load", extra={"models": engine.models()})
        return 3
    metrics.models_loaded.set_function(
        lambda: sum(1 for m in engine.models() if m["state"] == "ready")
    )
    if settings.metrics_port:
        metrics.serve(settings.metrics_port, settings.host)
    service = InferenceService(
        engine,
        sidecar,
        metrics=metrics,
        admin_callers=tuple(settings.admin_callers),
        idempotency_ttl_s=settings.idempotency_ttl_s,
        claim_ttl_s=settings.claim_ttl_s,
        fault_delay_s=settings.fault_delay_ms / 1000 if settings.faults_enabled else 0.0,
    )
    if service.fault_delay_s:
        log.warning(
            "fault injection on: every generation is delayed",
            extra={"delay_ms": settings.fault_delay_ms},
        )
    app = build_app(
        service,
        settings.max_concurrent_calls,
        settings.fault_refuse_subscription_lists if settings.faults_enabled else 0,
    )
    methods = endpoint(service)
    actors = (
        ActorHost(
            {name: functools.partial(methods, name) for name in ACTOR_METHODS},
            dapr_grpc_address=f"127.0.0.1:{os.environ.get('DAPR_GRPC_PORT', '50001')}",
            api_token=os.environ.get("DAPR_API_TOKEN"),
            max_workers=settings.max_concurrent_calls,
        ).start()
        if settings.session_actors
        else None
    )
    log.info("inference listening", extra={"port": settings.port})
    run_until_stopped(app, settings.port, settings.host, settings.shutdown_grace_s)
    # The server has stopped (in-flight calls finished or were cancelled). Closing the
    # engine here, not in the daemon shutdown thread, so it completes before exit.
    if actors is not None:
        actors.stop(settings.shutdown_grace_s)
    engine.close()
    log.info("inference stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
