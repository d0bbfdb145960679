"""Resumable uploads, type detection, traversal guards and archive bombs."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from autoglm.archiver import filetypes
from autoglm.archiver.attachments import AttachmentStore, check_filename
from autoglm.archiver.paths import attachment_dir, session_dir
from autoglm.archiver.settings import AttachmentPolicy
from autoglm.core.archive_protocol import (
    AttachmentGetRequest,
    AttachmentPutRequest,
    AttachmentStartRequest,
)
from autoglm.core.errors import (
    AutoGLMError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PayloadTooLargeError,
    UnavailableError,
    UnprocessableError,
)
from tests.support.fakes import FakeSidecar

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


def make(tmp_path: Path, **policy: Any) -> tuple[AttachmentStore, FakeSidecar]:
    sidecar = FakeSidecar()
    return AttachmentStore(tmp_path, sidecar, AttachmentPolicy(**policy)), sidecar


def start(store: AttachmentStore, data: bytes, mime: str = "image/png", **kw: Any) -> str:
    req = AttachmentStartRequest(
        tenant=kw.get("tenant", "acme"),
        filename=kw.get("filename", "pic.png"),
        mime_type=mime,
        size=len(data),
        sha256=kw.get("sha256", hashlib.sha256(data).hexdigest()),
    )
    return store.start(req).id


def put(store: AttachmentStore, aid: str, offset: int, chunk: bytes, tenant: str = "acme") -> Any:
    return store.put(
        AttachmentPutRequest(
            tenant=tenant, id=aid, offset=offset, data=base64.b64encode(chunk).decode()
        )
    )


def test_upload_in_chunks_resume_and_fetch(tmp_path: Path) -> None:
    store, sidecar = make(tmp_path)
    aid = start(store, PNG)
    assert json.loads(json.dumps(sidecar.state[f"upload:acme:{aid}"][0]))["offset"] == 0
    first = put(store, aid, 0, PNG[:1000])
    assert (first.offset, first.complete, first.version) == (1000, False, 2)
    # The client lost the reply and resends from 0: refused with where to resume.
    with pytest.raises(ConflictError) as err:
        put(store, aid, 0, PNG[:1000])
    assert err.value.details["expected_offset"] == 1000 and "1000" in err.value.message
    done = put(store, aid, 1000, PNG[1000:])
    assert (
        done.complete and done.offset == len(PNG) and done.sha256 == hashlib.sha256(PNG).hexdigest()
    )
    got = store.get(AttachmentGetRequest(tenant="acme", id=aid))
    assert base64.b64decode(got.data) == PNG and got.category == "images" and got.complete
    assert (attachment_dir(tmp_path, "images", "acme", aid) / "data").read_bytes() == PNG
    assert not list((tmp_path / "uploads").rglob("*.part"))


def test_get_reads_ranges_and_verifies_the_whole_file_from_offset_zero(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    aid = start(store, PNG)
    put(store, aid, 0, PNG)

    def read(offset: int, length: int) -> bytes:
        got = store.get(AttachmentGetRequest(tenant="acme", id=aid, offset=offset, length=length))
        assert got.offset == offset and got.size == len(PNG)
        return base64.b64decode(got.data)

    assert b"".join(read(o, 700) for o in range(0, len(PNG), 700)) == PNG
    assert read(len(PNG), 10) == b""
    with pytest.raises(InvalidRequestError, match="past the end") as err:
        read(len(PNG) + 1, 10)
    assert err.value.param == "offset"
    # A flipped byte on disk: the download (which starts at 0) is refused, not served.
    data = attachment_dir(tmp_path, "images", "acme", aid) / "data"
    data.write_bytes(PNG[:-1] + b"\x00")
    with pytest.raises(AutoGLMError, match="checksum"):
        read(0, 700)
    with pytest.raises(ValueError, match="length"):
        AttachmentGetRequest(tenant="acme", id=aid, length=2**20 + 1)


def test_crashed_chunk_past_checkpoint_is_overwritten(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    aid = start(store, PNG)
    put(store, aid, 0, PNG[:100])
    part = next((tmp_path / "uploads").rglob("*.part"))
    part.write_bytes(PNG[:100] + b"garbage from a crashed attempt")
    put(store, aid, 100, PNG[100:])
    assert base64.b64decode(store.get(AttachmentGetRequest(tenant="acme", id=aid)).data) == PNG


def test_checksum_mismatch_discards_upload(tmp_path: Path) -> None:
    store, sidecar = make(tmp_path)
    aid = start(store, PNG, sha256="0" * 64)
    with pytest.raises(UnprocessableError, match="SHA-256"):
        put(store, aid, 0, PNG)
    assert f"upload:acme:{aid}" not in sidecar.state
    assert not list(tmp_path.rglob("*.part"))
    with pytest.raises(NotFoundError):
        store.get(AttachmentGetRequest(tenant="acme", id=aid))


def test_declared_type_must_match_magic(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    fake_pdf = PNG
    aid = start(store, fake_pdf, mime="application/pdf", filename="x.pdf")
    with pytest.raises(UnprocessableError, match="does not match"):
        put(store, aid, 0, fake_pdf)
    elf = b"\x7fELF" + b"a" * 100
    aid = start(store, elf, mime="text/plain", filename="x.txt")
    with pytest.raises(UnprocessableError):
        put(store, aid, 0, elf)


@pytest.mark.parametrize(
    ("mime", "content"),
    [
        ("text/plain; charset=utf-8", "héllo wörld\n".encode()),
        ("application/pdf", b"%PDF-1.7\n..."),
        ("image/jpeg", b"\xff\xd8\xff\xe0" + b"\x00" * 20),
        ("application/json", b'{"a": 1}'),
    ],
)
def test_allowed_types_pass(tmp_path: Path, mime: str, content: bytes) -> None:
    store, _ = make(tmp_path)
    aid = start(store, content, mime=mime, filename="f")
    assert put(store, aid, 0, content).complete


def test_type_outside_allow_list_is_refused_at_start(tmp_path: Path) -> None:
    store, _ = make(tmp_path, allowed_categories=("text",))
    with pytest.raises(UnprocessableError, match="not allowed"):
        start(store, PNG)
    with pytest.raises(UnprocessableError, match="not allowed"):
        start(store, b"MZ", mime="application/x-msdownload")


def test_oversize_upload_and_chunk_are_refused(tmp_path: Path) -> None:
    store, _ = make(tmp_path, max_bytes=100, max_chunk_bytes=10)
    with pytest.raises(PayloadTooLargeError):
        start(store, PNG)
    aid = start(store, b"a" * 20, mime="text/plain", filename="a.txt")
    with pytest.raises(PayloadTooLargeError):
        put(store, aid, 0, b"a" * 11)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "..", "a\\b", "x\x00y", "."])
def test_traversal_filenames_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequestError):
        check_filename(name)


@pytest.mark.parametrize("bad", ["..", ".", "../x", "a/b", ".hidden", ""])
def test_traversal_ids_never_build_paths(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidRequestError):
        session_dir(tmp_path, "acme", bad)
    with pytest.raises(InvalidRequestError):
        session_dir(tmp_path, bad, "s1")


def test_other_tenant_and_bogus_ids_are_not_found(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    aid = start(store, PNG)
    put(store, aid, 0, PNG)
    for tenant, ident in (("evil", aid), ("acme", "../../etc"), ("acme", "att-" + "0" * 32)):
        with pytest.raises(NotFoundError):
            store.get(AttachmentGetRequest(tenant=tenant, id=ident))


def test_get_survives_a_lost_checkpoint(tmp_path: Path) -> None:
    store, sidecar = make(tmp_path)
    aid = start(store, PNG)
    put(store, aid, 0, PNG)
    sidecar.state.clear()  # Redis flushed
    assert base64.b64decode(store.get(AttachmentGetRequest(tenant="acme", id=aid)).data) == PNG


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_bomb_is_refused_without_extracting(tmp_path: Path) -> None:
    store, _ = make(tmp_path, archive_max_unpacked_bytes=1_000_000)
    bomb = _zip({"zeros.bin": b"\x00" * 5_000_000})
    aid = start(store, bomb, mime="application/zip", filename="b.zip")
    with pytest.raises(UnprocessableError, match="unpacks to more than"):
        put(store, aid, 0, bomb)
    assert not list(tmp_path.rglob("zeros.bin"))


def test_zip_with_traversal_member_is_refused(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    evil = _zip({"../../evil.sh": b"rm -rf /"})
    aid = start(store, evil, mime="application/zip", filename="e.zip")
    with pytest.raises(UnprocessableError, match="escapes"):
        put(store, aid, 0, evil)


def test_tar_gz_with_too_many_entries_is_refused(tmp_path: Path) -> None:
    store, _ = make(tmp_path, archive_max_entries=3)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(5):
            info = tarfile.TarInfo(f"f{i}.txt")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    data = buf.getvalue()
    aid = start(store, data, mime="application/gzip", filename="a.tgz")
    with pytest.raises(UnprocessableError, match="entries"):
        put(store, aid, 0, data)


def test_safe_zip_is_accepted(tmp_path: Path) -> None:
    store, _ = make(tmp_path)
    ok = _zip({"docs/readme.txt": b"hello" * 100})
    aid = start(store, ok, mime="application/zip", filename="ok.zip")
    assert put(store, aid, 0, ok).complete


def test_errors_keep_their_status_over_the_wire(tmp_path: Path) -> None:
    exc = ConflictError("resume at 5", details={"expected_offset": 5})
    back = AutoGLMError.from_payload(json.loads(json.dumps(exc.to_payload())))
    assert back.status == 409 and back.details["expected_offset"] == 5


def _patched_zip(*, flag: int = 0, method: int | None = None) -> bytes:
    """A one-member zip whose general purpose flags / compression method are rewritten in
    both the local header and the central directory (what encrypting tools produce)."""
    raw = bytearray(_zip({"secret.txt": b"hello" * 100}))
    local, central = raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")
    for flags_at in (local + 6, central + 8):
        raw[flags_at] |= flag
        if method is not None:  # the method field follows the two flag bytes
            raw[flags_at + 2 : flags_at + 4] = method.to_bytes(2, "little")
    return bytes(raw)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (_patched_zip(flag=0x1), "'secret.txt' is encrypted"),
        (_patched_zip(method=99), r"unsupported zip feature.*method 99"),
    ],
    ids=["encrypted", "unknown-method"],
)
def test_unreadable_zip_is_refused_and_the_upload_discarded(
    tmp_path: Path, data: bytes, why: str
) -> None:
    store, sidecar = make(tmp_path)
    aid = start(store, data, mime="application/zip", filename="s.zip")
    with pytest.raises(UnprocessableError, match=why) as err:
        put(store, aid, 0, data)
    assert err.value.status == 422 and err.value.code == "unsafe_archive"
    # Nothing left to resume: a retry of the last chunk is a 404, not the same failure.
    assert f"upload:acme:{aid}" not in sidecar.state
    assert not list(tmp_path.rglob("*.part"))
    with pytest.raises(NotFoundError):
        put(store, aid, 0, data)


def test_zip_parser_errors_become_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever else zipfile raises on hostile bytes is a 422, not an escaped 500."""

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("password required")

    ok = _zip({"a.txt": b"x"})
    monkeypatch.setattr(zipfile.ZipFile, "open", boom)
    store, sidecar = make(tmp_path)
    aid = start(store, ok, mime="application/zip", filename="a.zip")
    with pytest.raises(UnprocessableError, match=r"cannot be inspected.*password required"):
        put(store, aid, 0, ok)
    assert f"upload:acme:{aid}" not in sidecar.state and not list(tmp_path.rglob("*.part"))


def test_server_side_failure_keeps_the_upload_for_a_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def flaky(*_: Any) -> None:
        calls.append("verify")
        if len(calls) == 1:
            raise UnavailableError("disk busy")

    monkeypatch.setattr(filetypes, "verify", flaky)
    store, sidecar = make(tmp_path)
    aid = start(store, PNG)
    with pytest.raises(UnavailableError):
        put(store, aid, 0, PNG)
    assert f"upload:acme:{aid}" in sidecar.state
    assert put(store, aid, 0, PNG).complete  # the retried last chunk finishes the upload


def test_any_refusal_of_the_finished_object_discards_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any) -> None:
        raise PayloadTooLargeError("unpacked too big for this tenant")

    monkeypatch.setattr(filetypes, "verify", refuse)
    store, sidecar = make(tmp_path)
    aid = start(store, PNG)
    with pytest.raises(PayloadTooLargeError):
        put(store, aid, 0, PNG)
    assert f"upload:acme:{aid}" not in sidecar.state and not list(tmp_path.rglob("*.part"))
