"""Where a 1-token chat request's time goes, hop by hop (issue 15's path overhead).

``load/bench.py`` sends its sequential 1-token chats through the gateway each with a
``traceparent`` of its own and notes when it sent each and when the reply had arrived;
every app and daprd of the bench stack exports its spans to the stack's OTLP receiver.
From the four SERVER/CLIENT spans of one request (the gateway's, its daprd's call, the
inference daprd's, the inference app's ``generate``) and the client's two times, one
request's wall time splits into the hops below, which add up to it. All clocks are the
same machine's wall clock.

``app generate`` is the engine's share (tokenizing, the hand-off to the compute thread,
the step, the reply model), the rest is the path: ours (gateway, inference's intake) and
Dapr's (the two daprds).

``floor_hop_ms`` splits the Dapr floor's calls (``load/echo_app.py`` through two daprds)
the same way, from the two daprds' spans alone (the echo app exports none): the request
between the daprds, the callee daprd's span (its gRPC call to the app, the app, the reply
back to it) and the reply between the daprds. Like for like with the inference side:
``gateway daprd -> inference daprd``, ``inference daprd -> app span`` plus ``app span end
-> inference daprd end`` (the callee daprd's span less the app's), and ``inference daprd
-> gateway daprd``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from tests.support.otlp import ReceivedSpan

from load import loadgen

#: The route the bench's 1-token chats take.
GATEWAY_SPAN = "POST /v1/chat/completions"
#: daprd's spans of the invocation (the caller's CLIENT span, the callee's SERVER span).
INVOKE_SPAN = "CallLocal/inference/generate"
#: The inference app's SERVER span of the method.
APP_SPAN = "generate"
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3

#: Hop name -> (from, to): points of one request, in order.
HOPS: dict[str, tuple[str, str]] = {
    "client -> gateway span (send, gunicorn/gevent, Flask until before_request)": (
        "sent",
        "gateway.start",
    ),
    "gateway before invoke (auth, parse, engine request, JSON)": (
        "gateway.start",
        "daprd_gw.start",
    ),
    "gateway daprd -> inference daprd (request)": ("daprd_gw.start", "daprd_inf.start"),
    "inference daprd -> app span (gRPC intake)": ("daprd_inf.start", "app.start"),
    "app generate (engine: tokenize, hand-off, step, reply)": ("app.start", "app.end"),
    "app span end -> inference daprd end (reply out)": ("app.end", "daprd_inf.end"),
    "inference daprd -> gateway daprd (reply)": ("daprd_inf.end", "daprd_gw.end"),
    "gateway after invoke (parse, filter, reply, audit queued)": (
        "daprd_gw.end",
        "gateway.end",
    ),
    "gateway span end -> client (write, client read)": ("gateway.end", "received"),
}


#: daprd's spans of the floor's invocation (``load/echo_app.py``'s method), by app id.
FLOOR_SPAN = "CallLocal/echo/echo"
FLOOR_CALLER, FLOOR_CALLEE = "echo-caller", "echo"
#: The floor's hops, like ``HOPS``: (from, to) points of one call.
FLOOR_HOPS: dict[str, tuple[str, str]] = {
    "caller daprd -> echo daprd (request)": ("caller.start", "callee.start"),
    "echo daprd span (gRPC to the app, echo, reply back)": ("callee.start", "callee.end"),
    "echo daprd -> caller daprd (reply)": ("callee.end", "caller.end"),
}


def traceparent() -> tuple[str, str]:
    """A new sampled W3C trace context: (trace id, ``traceparent`` header value)."""
    trace_id = os.urandom(16).hex()
    return trace_id, f"00-{trace_id}-{os.urandom(8).hex()}-01"


def _points(spans: Iterable[ReceivedSpan]) -> dict[str, int] | None:
    found: dict[str, ReceivedSpan] = {}
    for s in spans:
        if s.service == "gateway" and s.name == GATEWAY_SPAN and s.kind == SPAN_KIND_SERVER:
            found["gateway"] = s
        elif s.service == "gateway" and s.name == INVOKE_SPAN:
            found["daprd_gw"] = s
        elif s.service == "inference" and s.name == INVOKE_SPAN:
            found["daprd_inf"] = s
        elif s.service == "inference" and s.name == APP_SPAN and s.kind == SPAN_KIND_SERVER:
            found["app"] = s
    if len(found) < 4:
        return None
    points: dict[str, int] = {}
    for name, s in found.items():
        points[f"{name}.start"], points[f"{name}.end"] = s.start_ns, s.end_ns
    return points


def hop_ms(
    spans: Iterable[ReceivedSpan], requests: Mapping[str, tuple[int, int]]
) -> dict[str, dict[str, float]]:
    """Percentiles and mean (ms; the means add up) of each hop over ``requests`` (trace
    id -> (sent, received), ns since the epoch) whose four spans arrived; ``requests``
    counts how many did."""
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for s in spans:
        if s.trace_id in requests:
            by_trace.setdefault(s.trace_id, []).append(s)
    hops: dict[str, list[float]] = {name: [] for name in HOPS}
    for trace_id, (sent, received) in requests.items():
        points = _points(by_trace.get(trace_id, ()))
        if points is None:
            continue
        points.update(sent=sent, received=received)
        for name, (a, b) in HOPS.items():
            hops[name].append((points[b] - points[a]) / 1e9)
    out = _table(hops)
    out["requests"] = {"traced": float(len(hops[next(iter(HOPS))])), "sent": float(len(requests))}
    return out


def floor_hop_ms(spans: Iterable[ReceivedSpan]) -> dict[str, dict[str, float]]:
    """Percentiles and mean (ms) of each of ``FLOOR_HOPS`` over every trace that holds
    both daprds' spans of a floor call; ``calls`` counts them. (The floor's caller sends
    no trace context of its own: its daprd starts each call's trace.)"""
    by_trace: dict[str, dict[str, ReceivedSpan]] = {}
    for s in spans:
        if s.name != FLOOR_SPAN:
            continue
        if s.service == FLOOR_CALLER and s.kind == SPAN_KIND_CLIENT:
            by_trace.setdefault(s.trace_id, {})["caller"] = s
        elif s.service == FLOOR_CALLEE and s.kind == SPAN_KIND_SERVER:
            by_trace.setdefault(s.trace_id, {})["callee"] = s
    hops: dict[str, list[float]] = {name: [] for name in FLOOR_HOPS}
    for found in by_trace.values():
        if len(found) < 2:
            continue
        points: dict[str, int] = {}
        for name, s in found.items():
            points[f"{name}.start"], points[f"{name}.end"] = s.start_ns, s.end_ns
        for name, (a, b) in FLOOR_HOPS.items():
            hops[name].append((points[b] - points[a]) / 1e9)
    out = _table(hops)
    out["calls"] = {"traced": float(len(hops[next(iter(FLOOR_HOPS))]))}
    return out


def _table(hops: Mapping[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each hop's percentiles and mean in ms (empty where no call was split)."""
    return {
        name: {**loadgen.percentiles(values), "mean": round(sum(values) / len(values) * 1000, 2)}
        if values
        else {}
        for name, values in hops.items()
    }
