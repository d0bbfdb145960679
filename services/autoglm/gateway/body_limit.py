"""Request bodies: 413 over the size limit, 408 when they arrive too slowly.

Werkzeug refuses a declared ``Content-Length`` over ``MAX_CONTENT_LENGTH`` at once, but
a chunked body is only cut at the limit: the handler would then see a truncated body
and report it as invalid JSON. Read such a body up front and, when it filled the limit,
look one byte past it in the server's stream: anything there means it was too large.
The request pipeline runs this after authentication, so nobody without a valid token
makes the gateway read a byte of body.

``body_deadline`` bounds the time a body may take: every read of ``wsgi.input`` must
finish by the request's deadline, else 408 (``BodyTimeout``). A client sending one
byte a second therefore holds its connection for ``body_timeout_s`` at most.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge, RequestTimeout

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class BodyTimeout(RequestTimeout):
    description = "the request body did not arrive in time"


def check_undeclared_body() -> None:
    """A body without ``Content-Length`` is read now, and refused (413) over the limit."""
    limit = request.max_content_length
    if limit is None or request.content_length is not None:
        return
    if "wsgi.input_terminated" not in request.environ:
        return  # the server does not end the stream: werkzeug reads no body at all
    body = request.get_data(cache=True)
    if len(body) >= limit and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge(f"request body is larger than {limit} bytes")


class _DeadlineInput:
    """``wsgi.input`` whose reads must all end by ``deadline`` (monotonic seconds).

    Under gevent (the gateway's server) a read blocked on the socket is interrupted at
    the deadline; elsewhere the deadline is checked before each read."""

    def __init__(self, stream: IO[bytes], deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise BodyTimeout()
        if _cooperative():
            import gevent

            with gevent.Timeout(left, BodyTimeout()):
                return method(*args)
        return method(*args)

    def read(self, size: int | None = -1) -> bytes:
        return bytes(self._call(self._stream.read, -1 if size is None else size))

    def readline(self, size: int | None = -1) -> bytes:
        return bytes(self._call(self._stream.readline, -1 if size is None else size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return list(self._call(self._stream.readlines, hint))

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


def _cooperative() -> bool:
    try:
        from gevent import monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return False
    return bool(monkey.is_module_patched("socket"))


def body_deadline(app: WSGIApp, timeout_s: float) -> WSGIApp:
    """WSGI middleware: the request body must arrive within ``timeout_s`` of the
    request's start (its head is bounded by the server: see ``__main__``)."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        if stream is not None:
            environ["wsgi.input"] = _DeadlineInput(stream, time.monotonic() + timeout_s)
        return app(environ, start_response)

    return wrapped
