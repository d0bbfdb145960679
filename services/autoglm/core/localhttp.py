"""A lean keep-alive HTTP/1.1 client for the app's own daprd on the loopback.

Every call an app makes to Dapr (an invocation, a publish, a state read) is one small
HTTP request to its sidecar, and the gateway makes two per chat request. httpx spent
~0.45 ms of CPU on each (its pool checks every kept connection for readability on every
request, then h11, then its models), against ~0.12 ms for the standard library's
``http.client`` on the same call; on a machine whose cores the model and the sidecars
share, that CPU is what a request waits for (issue 15, load/RESULTS.md).

``LocalHTTP`` keeps idle connections in a LIFO stack (one readability check, on the
connection it takes), opens a new one when none is idle, and closes what it cannot keep.
Its surface is the slice of ``httpx.Client`` that ``Sidecar`` uses (``request``, ``get``,
``headers``, ``close``; responses with ``status_code``, ``content``, ``text``,
``headers``, ``json()``), and it raises httpx's exception types (``TimeoutException``,
``TransportError``), so ``Sidecar`` treats both alike and tests can still hand it an
``httpx.Client`` with a mock transport. Under gevent (the gateway) its sockets are
gevent's, so a call waits cooperatively.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import select
import socket
from collections import deque
from collections.abc import Callable, Mapping
from email.message import Message
from typing import Any, cast
from urllib.parse import urlencode

import httpx


class LocalResponse:
    """What ``Sidecar`` reads of a reply (the body is read in full)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Message, content: bytes) -> None:
        self.status_code = status_code
        #: Case-insensitive ``get`` (``http.client``'s header message).
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; a ``ValueError`` when it is not (empty included)."""
        return json.loads(self.content)


def _unpatched_poll() -> Callable[[], Any]:
    """The operating system's ``poll``, also where gevent has patched ``select`` (the
    gateway): gevent's ``poll(0)`` switches to its hub, so the calling request would
    wait for every other runnable greenlet before sending (tens of ms at 32 in flight),
    where a zero-timeout check of one descriptor never blocks anyway."""
    try:
        from gevent.monkey import get_original
    except ImportError:  # pragma: no cover - gevent is a dependency
        return select.poll
    return cast(Callable[[], Any], get_original("select", "poll"))


_poll = _unpatched_poll()


def _readable(sock: socket.socket) -> bool:
    """Whether an idle kept-alive connection has something to read: the peer closed it
    (or sent what nobody asked for); either way it cannot carry a request."""
    poller = _poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _Connection(http.client.HTTPConnection):
    """``http.client``'s connection, connecting straight to an IP literal: its own
    ``connect`` resolves even ``127.0.0.1`` through ``getaddrinfo``, which gevent runs on
    its thread pool, so a new connection cost the gateway's request 12-24 ms at 32 in
    flight (the first wave of a burst opens most of them)."""

    def connect(self) -> None:
        try:
            family = socket.AF_INET6 if ipaddress.ip_address(self.host).version == 6 else None
        except ValueError:
            super().connect()  # a name: resolve it
            return
        sock = socket.socket(family or socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class LocalHTTP:
    """Keep-alive HTTP/1.1 to one ``host:port``; safe to share between threads and
    greenlets (each call holds its own connection)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        timeout: float,
        headers: Mapping[str, str] | None = None,
        max_idle: int = 256,
    ) -> None:
        self.host, self.port = host, port
        self.timeout = timeout
        #: Sent with every request (the Dapr API token).
        self.headers = dict(headers or {})
        self.max_idle = max_idle
        self._idle: deque[http.client.HTTPConnection] = deque()

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> LocalResponse:
        sent = {**self.headers, **(headers or {})}
        body = None
        if json is not None:
            body = _dumps(json)
            sent["Content-Type"] = "application/json"
        if params:
            url = f"{url}?{urlencode(params)}"
        conn = self._take(self.timeout if timeout is None else timeout)
        try:
            conn.request(method, url, body=body, headers=sent)
            resp = conn.getresponse()
            content = resp.read()
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            conn.close()
            raise httpx.ReadTimeout(f"{method} {url}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise httpx.ConnectError(f"{method} {url}: {exc!r}") from None
        if resp.will_close or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)
        return LocalResponse(resp.status, resp.msg, content)

    def get(self, url: str, *, timeout: float | None = None) -> LocalResponse:
        return self.request("GET", url, timeout=timeout)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _take(self, timeout: float) -> http.client.HTTPConnection:
        """The most recently used idle connection that is still open, else a new one."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                return _Connection(self.host, self.port, timeout=timeout)
            sock = conn.sock
            if sock is None or _readable(sock):
                conn.close()
                continue
            conn.timeout = timeout
            sock.settimeout(timeout)
            return conn


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
