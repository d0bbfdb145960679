"""Resumable attachment uploads with checkpoints in the Dapr state store.

``start`` declares a file and creates its checkpoint ``upload:{tenant}:{id}`` (offset 0,
version 1); each ``put`` must name the checkpoint's offset (optimistic lock), appends to
``{root}/uploads/...{id}.part`` with fsync and only then advances the checkpoint with its
ETag. The final chunk is verified (SHA-256, type, archive safety) and the object moved in
one rename to ``{root}/attachments/{category}/{md5(tenant)[:2]}/{tenant}/{id}/`` (``data``
and ``metadata.json``); a failed verification discards the upload.

Writers of one upload are serialised by an exclusive ``flock`` on its part file, so two
concurrent calls (the gRPC callback threads) cannot interleave chunks.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, get_args

from pydantic import ConfigDict

from autoglm.archiver import filetypes, paths
from autoglm.archiver.atomic import atomic_dir, write_at, write_file
from autoglm.archiver.settings import AttachmentPolicy, Category
from autoglm.core.archive_protocol import (
    ATTACHMENT_ID,
    AttachmentGetReply,
    AttachmentGetRequest,
    AttachmentInfo,
    AttachmentPutReply,
    AttachmentPutRequest,
    AttachmentStartRequest,
    b64decode,
    b64encode,
)
from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UnprocessableError,
)
from autoglm.core.sidecar import SidecarAPI, StateEntry

_ID = re.compile(ATTACHMENT_ID)
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


class Checkpoint(AttachmentInfo):
    """An upload's state in the state store (and its object's ``metadata.json``)."""

    # Its object's ``metadata.json`` also holds ``stored``: read past such fields.
    model_config = ConfigDict(extra="ignore")

    tenant: str
    created: float
    offset: int = 0
    version: int = 1
    complete: bool = False


def checkpoint_key(tenant: str, attachment_id: str) -> str:
    return f"upload:{tenant}:{attachment_id}"


def check_filename(name: str) -> str:
    """A display name only (never a path component), still refused if it looks like a
    path: separators, control characters, ``.`` and ``..``."""
    if _BAD_NAME.search(name) or name.strip() in ("", ".", ".."):
        raise InvalidRequestError(
            f"filename {name!r} must be a plain file name (no path, no control characters)",
            param="filename",
        )
    return name


class AttachmentStore:
    def __init__(self, root: Path, sidecar: SidecarAPI, policy: AttachmentPolicy) -> None:
        self.root = root
        self.sidecar = sidecar
        self.policy = policy

    def _part(self, tenant: str, attachment_id: str) -> Path:
        return paths.inside(
            self.root / "uploads", paths.shard(tenant), tenant, f"{attachment_id}.part"
        )

    def _final(self, cp: Checkpoint) -> Path:
        return paths.attachment_dir(self.root, cp.category, cp.tenant, cp.id)

    def _checkpoint(self, tenant: str, attachment_id: str) -> tuple[Checkpoint, str | None]:
        if not _ID.fullmatch(attachment_id):
            raise self._not_found(attachment_id)
        entry: StateEntry | None = self.sidecar.get_state(checkpoint_key(tenant, attachment_id))
        if entry is None:
            raise self._not_found(attachment_id)
        cp = Checkpoint.model_validate(entry.value)
        if cp.tenant != tenant:  # defence in depth: the key is tenant-scoped already
            raise self._not_found(attachment_id)
        return cp, entry.etag

    @staticmethod
    def _not_found(attachment_id: str) -> NotFoundError:
        return NotFoundError(f"attachment {attachment_id!r} not found", param="id")

    # -- start -------------------------------------------------------------------------
    def start(self, req: AttachmentStartRequest) -> AttachmentInfo:
        paths.component(req.tenant, "tenant")
        check_filename(req.filename)
        if req.size > self.policy.max_bytes:
            raise PayloadTooLargeError(
                f"size {req.size} exceeds the limit of {self.policy.max_bytes} bytes",
                param="size",
            )
        category = filetypes.category_of(req.mime_type, self.policy)
        cp = Checkpoint(
            tenant=req.tenant,
            id=f"att-{uuid.uuid4().hex}",
            filename=req.filename,
            mime_type=filetypes.normalise(req.mime_type),
            size=req.size,
            sha256=req.sha256,
            category=category,
            created=time.time(),
        )
        self.sidecar.save_state(
            checkpoint_key(cp.tenant, cp.id), cp.model_dump(mode="json"), create_only=True
        )
        return self._info(cp)

    @staticmethod
    def _info(cp: Checkpoint) -> AttachmentInfo:
        return AttachmentInfo(**cp.model_dump(exclude={"tenant", "created"}))

    # -- put ---------------------------------------------------------------------------
    def put(self, req: AttachmentPutRequest) -> AttachmentPutReply:
        data = b64decode(req.data)
        if len(data) > self.policy.max_chunk_bytes:
            raise PayloadTooLargeError(
                f"chunk of {len(data)} bytes exceeds {self.policy.max_chunk_bytes}",
                param="data",
            )
        self._checkpoint(req.tenant, req.id)  # 404 before touching the disk
        with self._locked_part(req.tenant, req.id) as part:
            # Re-read under the lock: another writer may have advanced the checkpoint.
            cp, etag = self._checkpoint(req.tenant, req.id)
            if not cp.complete and self._final(cp).is_dir():
                # Crashed after the object was moved in but before the checkpoint said so.
                cp, etag = self._save(cp.model_copy(update={"offset": cp.size}), etag, True)
            if cp.complete:
                # The lock created an empty part file; the object itself lives elsewhere.
                self._part(req.tenant, req.id).unlink(missing_ok=True)
                if req.offset == cp.size and not data:
                    return self._put_reply(cp)
                raise self._offset_conflict(cp, "the upload is already complete")
            if req.offset != cp.offset:
                raise self._offset_conflict(cp, f"chunk sent at offset {req.offset}")
            end = req.offset + len(data)
            if end > cp.size:
                raise PayloadTooLargeError(
                    f"chunk ends at byte {end}, past the declared size {cp.size}", param="data"
                )
            write_at(part, req.offset, data)
            if end < cp.size:
                cp, _ = self._save(cp.model_copy(update={"offset": end}), etag, False)
                return self._put_reply(cp)
            self._finish(cp, etag, part)
            cp, _ = self._save(cp.model_copy(update={"offset": end}), etag, True)
            return self._put_reply(cp)

    @contextmanager
    def _locked_part(self, tenant: str, attachment_id: str) -> Iterator[BinaryIO]:
        path = self._part(tenant, attachment_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        with os.fdopen(fd, "r+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield fh

    def _save(
        self, cp: Checkpoint, etag: str | None, complete: bool
    ) -> tuple[Checkpoint, str | None]:
        cp = cp.model_copy(update={"version": cp.version + 1, "complete": complete})
        try:
            self.sidecar.save_state(
                checkpoint_key(cp.tenant, cp.id), cp.model_dump(mode="json"), etag=etag
            )
        except ConflictError:
            current, _ = self._checkpoint(cp.tenant, cp.id)
            raise self._offset_conflict(current, "the upload was changed concurrently") from None
        return cp, None

    @staticmethod
    def _offset_conflict(cp: Checkpoint, why: str) -> ConflictError:
        return ConflictError(
            f"{why}; resume upload {cp.id!r} at offset {cp.offset}",
            code="offset_mismatch",
            param="offset",
            details={"expected_offset": cp.offset, "version": cp.version},
        )

    @staticmethod
    def _put_reply(cp: Checkpoint) -> AttachmentPutReply:
        return AttachmentPutReply(
            id=cp.id,
            offset=cp.offset,
            complete=cp.complete,
            version=cp.version,
            sha256=cp.sha256 if cp.complete else None,
        )

    def _finish(self, cp: Checkpoint, etag: str | None, part: BinaryIO) -> None:
        """Verify the whole object; move it into place, or discard the upload (any 4xx)."""
        part_path = self._part(cp.tenant, cp.id)
        digest = hashlib.sha256()
        part.seek(0)
        while chunk := part.read(1 << 20):
            digest.update(chunk)
        try:
            if digest.hexdigest() != cp.sha256:
                raise UnprocessableError(
                    f"SHA-256 of the upload is {digest.hexdigest()}, declared {cp.sha256}; "
                    "the upload is discarded",
                    code="checksum_mismatch",
                    param="sha256",
                )
            filetypes.verify(part_path, cp.mime_type, self.policy)
        except AutoGLMError as exc:
            if exc.status >= 500:
                raise  # our failure, not the object's: keep the upload so a retry can finish
            # A refused object stays refused: keeping it would fail every retry the same way.
            part_path.unlink(missing_ok=True)
            self.sidecar.delete_state(checkpoint_key(cp.tenant, cp.id))
            raise
        metadata = cp.model_dump(mode="json") | {"complete": True, "stored": time.time()}
        with atomic_dir(self._final(cp)) as tmp:
            os.rename(part_path, tmp / "data")
            write_file(tmp / "metadata.json", json.dumps(metadata, indent=2).encode())

    # -- get ---------------------------------------------------------------------------
    def get(self, req: AttachmentGetRequest) -> AttachmentGetReply:
        """One range of a finished object. The read from offset 0, which every download
        starts with, first checks the whole file against its SHA-256."""
        paths.component(req.tenant, "tenant")
        try:
            cp, _ = self._checkpoint(req.tenant, req.id)
        except NotFoundError:
            cp = self._from_disk(req.tenant, req.id)
        info = self._info(cp).model_dump(exclude={"offset"})
        if not cp.complete:
            return AttachmentGetReply(**info, offset=req.offset, data="")
        if req.offset > cp.size:
            raise InvalidRequestError(
                f"offset {req.offset} is past the end of the object ({cp.size} bytes)",
                param="offset",
            )
        with (self._final(cp) / "data").open("rb") as f:
            if req.offset == 0 and hashlib.file_digest(f, "sha256").hexdigest() != cp.sha256:
                raise InternalError(
                    f"attachment {cp.id!r} failed its checksum", code="corrupt_object"
                )
            f.seek(req.offset)
            data = f.read(req.length)
        return AttachmentGetReply(**info, offset=req.offset, data=b64encode(data))

    def _from_disk(self, tenant: str, attachment_id: str) -> Checkpoint:
        """The object's own metadata, when the state store lost the checkpoint."""
        if _ID.fullmatch(attachment_id):
            # Every category, not only those allowed now: the policy may have changed.
            for category in get_args(Category):
                meta = paths.attachment_dir(self.root, category, tenant, attachment_id)
                try:
                    return Checkpoint.model_validate_json((meta / "metadata.json").read_bytes())
                except FileNotFoundError:
                    continue
        raise self._not_found(attachment_id)
