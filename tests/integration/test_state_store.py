"""Our state-store code against real daprd + Redis: ETags make races visible, not lossy."""

from __future__ import annotations

import uuid

import pytest

from autoglm.core.errors import AutoGLMError, ConflictError, UnavailableError
from autoglm.core.sidecar import Sidecar


def _key() -> str:
    return f"session:t1:{uuid.uuid4().hex}"


def test_round_trip_with_etag(sidecar: Sidecar) -> None:
    key = _key()
    assert sidecar.get_state(key) is None
    sidecar.save_state(key, {"messages": [1, 2]}, create_only=True)
    entry = sidecar.get_state(key)
    assert entry is not None and entry.value == {"messages": [1, 2]} and entry.etag


def test_stale_etag_is_a_conflict_and_keeps_the_winner(sidecar: Sidecar) -> None:
    key = _key()
    sidecar.save_state(key, {"v": 0}, create_only=True)
    first = sidecar.get_state(key)
    assert first is not None
    sidecar.save_state(key, {"v": "winner"}, etag=first.etag)
    with pytest.raises(ConflictError) as lost:
        sidecar.save_state(key, {"v": "loser"}, etag=first.etag)
    assert lost.value.code == "etag_mismatch"  # daprd's ERR_STATE_SAVE ETag text, parsed
    after = sidecar.get_state(key)
    assert after is not None and after.value == {"v": "winner"}


def test_create_only_refuses_existing_key(sidecar: Sidecar) -> None:
    key = _key()
    sidecar.save_state(key, {"v": 1}, create_only=True)
    with pytest.raises(ConflictError) as exists:
        sidecar.save_state(key, {"v": 2}, create_only=True)
    # Pins the daprd/state.redis error text ``Sidecar.save_state`` recognises.
    assert exists.value.code == "already_exists"


def test_first_write_key_refuses_writes_without_its_etag(sidecar: Sidecar) -> None:
    """What the unit fake models: once written first-write, state.redis refuses a plain
    (un-ETagged) write to the key, so renewals must carry the ETag."""
    key = _key()
    sidecar.save_state(key, {"v": 1}, create_only=True)
    with pytest.raises(AutoGLMError):
        sidecar.save_state(key, {"v": 2})
    entry = sidecar.get_state(key)
    assert entry is not None and entry.value == {"v": 1}
    sidecar.save_state(key, {"v": 3}, etag=entry.etag)


def test_invoking_an_app_that_is_not_running_is_upstream_unavailable(sidecar: Sidecar) -> None:
    """Pins the daprd error code (ERR_DIRECT_INVOKE) mapped to a 503 for clients."""
    with pytest.raises(UnavailableError) as down:
        sidecar.invoke(f"absent-{uuid.uuid4().hex[:8]}", "generate", {}, timeout=30)
    assert down.value.code == "upstream_unavailable"


def test_delete_with_stale_etag_is_refused(sidecar: Sidecar) -> None:
    key = _key()
    sidecar.save_state(key, {"v": 1}, create_only=True)
    old = sidecar.get_state(key)
    assert old is not None
    sidecar.save_state(key, {"v": 2}, etag=old.etag)
    with pytest.raises(ConflictError):
        sidecar.delete_state(key, etag=old.etag)
    current = sidecar.get_state(key)
    assert current is not None
    sidecar.delete_state(key, etag=current.etag)
    assert sidecar.get_state(key) is None
