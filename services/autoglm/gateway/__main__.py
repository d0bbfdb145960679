"""``python -m autoglm.gateway``: serve the Flask app with gunicorn's gevent worker.

Server model: one greenlet per connection (gevent), not one OS thread per request.
A slow or idle client (headers trickling in, a body sent a byte a second, an SSE
reader that stopped reading) then costs a few kilobytes of memory instead of a
thread that other tenants need, so a few hundred of them cannot starve ``/healthz``
or anyone's chat. Each connection is bounded as well:

* the request line and headers must arrive within ``header_timeout_s`` (gunicorn's
  keep-alive timeout, which the gevent worker applies to reading each request head,
  the first one included): a connection that does not finish its head is closed;
* a body is read only after authentication (the request pipeline authenticates before
  the body-limit check reads it), and must arrive within ``body_timeout_s``
  (``body_deadline``), else 408 and the connection is closed;
* at most ``worker_connections`` connections per worker are served at once; more
  wait in the listen backlog.

Everything blocking the app does (HTTP to daprd, the gRPC stream, OTLP export) is
cooperative once gevent has patched the standard library, which happens here first,
before the app's modules (and their locks) are imported; gRPC gets gevent's poller
via ``grpc.experimental.gevent``. Issue 15 (overhead) benefits too: an idle stream
costs a greenlet.

SIGTERM and SIGINT both drain: workers stop accepting and finish the requests in flight
(streams included, and the session appends they make last) within ``graceful_timeout``.
gunicorn's own SIGINT is a quick stop that cuts them; a second SIGINT still is.
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    # Before anything else creates sockets, threads or locks (see the docstring).
    monkey.patch_all()

import logging
import signal
import sys
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

from autoglm.core.logging import configure_logging
from autoglm.core.settings import SettingsError, load_settings
from autoglm.gateway.settings import GatewaySettings

log = logging.getLogger("autoglm.gateway")

#: The worker class: gunicorn's gevent worker with gRPC made cooperative.
WORKER_CLASS = "autoglm.gateway.worker.GatewayWorker"
#: On SIGTERM, requests in flight (streams included) get this long to finish; k8s/ sizes
#: the pod's drain from it (tests/k8s/test_drain.py).
GRACEFUL_TIMEOUT_S = 30


class GracefulArbiter(Arbiter):  # type: ignore[misc]
    """gunicorn's master, with SIGINT handled as SIGTERM: a graceful stop of the workers
    rather than SIGQUIT to them."""

    def handle_int(self) -> None:
        self.handle_term()


def drain_on_sigint(worker: Any) -> None:
    """``post_worker_init`` hook. Ctrl-C signals the whole process group, so a worker
    gets SIGINT itself, on which gunicorn exits at once: finish in-flight work instead."""
    signal.signal(signal.SIGINT, worker.handle_exit)


class GatewayServer(BaseApplication):  # type: ignore[misc]
    """gunicorn embedded, so the app has one entry point and one settings object."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        super().__init__()

    def load_config(self) -> None:
        options: dict[str, Any] = {
            "bind": f"{self.settings.host}:{self.settings.port}",
            "workers": self.settings.workers,
            "worker_class": WORKER_CLASS,
            "worker_connections": self.settings.worker_connections,
            # The gevent worker bounds reading every request head by the keep-alive
            # timeout (and closes idle kept-alive connections after it).
            "keepalive": self.settings.header_timeout_s,
            "timeout": int(self.settings.request_timeout_s) + 30,
            "graceful_timeout": GRACEFUL_TIMEOUT_S,
            "post_worker_init": drain_on_sigint,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": "warning",
        }
        if self.settings.tls_cert_file:
            options.update(certfile=self.settings.tls_cert_file, keyfile=self.settings.tls_key_file)
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Imported in the worker, after gevent patched it: see the module docstring.
        from autoglm.core.sidecar import Sidecar
        from autoglm.core.tracing import configure_tracing
        from autoglm.gateway.app import create_app

        configure_logging("gateway", self.settings.log_level)
        configure_tracing("gateway")  # in the worker: exporter threads do not survive fork
        return create_app(self.settings, Sidecar())

    def run(self) -> None:
        """``BaseApplication.run`` with the arbiter that drains on SIGINT too."""
        try:
            GracefulArbiter(self).run()
        except RuntimeError as exc:
            log.error(str(exc))
            sys.exit(1)


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
