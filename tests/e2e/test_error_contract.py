"""Issue 10 item 12: the documented client of the invocation error contract works.

Errors from ``inference`` and ``archiver`` are replies (HTTP 200, ``{"error": ...}``), so
that caller errors never count toward daprd's circuit breaker; the README shows a
client that checks every reply. This runs that very code against a real daprd."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from dapr.clients import DaprClient
from dapr.conf import settings

from tests.e2e.conftest import Mesh

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_example() -> dict[str, Any]:
    text = README.read_text()
    start = text.index("**Errors are replies, not exceptions")
    code = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert code is not None, "the README's error contract has no client example"
    definitions = code.group(1).split("with DaprClient() as d:")[0]
    namespace: dict[str, Any] = {}
    exec(definitions, namespace)  # our own README
    return namespace


def test_the_readme_client_raises_on_error_replies(
    mesh: Mesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = _readme_example()
    invoke, mesh_error = example["invoke"], example["MeshError"]
    monkeypatch.setattr(settings, "DAPR_HTTP_PORT", mesh.gateway.ports.http)
    # What an app finds in its environment: its daprd's API token.
    monkeypatch.setattr(settings, "DAPR_API_TOKEN", mesh.gateway.dapr_headers["dapr-api-token"])
    with DaprClient(address=f"127.0.0.1:{mesh.gateway.ports.grpc}") as d:
        reply = invoke(d, "inference", "generate", {"prompt": "Hi", "sampling": {"max_tokens": 3}})
        assert isinstance(reply["text"], str)
        with pytest.raises(mesh_error) as info:
            invoke(d, "inference", "generate", {"model": "no-such-model", "prompt": "Hi"})
        assert info.value.status == 404 and info.value.code == "not_found"
        with pytest.raises(mesh_error) as info:
            invoke(d, "archiver", "restore", {"tenant": "acme", "session_id": "never-saved"})
        assert info.value.status == 404
