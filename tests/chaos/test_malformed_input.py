"""Hostile and broken input against the gateway: always a clear 4xx, never a 5xx."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.chaos.conftest import MeshFactory, chat_body
from tests.support.mesh import OwnMesh

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def mesh(own_mesh: MeshFactory) -> OwnMesh:
    return own_mesh()


@pytest.fixture(scope="module")
def client(mesh: OwnMesh) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=mesh.gateway_url, headers=mesh.headers(), timeout=60) as c:
        yield c


def _clear_4xx(resp: httpx.Response) -> None:
    assert 400 <= resp.status_code < 500, (resp.status_code, resp.text[:300])
    error = resp.json()["error"]
    assert error["message"] and error["type"]


@pytest.mark.parametrize(
    "raw",
    [
        b"{not json",
        b"",
        b"[]",
        b"null",
        b'{"model": "demo-glm", "messages": "hello"}',
        b'{"model": 7, "messages": [{"role": "user", "content": "x"}]}',
        b'{"model": "demo-glm", "messages": [{"role": "wizard", "content": "x"}]}',
        b'{"model": "demo-glm", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        b'{"model": "demo-glm", "messages": [{"role": "user", "content": "x"}], "n": "two"}',
        b'{"model": "demo-glm", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
        b'{"model": "demo-glm", "messages": [{"role": "user", "content": "x"}], '
        b'"temperature": 1e999}',
    ],
    ids=lambda raw: raw[:40].decode(errors="replace"),
)
def test_invalid_json_and_wrong_types_are_4xx(client: httpx.Client, raw: bytes) -> None:
    """Proves: unparsable JSON, JSON of the wrong shape, wrong field types, out-of-range
    numbers and invalid UTF-8 are each answered with an OpenAI-shaped 4xx error."""
    _clear_4xx(client.post(CHAT, content=raw, headers={"content-type": "application/json"}))


def test_huge_body_is_refused(client: httpx.Client) -> None:
    """Proves: a body over the gateway's limit (1 MiB default) with a declared length is
    refused with 413, and so is a chunked one that never declares its length (not cut
    at the limit and then misread as invalid JSON)."""
    big = (
        b'{"model": "demo-glm", "messages": [{"role": "user", "content": "'
        + b"a" * (8 * 2**20)
        + b'"}]}'
    )
    resp = client.post(CHAT, content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text[:200]

    def chunks() -> Iterator[bytes]:
        yield big[: 2**20]
        yield big[2**20 :]

    resp = client.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413, resp.text[:200]
    assert resp.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize(
    "content",
    [
        "e\u0301\u200d\U0001f469\u200d\U0001f4bb",  # combining mark, ZWJ emoji sequence
        "\u202eevil\u202c right-to-left override",
        "\x00\x01\x07\x1b[31m control characters \x7f",
        "\ud800 lone surrogate",
        "\ufeff" * 100,
        "A" * 5000,
    ],
    ids=["combining-zwj", "bidi", "control", "surrogate", "bom", "long"],
)
def test_unicode_edge_cases_never_5xx(client: httpx.Client, content: str) -> None:
    """Proves: odd but valid (or invalid) Unicode and control characters in a prompt give
    a normal answer or a clear 4xx, never a 5xx."""
    # json.dumps escapes to ASCII, so even a lone surrogate travels as "\ud800".
    raw = json.dumps(chat_body(content, max_tokens=2)).encode()
    resp = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert resp.status_code == 200 or 400 <= resp.status_code < 500, resp.text[:300]


@pytest.mark.parametrize(
    "name",
    [
        "../../etc/passwd",
        "..\\..\\boot.ini",
        "/abs/path.txt",
        "a/../../b.txt",
        "nul\x00.txt",
        "con\n.txt",
        ".",
        "..",
        "%2e%2e%2fsecret",
    ],
)
def test_path_traversal_in_attachment_names(mesh: OwnMesh, client: httpx.Client, name: str) -> None:
    """Proves: an attachment name that tries to leave the tenant's folder is refused with
    a 4xx (or stored under a safe name), and nothing is written outside the archive."""
    data = b"hello"
    resp = client.post(
        "/v1/attachments",
        json={
            "filename": name,
            "mime_type": "text/plain",
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    )
    assert resp.status_code < 500, resp.text[:300]
    if resp.status_code == 201:
        upload = resp.json()["id"]
        put = client.put(f"/v1/attachments/{upload}", params={"offset": 0}, content=data)
        assert put.status_code < 500, put.text[:300]
    else:
        _clear_4xx(resp)
    root = mesh.archive_root.resolve()
    outside = [p for p in mesh.backing.workdir.rglob("*") if p.name in {"passwd", "boot.ini"}]
    assert not outside and not (root.parent / "b.txt").exists()


def test_schemathesis_finds_no_server_error(mesh: OwnMesh, tmp_path: Path) -> None:
    """Proves: schemathesis, generating requests from the gateway's own /openapi.json
    with a valid token (examples + fuzzing, bounded), gets no 5xx and no response that
    breaks the documented schema's status codes; afterwards the gateway is still ready."""
    token = mesh.headers()["Authorization"]
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "run",
            f"{mesh.gateway_url}/openapi.json",
            "--header",
            f"Authorization: {token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "8",
            "--phases",
            "examples,fuzzing",
            "--request-timeout",
            "30",
            "--seed",
            "1",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert httpx.get(f"{mesh.gateway_url}/readyz", timeout=10).status_code == 200
