"""The unit fake of the sidecar behaves as daprd's state.redis does where we rely on it."""

from __future__ import annotations

import pytest

from autoglm.core.errors import ConflictError, UnavailableError
from tests.support.fakes import FakeSidecar

pytestmark = pytest.mark.unit


def test_ttl_expires_on_the_fake_clock() -> None:
    fake = FakeSidecar()
    fake.save_state("k", 1, ttl_s=10)
    fake.advance(9.9)
    assert fake.get_state("k") is not None
    fake.advance(0.1)
    assert fake.get_state("k") is None


def test_a_write_without_ttl_makes_the_key_persistent() -> None:
    fake = FakeSidecar()
    fake.save_state("k", 1, ttl_s=1)
    fake.save_state("k", 2)
    fake.advance(5)
    entry = fake.get_state("k")
    assert entry is not None and entry.value == 2


def test_delete_with_a_stale_etag_is_a_conflict() -> None:
    fake = FakeSidecar()
    fake.save_state("k", 1, create_only=True)
    entry = fake.get_state("k")
    assert entry is not None
    fake.save_state("k", 2, etag=entry.etag)
    with pytest.raises(ConflictError):
        fake.delete_state("k", etag=entry.etag)
    fresh = fake.get_state("k")
    assert fresh is not None
    fake.delete_state("k", etag=fresh.etag)
    assert fake.get_state("k") is None


def test_first_write_key_refuses_un_etagged_writes() -> None:
    fake = FakeSidecar()
    fake.save_state("k", 1, create_only=True)
    with pytest.raises(UnavailableError):
        fake.save_state("k", 2)


def test_a_store_outage_fails_reads_writes_and_deletes() -> None:
    fake = FakeSidecar()
    fake.save_state("k", 1)
    fake.fail_state = UnavailableError("Dapr sidecar is not reachable")
    for call in (lambda: fake.get_state("k"), lambda: fake.save_state("k", 2)):
        with pytest.raises(UnavailableError):
            call()
    with pytest.raises(UnavailableError):
        fake.delete_state("k")
    fake.fail_state = None
    entry = fake.get_state("k")
    assert entry is not None and entry.value == 1
