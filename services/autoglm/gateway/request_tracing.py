"""A SERVER span per HTTP request, continuing the client's ``traceparent``. Registered
first, so authentication, the Dapr calls and the audit publish all happen inside it."""

from __future__ import annotations

from flask import Flask, Response, g, request

from autoglm.core.tracing import end_server_span, start_server_span


def install_tracing(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        carrier = {k.lower(): v for k, v in request.headers.items()}
        name = f"{request.method} {request.url_rule.rule if request.url_rule else request.path}"
        g.span, g.span_token = start_server_span(name, carrier)
        g.span.set_attribute("http.request.method", request.method)
        g.span.set_attribute("url.path", request.path)

    @app.after_request
    def _status(resp: Response) -> Response:
        g.status_code = resp.status_code
        return resp

    @app.teardown_request
    def _end(_exc: BaseException | None) -> None:
        span = g.pop("span", None)
        if span is not None:
            end_server_span(span, g.pop("span_token"), g.get("status_code", 500))
