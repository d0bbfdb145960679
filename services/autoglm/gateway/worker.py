"""The gateway's gunicorn worker: gevent, with gRPC made cooperative.

gunicorn's gevent worker patches the standard library in the worker process (a no-op
when ``python -m autoglm.gateway`` already did it in the master, as it does). gRPC's
core runs its own threads and poller, which a greenlet would block on; its gevent
integration must be switched on after patching and before the first channel, which is
here: the app (and the OTLP exporter, also gRPC) is loaded after ``init_process``
patched.
"""

from __future__ import annotations

from gunicorn.workers.ggevent import GeventWorker


class GatewayWorker(GeventWorker):  # type: ignore[misc]
    def patch(self) -> None:
        super().patch()
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
