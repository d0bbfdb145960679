"""An app's Prometheus metrics: families on a registry of its own, served as text on a
side port."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

#: Seconds, from a quick call to a long generation.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    """Base of an app's metrics: each family declared in one call, labels last."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def counter(self, name: str, doc: str, *labels: str) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(
        self, name: str, doc: str, *labels: str, value: Callable[[], float] | None = None
    ) -> Gauge:
        """``value``: read at each scrape instead of being set."""
        gauge = Gauge(name, doc, labels, registry=self.registry)
        if value is not None:
            gauge.set_function(value)
        return gauge

    def histogram(
        self, name: str, doc: str, *labels: str, buckets: Sequence[float] = LATENCY_BUCKETS
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
