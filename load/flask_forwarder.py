"""The least a Flask gateway can add to the Dapr floor (issue 15): the gateway's own
server (``GatewayServer``: gunicorn, the gateway's gevent worker, its settings) serving a
bare Flask app whose one route forwards the JSON body to the floor's echo app through
the local daprd with the gateway's client of it (``Sidecar.invoke``) and returns the
echo's reply.

It leaves out everything the gateway does on a request beyond taking it in and calling
through its daprd (authentication, validation, limits, tracing, audit, the reply model),
and its callee (``load/echo_app.py``) answers at once, without the hand-off to a compute
thread that inference makes. ``load/bench.py`` calls it in the same rounds as the floor:
``bare_flask_over_floor_p50`` (its whole time, as nothing of it is an engine's, over the
floor) is what a Flask gateway in front of the two daprds costs at the least on the
machine, next to ``overhead_over_floor_p50`` and its goal of 2.

    AUTOGLM_GATEWAY_PORT=8099 DAPR_HTTP_PORT=3500 DAPR_API_TOKEN=... \
        python -m load.flask_forwarder
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    # As the gateway does: before anything creates sockets, threads or locks.
    monkey.patch_all()

import sys
from typing import Any

from flask import Flask, request
from werkzeug.sansio.response import Response

from autoglm.core.settings import load_settings
from autoglm.gateway.__main__ import GatewayServer
from autoglm.gateway.settings import GatewaySettings

#: The one route; its body goes to the echo app's ``echo`` method as it is.
ROUTE = "/forward"
ECHO_APP, ECHO_METHOD = "echo", "echo"


def forwarder_app(sidecar: Any) -> Flask:
    """``POST /forward``: the body to ``echo`` through ``sidecar`` (a ``Sidecar``), and
    its reply back as JSON."""
    app = Flask("flask_forwarder")

    @app.post(ROUTE)
    def forward() -> Response:
        reply = sidecar.invoke(ECHO_APP, ECHO_METHOD, request.get_json())
        return app.json.response(reply)

    return app


class ForwarderServer(GatewayServer):
    """The gateway's server with the bare app in place of the gateway's."""

    def load(self) -> Flask:
        # In the worker, after gevent patched it, as the gateway's own ``load``.
        from autoglm.core.sidecar import Sidecar

        return forwarder_app(Sidecar())


def main() -> int:
    ForwarderServer(load_settings(GatewaySettings)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
