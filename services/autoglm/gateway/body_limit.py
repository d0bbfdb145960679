"""413 for a body over the limit, whether or not it declared its length.

Werkzeug refuses a declared ``Content-Length`` over ``MAX_CONTENT_LENGTH`` at once, but
a chunked body is only cut at the limit: the handler would then see a truncated body
and report it as invalid JSON. Read such a body up front and, when it filled the limit,
look one byte past it in the server's stream: anything there means it was too large.
"""

from __future__ import annotations

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge


def install_body_limit(app: Flask) -> None:
    @app.before_request
    def _undeclared_body_within_limit() -> None:
        limit = request.max_content_length
        if limit is None or request.content_length is not None:
            return
        if "wsgi.input_terminated" not in request.environ:
            return  # the server does not end the stream: werkzeug reads no body at all
        body = request.get_data(cache=True)
        if len(body) >= limit and request.environ["wsgi.input"].read(1):
            raise RequestEntityTooLarge(f"request body is larger than {limit} bytes")
