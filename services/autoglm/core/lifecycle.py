"""Graceful shutdown: run the app's stop callback once on SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

log = logging.getLogger(__name__)


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
