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

Its responses are ``GatewayResponse``: gunicorn's HTTP/1 response, whose head leaves in
the same ``send`` as the body when the body's length is declared (a JSON reply), not in
a ``send`` of its own, and whose ``Date`` is formatted once a second; and the part of
each request's WSGI environ that never changes (``wsgi.errors`` and the like) is built
once per worker (``settled_base_environ``). Together ~4 % of the worker's CPU per
1-token chat, and one wake-up of the client fewer (issue 15, load/RESULTS.md).
"""

from __future__ import annotations

import email.utils
import time
from typing import Any

from gunicorn.http import wsgi
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


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """Now, as a ``Date`` header's value (what ``gunicorn.util.http_date`` gives), formatted
    once per second: the header has no finer resolution."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, email.utils.formatdate(now, localtime=False, usegmt=True))
    return _date[1]


class _HeadFirst:
    """The connection for one ``sendall``, which sends ``head`` in front of its data."""

    def __init__(self, sock: Any, head: bytes) -> None:
        self._sock = sock
        self.head: bytes | None = head

    def sendall(self, data: bytes) -> None:
        head, self.head = self.head, None
        self._sock.sendall(data if head is None else head + data)


class GatewayResponse(wsgi.Response):  # type: ignore[misc]
    """gunicorn's HTTP/1 response, with the head of a body of declared length held back
    until the body (or the response's end) and sent with it in one ``send``: a separate
    head costs a system call and a wake-up of the client that then waits for the body.
    A chunked response (a stream) or an upgrade sends its head at once, as gunicorn
    does."""

    sock: Any
    headers_sent: bool
    _held: bytes | None = None

    def default_headers(self) -> list[str]:
        # gunicorn's, with the Date formatted once a second.
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        headers = [
            f"HTTP/{self.req.version[0]}.{self.req.version[1]} {self.status}\r\n",
            f"Server: {self.version}\r\n",
            f"Date: {http_date()}\r\n",
            f"Connection: {connection}\r\n",
        ]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        if self.response_length is None or self.chunked or self.upgrade:
            super().send_headers()
            return
        lines = self.default_headers()
        lines.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        lines.append("\r\n")
        self._held = "".join(lines).encode("latin-1")
        self.headers_sent = True

    def _send_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            self.sock.sendall(held)

    def write(self, arg: bytes) -> None:
        self.send_headers()
        if self._held is None:
            super().write(arg)
            return
        sock, first = self.sock, _HeadFirst(self.sock, self._held)
        self._held = None
        self.sock = first  # gunicorn's write (length checks, HEAD, 204) sends through it
        try:
            super().write(arg)
        finally:
            self.sock = sock
        if first.head is not None:  # it sent no body bytes
            sock.sendall(first.head)

    def sendfile(self, respiter: Any) -> Any:
        self._send_held()
        return super().sendfile(respiter)

    def close(self) -> None:
        self.send_headers()
        self._send_held()
        super().close()


_base_environ = wsgi.base_environ


def settled_base_environ(cfg: Any) -> dict[str, Any]:
    """gunicorn's ``base_environ`` (``wsgi.errors``, ``wsgi.version``, ...), built once per
    worker: gunicorn builds it for every request, its ``wsgi.errors`` wrapper looking up
    the error log's handlers each time. A copy per request (the app may add keys)."""
    base = getattr(cfg, "_autoglm_base_environ", None)
    if base is None:
        base = _base_environ(cfg)
        cfg._autoglm_base_environ = base
    return dict(base)


class GatewayWorker(GeventWorker):  # type: ignore[misc]
    def __init__(
        self, age: int, ppid: int, sockets: Any, app: Any, timeout: int, cfg: Any, log: Any
    ) -> None:
        super().__init__(age, ppid, sockets, app, timeout, SettledConfig(cfg), log)

    def init_process(self) -> None:
        # In the worker only: its requests are answered by ``GatewayResponse``.
        wsgi.Response = GatewayResponse
        wsgi.base_environ = settled_base_environ
        super().init_process()

    def patch(self) -> None:
        super().patch()
        import grpc.experimental.gevent as grpc_gevent

        grpc_gevent.init_gevent()
