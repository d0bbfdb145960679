"""The gateway's gunicorn worker: gevent, with gRPC made cooperative.

gunicorn's gevent worker patches the standard library in the worker process (a no-op
when ``python -m autoglm.gateway`` already did it in the master, as it does). gRPC's
core runs its own threads and poller, which a greenlet would block on; its gevent
integration must be switched on after patching and before the first channel, which is
here: the app (and the OTLP exporter, also gRPC) is loaded after ``init_process``
patched.

The worker reads its settings through ``SettledConfig``: gunicorn looks a setting up on
every use (``Config.__getattr__`` finds the setting and calls its ``get``), a few dozen
times per request in the parser, the header policy and the response, ~1.5 % of the
gateway's CPU per chat (issue 15). A worker's settings never change (a reload starts new
workers), so each is read once.
"""

from __future__ import annotations

from typing import Any

from gunicorn.workers.ggevent import GeventWorker


class SettledConfig:
    """A gunicorn ``Config`` whose settings are read once each, then kept as plain
    attributes (read-only for the worker: gunicorn never sets one there)."""

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        # Only for names not read yet: the value then lives in the instance's dict.
        if name == "_cfg":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        value = getattr(self._cfg, name)
        setattr(self, name, value)
        return value


class GatewayWorker(GeventWorker):  # type: ignore[misc]
    def __init__(
        self, age: int, ppid: int, sockets: Any, app: Any, timeout: int, cfg: Any, log: Any
    ) -> None:
        super().__init__(age, ppid, sockets, app, timeout, SettledConfig(cfg), log)

    def patch(self) -> None:
        super().patch()
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
