"""An app process's start (logging, settings, tracing) and graceful shutdown (run the
app's stop callback once on SIGTERM or SIGINT)."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TypeVar

from autoglm.core.logging import configure_logging
from autoglm.core.settings import AppSettings, SettingsError, load_settings
from autoglm.core.tracing import configure_tracing

log = logging.getLogger(__name__)

S = TypeVar("S", bound=AppSettings)


def start_app(app: str, settings_cls: type[S], *, tracing: bool = True) -> S:
    """Set up the process of ``app``: logging (at its settings' level once they are
    read), its settings, and tracing unless ``tracing`` is off (an app that forks
    configures it in each worker). Invalid settings end the process with status 2 and a
    message naming each bad setting, not a traceback."""
    configure_logging(app)
    try:
        settings = load_settings(settings_cls)
    except SettingsError as exc:
        logging.getLogger(f"autoglm.{app}").error(str(exc))
        raise SystemExit(2) from None
    configure_logging(app, settings.log_level)
    if tracing:
        configure_tracing(app)
    return settings


def on_shutdown(stop: Callable[[], object]) -> None:
    """Install SIGTERM/SIGINT handlers that call ``stop`` once, off the signal frame.
    Its return value is ignored (e.g. ``stop_gracefully``'s)."""
    fired = threading.Event()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if fired.is_set():
            return
        fired.set()
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        # The stop callback may block (draining); never block inside a signal handler.
        threading.Thread(target=stop, name="shutdown", daemon=True).start()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
