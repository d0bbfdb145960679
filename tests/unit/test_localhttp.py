"""The sidecar's keep-alive HTTP/1.1 client (``autoglm.core.localhttp``) against a local
HTTP/1.1 server on the loopback: what ``Sidecar`` relies on of it."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from autoglm.core import localhttp
from autoglm.core.errors import DeadlineExceededError, UnavailableError
from autoglm.core.localhttp import LocalHTTP
from autoglm.core.sidecar import Sidecar
from autoglm.devstack.processes import free_port

pytestmark = pytest.mark.unit


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    seen: list[dict[str, object]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "body": body,
                "token": self.headers.get("dapr-api-token"),
                "type": self.headers.get("Content-Type"),
                "port": self.client_address[1],
            }
        )
        if "slow" in self.path:
            time.sleep(0.5)
        if self.path.startswith("/drop"):
            # Closed after the reply without saying so: the client keeps a dead connection.
            self.close_connection = True
        if self.path.startswith("/empty"):
            self.send_response(204)
            self.end_headers()
            return
        out = json.dumps({"echo": body.decode(), "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("ETag", "7")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_DELETE = _answer


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # The timeout test's client leaves before the slow reply: the write's broken pipe
        # is the case under test, not a server fault worth a traceback in the output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[ThreadingHTTPServer]:
    _Handler.seen = []
    srv = _Server(("127.0.0.1", free_port()), _Handler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _client(srv: ThreadingHTTPServer, timeout: float = 5.0) -> LocalHTTP:
    return LocalHTTP(
        "127.0.0.1", srv.server_address[1], timeout=timeout, headers={"dapr-api-token": "t"}
    )


def test_request_json_params_headers_and_keep_alive(server: ThreadingHTTPServer) -> None:
    client = _client(server)
    resp = client.request("POST", "/v1.0/x", json={"a": "é"}, headers={"traceparent": "00-1"})
    assert resp.status_code == 200
    assert resp.json()["echo"] == '{"a":"é"}'
    assert resp.headers.get("etag") == "7"  # header names are case-insensitive
    client.request("DELETE", "/v1.0/y", params={"concurrency": "first-write"})
    assert client.get("/empty").content == b""
    first, second, third = _Handler.seen
    assert first["token"] == "t" and first["type"] == "application/json"
    assert second["path"] == "/v1.0/y?concurrency=first-write"
    # One connection carried all three calls.
    assert first["port"] == second["port"] == third["port"]
    client.close()


def test_a_connection_the_server_closed_is_not_reused(server: ThreadingHTTPServer) -> None:
    client = _client(server)
    client.get("/drop")
    kept = client._idle[-1].sock
    assert kept is not None
    deadline = time.monotonic() + 10
    while not localhttp._readable(kept) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the server has closed its end (slow on a loaded machine)
    assert client.get("/b").status_code == 200
    drop, b = _Handler.seen
    assert drop["port"] != b["port"]
    assert client.get("/c").status_code == 200
    assert _Handler.seen[-1]["port"] == b["port"]


def test_timeout_and_refused_connection_raise_httpx_errors(server: ThreadingHTTPServer) -> None:
    with pytest.raises(httpx.TimeoutException):
        _client(server, timeout=0.1).get("/slow")
    with pytest.raises(httpx.TransportError):
        LocalHTTP("127.0.0.1", free_port(), timeout=1).get("/")


def test_sidecar_maps_transport_failures(server: ThreadingHTTPServer) -> None:
    sidecar = Sidecar(http_port=server.server_address[1], api_token="t")
    assert sidecar.invoke("inference", "generate", {"x": 1})["path"] == (
        "/v1.0/invoke/inference/method/generate"
    )
    with pytest.raises(DeadlineExceededError):
        sidecar.invoke("slow", "m", {}, timeout=0.1)
    with pytest.raises(UnavailableError):
        Sidecar(http_port=free_port()).invoke("inference", "generate", {})


def test_the_readability_check_is_the_systems_poll_not_gevents() -> None:
    # gevent's poll(0) switches to its hub: under the gateway's gevent worker each call
    # to daprd would wait for every other runnable request before it is sent.
    from gevent.monkey import get_original

    assert localhttp._poll is get_original("select", "poll")


def test_a_host_name_is_resolved_an_ip_literal_is_not(server: ThreadingHTTPServer) -> None:
    port = server.server_address[1]
    assert LocalHTTP("localhost", port, timeout=5).get("/a").status_code == 200
    resolved: list[object] = []
    real = socket.getaddrinfo

    def spy(*args: object, **kwargs: object) -> object:
        resolved.append(args[0])
        return real(*args, **kwargs)  # type: ignore[arg-type]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket, "getaddrinfo", spy)
        assert LocalHTTP("127.0.0.1", port, timeout=5).get("/b").status_code == 200
    assert resolved == []


def _raw_server(replies: list[bytes]) -> tuple[int, list[bytes]]:
    """A server answering each request on one connection with the next raw reply."""
    listener = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            for reply in replies:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                got.append(data)
                conn.sendall(reply)
        listener.close()

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], got


def test_chunked_close_delimited_and_connection_close_replies() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nETag: 3\r\n\r\n"
        b'4\r\n{"a"\r\n3;x=1\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    closing = b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"
    port, got = _raw_server([chunked, closing])
    client = LocalHTTP("127.0.0.1", port, timeout=5)
    first = client.get("/a")
    assert first.json() == {"a": 1} and first.headers.get("ETAG") == "3"
    assert len(client._idle) == 1  # chunked: delimited, kept
    second = client.request("POST", "/b", json={"x": 1})
    assert second.status_code == 201 and second.content == b"{}"
    assert not client._idle  # the server said it closes
    assert got[1].startswith(b"POST /b HTTP/1.1\r\n") and b"Content-Length: 7\r\n" in got[1]

    port, _ = _raw_server([b"HTTP/1.0 200 OK\r\n\r\nuntil the end"])
    client = LocalHTTP("127.0.0.1", port, timeout=5)
    # A reply without length runs to the close (the raw server closes after it).
    assert client.get("/c").content == b"until the end"
    assert not client._idle


def test_a_reply_that_is_not_http_is_a_transport_error() -> None:
    port, _ = _raw_server([b"SSH-2.0-nope\r\n\r\n"])
    with pytest.raises(httpx.TransportError):
        LocalHTTP("127.0.0.1", port, timeout=5).get("/")
