"""OpenTelemetry for every app: one trace from the client's request to the archiver.

Each app names its service after its Dapr app id, continues the W3C trace context its
sidecar hands in (HTTP headers, gRPC metadata, or a CloudEvent's ``traceparent``), and
passes it on in every call to its sidecar (``Sidecar`` injects it). Spans are exported
over OTLP/gRPC when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, to the same collector the
sidecars export to (``components/configuration/autoglm.yaml``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind

_provider: TracerProvider | None = None


def configure_tracing(service_name: str) -> None:
    """Install the global tracer provider once per process."""
    global _provider
    if _provider is not None:
        return
    # shutdown_on_exit (the default, kept explicit): pending spans are flushed at exit.
    _provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}), shutdown_on_exit=True
    )
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = not endpoint.startswith("https://")
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
        # Short delay: spans of a request should reach the collector within a second.
        _provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    trace.set_tracer_provider(_provider)


@functools.cache
def tracer() -> trace.Tracer:
    """The apps' tracer, made once: ``get_tracer`` builds a new one on every call (~10
    µs; two per request in the gateway). Taken before ``configure_tracing`` it is the
    API's proxy, which follows the provider installed later."""
    return trace.get_tracer("autoglm")


def grpc_carrier(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    """gRPC metadata as dapr-ext-grpc hands it over (values may be lists) → headers."""
    carrier: dict[str, str] = {}
    for key, value in (metadata or {}).items():
        if isinstance(value, (list, tuple)):
            value = value[0] if value else ""
        carrier[str(key).lower()] = str(value)
    return carrier


def event_carrier(event: Any) -> dict[str, str]:
    """A CloudEvent's trace context: daprd sets ``traceparent`` (and ``tracestate``)
    from the publisher's context."""
    extensions = event.Extensions() or {}
    return {k: str(v) for k, v in extensions.items() if k in ("traceparent", "tracestate")}


@contextmanager
def server_span(
    name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A SERVER span that continues the caller's trace and is current inside the block."""
    parent = propagate.extract(dict(carrier))
    with tracer().start_as_current_span(
        name, context=parent, kind=SpanKind.SERVER, attributes=dict(attributes or {})
    ) as span:
        yield span


def start_server_span(
    name: str, carrier: Mapping[str, str], attributes: Mapping[str, Any] | None = None
) -> tuple[Span, object]:
    """For frameworks with before/after hooks (Flask): start, make current, and return
    the span and the token ``end_server_span`` needs. ``carrier`` is read with ``get``
    only (the propagators' names, lower-case): a case-insensitive mapping such as
    Werkzeug's request headers can be passed as it is, without a copy."""
    span = tracer().start_span(
        name,
        context=propagate.extract(carrier),
        kind=SpanKind.SERVER,
        attributes=attributes,
    )
    token = context.attach(trace.set_span_in_context(span))
    return span, token


def end_server_span(span: Span, token: object, status_code: int | None = None) -> None:
    if status_code is not None:
        span.set_attribute("http.response.status_code", status_code)
        if status_code >= 500:
            span.set_status(trace.Status(trace.StatusCode.ERROR))
    span.end()
    context.detach(token)  # type: ignore[arg-type]
