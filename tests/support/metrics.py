"""Reading Prometheus metrics (an app's or daprd's ``/metrics``) in tests."""

from __future__ import annotations

import httpx


def metric_sum(port: int, name: str, *labels: str) -> float:
    """The sum of ``name``'s samples on ``127.0.0.1:port`` whose labels include every
    one of ``labels`` (each as written, e.g. ``'operation="set"'``)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(label in line for label in labels)
    )
