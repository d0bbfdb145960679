"""Is an app's sidecar really serving it? Checked through daprd's metadata API.

A daprd can report itself healthy and "Running" while it failed to load the app's
subscriptions (it asked the app for its topic list too early and gave up): every message
for the app then sits unconsumed. Readiness therefore compares what the sidecar reports
(``GET /v1.0/metadata``) with what the app must have: its subscriptions and the
components it uses. Used by the gateway's ``/readyz`` and by the dev launcher, which
restarts a sidecar that came up without them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from autoglm.core import contracts
from autoglm.core.schemas import PUBSUB, STATESTORE

#: Components every app's sidecar must have loaded.
COMPONENTS: tuple[str, ...] = (STATESTORE, PUBSUB)


def sidecar_problems(
    metadata: Mapping[str, Any], app_id: str, components: Iterable[str] = COMPONENTS
) -> list[str]:
    """What the sidecar described by ``metadata`` lacks to serve ``app_id``; empty: ready."""
    problems = []
    if metadata.get("id") != app_id:
        problems.append(f"sidecar serves app id {metadata.get('id')!r}, not {app_id!r}")
    subscribed = {
        (s.get("pubsubname"), s.get("topic")) for s in metadata.get("subscriptions") or []
    }
    for topic in sorted(t for app, t in contracts.subscriptions() if app == app_id):
        if (PUBSUB, topic) not in subscribed:
            problems.append(f"no subscription to {PUBSUB}/{topic}")
    loaded = {c.get("name") for c in metadata.get("components") or []}
    for name in components:
        if name not in loaded:
            problems.append(f"component {name!r} not loaded")
    # With an actor runtime (a placement service), the app's actor types must be
    # registered (inference's actor stream, autoglm.inference.actor_host).
    actors = metadata.get("actorRuntime") or {}
    if actors.get("runtimeStatus") == "RUNNING":
        hosted = {a.get("type") for a in actors.get("activeActors") or []}
        for actor in contracts.ACTORS:
            if actor.app == app_id and actor.name not in hosted:
                problems.append(f"actor type {actor.name} not registered")
    return problems
