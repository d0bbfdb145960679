"""What the session and response stores share: tenant-scoped records in the state store
that are archived as snapshots, restored from the archiver when the store lost them, and
deleted by publishing the deletion before writing a tombstone.

Keys are ``{kind}:{tenant}:{id}``; an id that is not a ``SafeId`` names no record (404
without a lookup), so no id can reach another tenant's key or another daprd route.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from autoglm.core.archive_protocol import RestoreReply, RestoreRequest
from autoglm.core.contracts import ARCHIVER, RESTORE, SESSION_SNAPSHOTS, MeshClient
from autoglm.core.errors import AutoGLMError, ConflictError, NotFoundError
from autoglm.core.schemas import SnapshotEvent, is_safe_id
from autoglm.core.sidecar import SidecarAPI, StateEntry

log = logging.getLogger(__name__)

#: Written in place of a deleted record so a read does not resurrect it from the archive.
TOMBSTONE: dict[str, Any] = {"deleted": True}


def known_id(value: str, kind: str, param: str) -> str:
    """``value`` if it can name a record (a ``SafeId``), else a 404 naming ``param``:
    no record can have such an id."""
    if not is_safe_id(value):
        raise NotFoundError(f"{kind} {value!r} not found", param=param)
    return value


@dataclass
class ArchivedRecords:
    """Base of the stores; ``kind`` is the key prefix and the word in messages."""

    kind: ClassVar[str]
    #: The request field (or path parameter) that names a record, for 404s.
    param: ClassVar[str]

    sidecar: SidecarAPI
    archiver_app_id: str = ARCHIVER
    mesh: MeshClient = field(init=False)

    def __post_init__(self) -> None:
        self.mesh = MeshClient(self.sidecar, {ARCHIVER: self.archiver_app_id})

    def key(self, tenant: str, rid: str) -> str:
        return f"{self.kind}:{tenant}:{rid}"

    def not_found(self, rid: str) -> NotFoundError:
        return NotFoundError(f"{self.kind} {rid!r} not found", param=self.param)

    def conflict(self, rid: str, what: str) -> ConflictError:
        return ConflictError(
            f"{self.kind} {rid!r} was changed by another request{what}",
            code=f"{self.kind}_conflict",
        )

    def read(self, tenant: str, rid: str) -> StateEntry:
        """The live entry (not a tombstone), restored from the archive when the store
        lost it (``_from_archive`` builds the record from the archiver's reply)."""
        key = self.key(tenant, known_id(rid, self.kind, self.param))
        entry = self.sidecar.get_state(key)
        if entry is None:
            restored = self._from_archive(tenant, rid, self.archived(tenant, rid))
            # ConflictError: another replica restored it first; read theirs below.
            with contextlib.suppress(ConflictError):
                self.sidecar.save_state(key, restored, create_only=True)
            entry = self.sidecar.get_state(key)
        if entry is None or entry.value == TOMBSTONE:
            raise self.not_found(rid)
        return entry

    def archived(self, tenant: str, rid: str, version: int | None = None) -> RestoreReply:
        """The archiver's newest (or chosen) snapshot of the record; 404 if none."""
        request = RestoreRequest(tenant=tenant, session_id=rid, version=version)
        try:
            return self.mesh.call(RESTORE, request)
        except NotFoundError:
            raise self.not_found(rid) from None

    def _from_archive(self, tenant: str, rid: str, reply: RestoreReply) -> dict[str, Any]:
        raise NotImplementedError

    def save(
        self, tenant: str, rid: str, value: dict[str, Any], etag: str | None, what: str = "; retry"
    ) -> None:
        """Write over the entry read with ``etag`` (a 409 ``{kind}_conflict`` when
        somebody changed it since; ``what`` ends its message)."""
        try:
            self.sidecar.save_state(self.key(tenant, rid), value, etag=etag)
        except ConflictError:
            raise self.conflict(rid, what) from None

    def delete_record(
        self, tenant: str, rid: str, version: int, etag: str | None, what: str = "; retry"
    ) -> None:
        """Publish the deletion BEFORE writing the tombstone, and let a publish failure
        fail the request (503) with nothing written. A crash or error between the two
        leaves the record live in the state store, the client without a success, and a
        retried DELETE that publishes again (the archiver's deletion is idempotent;
        later changes have higher versions, so the archive takes them again). The other
        order is unsafe: a tombstone whose deletion never reached the archiver makes
        every retry 404 here, and once the state store is lost the archive restores the
        "deleted" record. The ETag is required, not just safe: state.redis refuses to
        overwrite a key created first-write without one."""
        event = SnapshotEvent(
            tenant=tenant, session_id=rid, version=version, messages=[], deleted=True
        )
        self.mesh.publish(SESSION_SNAPSHOTS, event)
        self.save(tenant, rid, TOMBSTONE, etag, what)

    def publish_snapshot(self, event: SnapshotEvent) -> None:
        if not event.flush:
            # After the reply (issue 15): the record is already durable in the state
            # store, and a snapshot that never arrives is covered by the next change,
            # which carries the record whole.
            self.mesh.publish(SESSION_SNAPSHOTS, event, soon=True)
            return
        try:
            self.mesh.publish(SESSION_SNAPSHOTS, event)
        except AutoGLMError as exc:
            # The record itself is durable in the state store; the next change carries
            # it whole to the archive again.
            log.warning(f"{self.kind} snapshot not published", extra={"reason": exc.message})
