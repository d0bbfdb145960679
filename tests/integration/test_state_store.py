"""Our state-store code against real daprd + Redis: ETags make races visible, not lossy."""

from __future__ import annotations

import uuid

import pytest

from autoglm.core.errors import ConflictError
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
    with pytest.raises(ConflictError):
        sidecar.save_state(key, {"v": "loser"}, etag=first.etag)
    after = sidecar.get_state(key)
    assert after is not None and after.value == {"v": "winner"}


def test_create_only_refuses_existing_key(sidecar: Sidecar) -> None:
    key = _key()
    sidecar.save_state(key, {"v": 1}, create_only=True)
    with pytest.raises(ConflictError):
        sidecar.save_state(key, {"v": 2}, create_only=True)


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
