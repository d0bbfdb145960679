"""A lean keep-alive HTTP/1.1 client for the app's own daprd on the loopback.

Every call an app makes to Dapr (an invocation, a publish, a state read) is one small
HTTP request to its sidecar, and the gateway makes two per chat request. httpx spent
~0.45 ms of CPU on each (its pool checks every kept connection for readability on every
request, then h11, then its models); the standard library's ``http.client`` about 0.36
ms on a loaded machine, two thirds of it in its socket file object and the ``email``
parser it reads headers with; this client about 0.21 ms on the same call (one
``sendall`` out, ``recv`` into a buffer, the status line and headers split by hand). On a
machine whose cores the model and the sidecars share, that CPU is what a request waits
for (issue 15, load/RESULTS.md).

``LocalHTTP`` keeps idle connections in a LIFO stack (one readability check, on the
connection it takes), opens a new one when none is idle, and closes what it cannot keep.
It reads what daprd answers: HTTP/1.x, bodies of ``Content-Length`` bytes, chunked, or up
to the close; anything else is a transport error. Its surface is the slice of
``httpx.Client`` that ``Sidecar`` uses (``request`` with ``json`` or ``content``, ``get``,
``headers``, ``close``; responses with ``status_code``, ``content``, ``text``,
``headers``, ``json()``), and it raises httpx's exception types (``TimeoutException``,
``TransportError``), so ``Sidecar`` treats both alike and tests can still hand it an
``httpx.Client`` with a mock transport.
Under gevent (the gateway) its sockets are gevent's, so a call waits cooperatively.
"""

from __future__ import annotations

import ipaddress
import json
import select
import socket
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, cast
from urllib.parse import urlencode

import httpx


class Headers(dict[str, str]):
    """A reply's headers, by lower-cased name (``get`` of any case finds them)."""

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class LocalResponse:
    """What ``Sidecar`` reads of a reply (the body is read in full)."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: Headers, content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body as JSON; a ``ValueError`` when it is not (empty included)."""
        return json.loads(self.content)


class ProtocolError(Exception):
    """daprd's reply was not HTTP/1.1 as this client reads it."""


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


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection, straight to an IP literal: resolving even ``127.0.0.1`` goes
    through ``getaddrinfo``, which gevent runs on its thread pool, so a new connection
    cost the gateway's request 12-24 ms at 32 in flight (the first wave of a burst opens
    most of them). A name is resolved."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        sock = socket.create_connection((host, port), timeout)
    else:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class _Connection:
    """One kept-alive connection: a request goes out in one ``sendall``, its reply is
    read with ``recv`` into a buffer and parsed here (status line, headers, a body of
    ``Content-Length`` bytes, chunked, or up to the close). ``http.client`` spent about
    two thirds of a call's CPU on its file object and the ``email`` parser it reads
    headers with, for replies of a few headers from a peer we know."""

    __slots__ = ("_buf", "host_header", "sock")

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock: socket.socket | None = _connect(host, port, timeout)
        self.host_header = f"Host: {host}:{port}\r\n".encode()
        self._buf = bytearray()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def exchange(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None
    ) -> tuple[LocalResponse, bool]:
        """Send one request and read its reply; also whether the connection can be
        kept (HTTP/1.1, no ``Connection: close``, the body delimited)."""
        sock = self.sock
        assert sock is not None
        head = [f"{method} {url} HTTP/1.1\r\n".encode(), self.host_header]
        head += [f"{k}: {v}\r\n".encode() for k, v in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            head.append(b"Content-Length: %d\r\n" % len(body or b""))
        head.append(b"\r\n")
        if body:
            head.append(body)
        sock.sendall(b"".join(head))
        self._buf.clear()
        end = self._fill_until(b"\r\n\r\n")
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(code)
        headers_in = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolError(f"bad header line {line[:80]!r}")
            headers_in[name.strip().lower()] = value.strip()
        keep = version == "HTTP/1.1" and headers_in.get("connection", "").lower() != "close"
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            content = b""
        elif "chunked" in headers_in.get("transfer-encoding", "").lower():
            content = self._chunked()
        elif (length := headers_in.get("content-length")) is not None:
            content = self._exactly(int(length))
        else:  # delimited by the close
            content, keep = self._to_close(), False
        return LocalResponse(status, headers_in, content), keep

    def _recv(self) -> bool:
        """Append what the socket has to the buffer; False at its end."""
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        self._buf += chunk
        return bool(chunk)

    def _fill_until(self, marker: bytes, start: int = 0) -> int:
        while (at := self._buf.find(marker, start)) < 0:
            if len(self._buf) > 65536:
                raise ProtocolError("reply head too long")
            if not self._recv():
                raise ProtocolError("connection closed before the reply ended")
        return at

    def _exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            if not self._recv():
                raise ProtocolError("connection closed before the reply ended")
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def _chunked(self) -> bytes:
        out = bytearray()
        while True:
            end = self._fill_until(b"\r\n")
            size = int(bytes(self._buf[:end]).split(b";", 1)[0], 16)
            del self._buf[: end + 2]
            if size == 0:  # trailers, then the empty line
                while (end := self._fill_until(b"\r\n")) > 0:
                    del self._buf[: end + 2]
                del self._buf[:2]
                return bytes(out)
            out += self._exactly(size)
            self._exactly(2)  # the chunk's CRLF

    def _to_close(self) -> bytes:
        while self._recv():
            pass
        out = bytes(self._buf)
        self._buf.clear()
        return out


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
        self._idle: deque[_Connection] = deque()

    def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        timeout: float | None = None,
    ) -> LocalResponse:
        """One request; its body is ``json`` encoded, or ``content`` as it is (with the
        caller's ``Content-Type``), as httpx takes them."""
        sent = {**self.headers, **(headers or {})}
        body = content
        if json is not None:
            body = _dumps(json)
            sent["Content-Type"] = "application/json"
        if params:
            url = f"{url}?{urlencode(params)}"
        conn = self._take(self.timeout if timeout is None else timeout)
        try:
            resp, keep = conn.exchange(method, url, sent, body)
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            conn.close()
            raise httpx.ReadTimeout(f"{method} {url}: {exc}") from None
        except (OSError, ValueError, ProtocolError) as exc:
            conn.close()
            raise httpx.ConnectError(f"{method} {url}: {exc!r}") from None
        if not keep or len(self._idle) >= self.max_idle:
            conn.close()
        else:
            self._idle.append(conn)
        return resp

    def get(self, url: str, *, timeout: float | None = None) -> LocalResponse:
        return self.request("GET", url, timeout=timeout)

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _take(self, timeout: float) -> _Connection:
        """The most recently used idle connection that is still open, else a new one."""
        while True:
            try:
                conn = self._idle.pop()
            except IndexError:
                try:
                    return _Connection(self.host, self.port, timeout)
                except TimeoutError as exc:
                    raise httpx.ConnectTimeout(f"connect {self.host}:{self.port}: {exc}") from None
                except OSError as exc:
                    raise httpx.ConnectError(f"connect {self.host}:{self.port}: {exc!r}") from None
            sock = conn.sock
            if sock is None or _readable(sock):
                conn.close()
                continue
            sock.settimeout(timeout)
            return conn


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
