"""``python -m autoglm.inference``: load the model, then serve Dapr callbacks over gRPC."""

from __future__ import annotations

import logging
import sys

from autoglm.core.lifecycle import on_shutdown
from autoglm.core.logging import configure_logging
from autoglm.core.settings import SettingsError, load_settings
from autoglm.core.sidecar import Sidecar
from autoglm.inference.app import build_app
from autoglm.inference.engine import AutoGLMEngine
from autoglm.inference.serving import InferenceService
from autoglm.inference.settings import InferenceSettings

log = logging.getLogger("autoglm.inference")


def main() -> int:
    configure_logging("inference")
    try:
        settings = load_settings(InferenceSettings)
    except SettingsError as exc:
        log.error(str(exc))
        return 2
    configure_logging("inference", settings.log_level)
    engine = AutoGLMEngine(
        settings.model_path,
        model_id=settings.model_id,
        dtype=settings.dtype,
        max_context_length=settings.max_context_length,
        num_threads=settings.num_threads,
    )
    app = build_app(InferenceService(engine, Sidecar()))
    on_shutdown(app.stop)
    log.info("inference listening", extra={"port": settings.port})
    app.run(settings.port, listen_address=settings.host)
    log.info("inference stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
