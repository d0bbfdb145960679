"""Optimistic versions of session histories: accept, duplicate, merge, conflict."""

from __future__ import annotations

import pytest

from autoglm.archiver.snapshots import SessionState
from autoglm.archiver.versions import reconcile
from autoglm.core.errors import ConflictError
from autoglm.core.schemas import ChatMessage, SnapshotEvent


def msgs(*contents: str) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(role="user", content=c) for c in contents)


def ev(version: int, *contents: str) -> SnapshotEvent:
    return SnapshotEvent(
        tenant="t", session_id="s", version=version, messages=list(msgs(*contents))
    )


def no_base(_v: int) -> SessionState | None:
    return None


def test_first_and_newer_versions_are_accepted_with_lineage() -> None:
    first = reconcile(None, ev(1, "a"), no_base)
    assert first.kind == "accepted" and first.state.version == 1
    second = reconcile(first.state, ev(2, "a", "b"), no_base)
    assert second.kind == "accepted" and second.state.lineage == {1: 1}


def test_redelivery_and_older_prefix_are_duplicates() -> None:
    current = reconcile(None, ev(3, "a", "b", "c"), no_base).state
    assert reconcile(current, ev(3, "a", "b", "c"), no_base).kind == "duplicate"
    assert reconcile(current, ev(2, "a", "b"), no_base).kind == "duplicate"


def test_stale_append_is_merged_and_recorded() -> None:
    v1 = reconcile(None, ev(1, "a"), no_base).state
    v2 = reconcile(v1, ev(2, "a", "mine"), no_base).state
    merged = reconcile(v2, ev(2, "a", "theirs"), no_base)
    assert merged.kind == "merged"
    assert merged.state.version == 3
    assert [m.content for m in merged.state.messages] == ["a", "mine", "theirs"]
    assert merged.state.merged_from == {
        "event_version": 2,
        "base_version": 1,
        "appended": 1,
        "into_version": 2,
    }
    # The same stale event redelivered merges nothing twice.
    assert reconcile(merged.state, ev(2, "a", "theirs"), no_base).kind == "duplicate"


def test_base_found_on_disk_when_not_in_lineage() -> None:
    current = SessionState("t", "s", 5, msgs("a", "b", "c"))
    base = SessionState("t", "s", 4, msgs("a", "b"))
    out = reconcile(current, ev(5, "a", "b", "x"), lambda v: base if v == 4 else None)
    assert out.kind == "merged" and [m.content for m in out.state.messages][-1] == "x"


def test_edit_of_history_is_refused_with_current_version() -> None:
    v1 = reconcile(None, ev(1, "a"), no_base).state
    v2 = reconcile(v1, ev(2, "a", "b"), no_base).state
    with pytest.raises(ConflictError) as err:
        reconcile(v2, ev(2, "rewritten", "b"), no_base)
    assert err.value.details == {"current_version": 2}
    assert err.value.status == 409


def test_unknown_base_is_refused() -> None:
    current = SessionState("t", "s", 5, msgs("a", "b"))
    with pytest.raises(ConflictError):
        reconcile(current, ev(5, "a", "z"), no_base)


def test_conflict_details_cross_the_sidecar() -> None:
    from autoglm.core.errors import AutoGLMError

    exc = ConflictError("stale", details={"current_version": 7})
    back = AutoGLMError.from_payload(exc.to_payload())
    assert isinstance(back, ConflictError) and back.details == {"current_version": 7}
