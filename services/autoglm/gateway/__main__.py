"""``python -m autoglm.gateway``: serve the Flask app with gunicorn (gthread workers)."""

from __future__ import annotations

import logging
import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from autoglm.core.logging import configure_logging
from autoglm.core.settings import SettingsError, load_settings
from autoglm.core.sidecar import Sidecar
from autoglm.core.tracing import configure_tracing
from autoglm.gateway.app import create_app
from autoglm.gateway.settings import GatewaySettings

log = logging.getLogger("autoglm.gateway")


class GatewayServer(BaseApplication):  # type: ignore[misc]
    """gunicorn embedded, so the app has one entry point and one settings object."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            "threads": self.settings.threads,
            "worker_class": "gthread",
            "timeout": int(self.settings.request_timeout_s) + 30,
            "graceful_timeout": 30,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
        }
        if self.settings.tls_cert_file:
            options.update(certfile=self.settings.tls_cert_file, keyfile=self.settings.tls_key_file)
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        configure_logging("gateway", self.settings.log_level)
        configure_tracing("gateway")  # in the worker: exporter threads do not survive fork
        return create_app(self.settings, Sidecar())


def main() -> int:
    configure_logging("gateway")
    try:
        settings = load_settings(GatewaySettings)
    except SettingsError as exc:
        log.error(str(exc))
        return 2
    log.info("gateway listening", extra={"url": f"http://{settings.host}:{settings.port}"})
    GatewayServer(settings).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
