"""Entries of Dapr's bulk publish (``/v1.0-alpha1/publish/bulk/{pubsub}/{topic}``) that
keep every event in its own trace.

One bulk request carries one trace context (its headers). daprd wraps a plain entry in a
CloudEvent with a child of that context, so every event of the request would join one
trace. An entry whose content type is ``application/cloudevents+json`` is taken as a
complete CloudEvent instead: daprd keeps its ``traceparent``/``tracestate`` fields
(``FromCloudEvent`` fills them only when absent) and the subscriber's daprd continues
them. So each event is sent as the CloudEvent daprd would have built for a single
publish, with the trace context captured by the request that queued it.
"""

from __future__ import annotations

import uuid
from typing import Any

#: The content type that makes daprd take an entry as a whole CloudEvent.
CLOUDEVENT = "application/cloudevents+json"
#: What daprd sets as ``type`` for events it wraps itself.
EVENT_TYPE = "com.dapr.event.sent"

#: ``(payload, headers)``: an event and the trace context (W3C headers) it belongs to.
Event = tuple[dict[str, Any], dict[str, str]]


def cloud_event(
    payload: dict[str, Any], headers: dict[str, str], source: str | None = None
) -> dict[str, Any]:
    """``payload`` as the CloudEvent a single publish from app ``source`` would carry
    (without a source daprd writes its default, ``Dapr``)."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": EVENT_TYPE,
        "datacontenttype": "application/json",
        "data": payload,
    }
    if source:
        event["source"] = source
    traceparent = headers.get("traceparent")
    if traceparent:
        # daprd reads ``traceid`` (older) or ``traceparent``; it sets both itself.
        event["traceparent"] = event["traceid"] = traceparent
        event["tracestate"] = headers.get("tracestate", "")
    return event


def bulk_entries(events: list[Event], source: str | None = None) -> list[dict[str, Any]]:
    """The bulk request body: one CloudEvent entry per event, ``entryId`` its index."""
    return [
        {
            "entryId": str(i),
            "event": cloud_event(payload, headers, source),
            "contentType": CLOUDEVENT,
        }
        for i, (payload, headers) in enumerate(events)
    ]


def failed_indices(body: Any, count: int) -> list[int]:
    """The indices of the entries a failed bulk publish names as not published; all of
    them when its reply does not say which."""
    failed = body.get("failedEntries") if isinstance(body, dict) else None
    if not isinstance(failed, list) or not failed:
        return list(range(count))
    indices: set[int] = set()
    for entry in failed:
        entry_id = entry.get("entryId") if isinstance(entry, dict) else None
        if not (isinstance(entry_id, str) and entry_id.isdigit() and int(entry_id) < count):
            return list(range(count))
        indices.add(int(entry_id))
    return sorted(indices)
