"""Optimistic versioning of session histories: accept, ignore, merge or refuse.

A ``SnapshotEvent`` at version ``v`` was written against version ``v - 1``. Against the
archive's current version ``c``:

* ``v > c``: newer; accepted (older versions stay on disk, nothing is overwritten).
* ``v <= c`` and its history is a prefix of the current one: a redelivery or an
  out-of-order older event, already contained; ignored (idempotent).
* ``v <= c`` otherwise: a stale write. If both it and the current history extend its
  base (version ``v - 1``) it only appended; the appended turns are merged after the
  current history as version ``c + 1``, and the new version records the merge.
* anything else is refused with ``ConflictError`` carrying ``current_version``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Literal

from autoglm.archiver.snapshots import SessionState
from autoglm.core.errors import ConflictError
from autoglm.core.schemas import SnapshotEvent

#: How many earlier versions (and merged event keys) a state remembers.
_MEMORY = 64


def event_key(event: SnapshotEvent) -> str:
    """Idempotency key of an event: its session, version and content."""
    digest = hashlib.sha256(
        json.dumps([m.model_dump() for m in event.messages], sort_keys=True).encode()
    ).hexdigest()[:24]
    return f"{event.tenant}/{event.session_id}/{event.version}/{digest}"


@dataclass(frozen=True)
class Outcome:
    kind: Literal["accepted", "duplicate", "merged"]
    state: SessionState


def _trim(lineage: dict[int, int]) -> dict[int, int]:
    return dict(sorted(lineage.items())[-_MEMORY:])


def reconcile(
    current: SessionState | None,
    event: SnapshotEvent,
    base: Callable[[int], SessionState | None],
) -> Outcome:
    """Decide what ``event`` does to ``current``; ``base(version)`` finds an archived
    version when ``current``'s lineage does not know it."""
    messages = tuple(event.messages)
    if current is None or event.version > current.version:
        lineage: dict[int, int] = {}
        if current is not None and messages[: len(current.messages)] == current.messages:
            lineage = _trim({**current.lineage, current.version: len(current.messages)})
        state = SessionState(
            tenant=event.tenant,
            session_id=event.session_id,
            version=event.version,
            messages=messages,
            model=event.model,
            created=event.created,
            lineage=lineage,
            merged=current.merged if current is not None and lineage else (),
            record=event.record,
        )
        return Outcome("accepted", state)
    key = event_key(event)
    if current.messages[: len(messages)] == messages or key in current.merged:
        return Outcome("duplicate", current)
    base_len = _base_length(current, event.version - 1, base)
    if (
        base_len is not None
        and len(messages) >= base_len
        and messages[:base_len] == current.messages[:base_len]
    ):
        appended = messages[base_len:]
        state = replace(
            current,
            version=current.version + 1,
            messages=current.messages + appended,
            lineage=_trim({**current.lineage, current.version: len(current.messages)}),
            merged=(*current.merged, key)[-_MEMORY:],
            merged_from={
                "event_version": event.version,
                "base_version": event.version - 1,
                "appended": len(appended),
                "into_version": current.version,
            },
        )
        return Outcome("merged", state)
    raise ConflictError(
        f"session {event.session_id!r}: version {event.version} conflicts with archived "
        f"version {current.version}; read the current version and resolve",
        code="version_conflict",
        param="version",
        details={"current_version": current.version},
    )


def _base_length(
    current: SessionState, version: int, base: Callable[[int], SessionState | None]
) -> int | None:
    """Message count of ``version`` if ``current`` extends it, else ``None``."""
    if version in current.lineage:
        return current.lineage[version]
    if version < 1:
        return 0
    found = base(version)
    if found is None or current.messages[: len(found.messages)] != found.messages:
        return None
    return len(found.messages)
