"""The mesh end to end: every hop crosses real daprd sidecars, Redis and Vault."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

from tests.e2e.conftest import Mesh
from tests.support.polling import wait_for


def test_chat_completion_through_gateway_and_sidecars(mesh: Mesh) -> None:
    body = {
        "model": "demo-glm",
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 6,
        "temperature": 0,
    }
    resp = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions", json=body, headers=mesh.headers(), timeout=60
    )
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["model"] == "demo-glm"
    assert data["usage"]["completion_tokens"] >= 1
    assert data["choices"][0]["message"]["content"].strip()
    # Greedy decoding of the same model is deterministic across the whole path.
    again = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions", json=body, headers=mesh.headers(), timeout=60
    ).json()
    assert again["choices"][0]["message"]["content"] == data["choices"][0]["message"]["content"]


def test_unknown_model_crosses_the_mesh_as_clear_404(mesh: Mesh) -> None:
    body = {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}
    resp = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions", json=body, headers=mesh.headers(), timeout=60
    )
    assert resp.status_code == 404
    assert "no-such-model" in resp.json()["error"]["message"]


def test_bad_request_crosses_the_mesh_as_clear_400(mesh: Mesh) -> None:
    """A value only the engine can judge (the prompt does not fit the model's context)
    comes back through both sidecars as a 400 that names the problem."""
    body = {
        "model": "demo-glm",
        "messages": [{"role": "user", "content": "word " * 20_000}],
        "max_tokens": 4,
    }
    resp = httpx.post(
        f"{mesh.gateway_url}/v1/chat/completions", json=body, headers=mesh.headers(), timeout=60
    )
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert "context" in error["message"] or "token" in error["message"], error


def test_published_request_yields_result_with_same_id(mesh: Mesh) -> None:
    request_id = f"job-{uuid.uuid4().hex}"
    client = mesh.gateway.client()
    client.publish(
        "inference.requests",
        {
            "request_id": request_id,
            "request": {"prompt": "Once upon", "sampling": {"max_tokens": 4}},
        },
    )
    stream = mesh.backing.redis_client()

    def result() -> dict[str, object] | None:
        for _, fields in stream.xrange("inference.results"):
            data = json.loads(fields[b"data"])["data"]
            if data["request_id"] == request_id:
                return data  # type: ignore[no-any-return]
        return None

    wait_for("result on inference.results", lambda: result() is not None, 60)
    outcome = result()
    assert outcome is not None and outcome["error"] is None
    assert outcome["result"]["completion_tokens"] >= 1  # type: ignore[index]


def test_snapshot_event_lands_under_archive_root(mesh: Mesh) -> None:
    session = f"s-{uuid.uuid4().hex[:12]}"
    client = mesh.gateway.client()
    client.publish(
        "session.snapshots",
        {
            "tenant": "acme",
            "session_id": session,
            "version": 1,
            "messages": [{"role": "user", "content": "keep me"}],
        },
    )
    wait_for(
        "snapshot file",
        lambda: any(mesh.archive_root.rglob(f"{session}/00000001/metadata.json")),
        30,
    )
    [meta] = mesh.archive_root.rglob(f"{session}/00000001/metadata.json")
    assert json.loads(meta.read_text())["session_id"] == session


def test_secret_from_vault_through_dapr(mesh: Mesh) -> None:
    resp = httpx.get(
        f"{mesh.gateway.dapr_url}/v1.0/secrets/vault/jwt",
        headers=mesh.gateway.dapr_headers,
        timeout=10,
    )
    assert resp.status_code == 200
    assert resp.json() == mesh.backing.secrets["jwt"]


@pytest.mark.parametrize(
    ("app", "secret"),
    [("inference", "jwt"), ("archiver", "jwt"), ("gateway", "archive"), ("inference", "archive")],
)
def test_each_app_reads_only_its_own_secrets(mesh: Mesh, app: str, secret: str) -> None:
    """Secret scopes from the contract table: the JWT signing key is the gateway's alone,
    the archive key the archiver's alone."""
    daprd = getattr(mesh, app)
    resp = httpx.get(
        f"{daprd.dapr_url}/v1.0/secrets/vault/{secret}", headers=daprd.dapr_headers, timeout=10
    )
    assert resp.status_code == 403, resp.text


def test_invoke_from_a_plain_dapr_client(mesh: Mesh, monkeypatch: pytest.MonkeyPatch) -> None:
    from dapr.conf import settings

    # What `dapr run` sets in an app's environment: the SDK finds its sidecar from these.
    # The gateway's, since the access lists let only the gateway call inference.
    monkeypatch.setattr(settings, "DAPR_HTTP_PORT", mesh.gateway.ports.http)
    monkeypatch.setattr(settings, "DAPR_GRPC_PORT", mesh.gateway.ports.grpc)
    monkeypatch.setattr(settings, "DAPR_API_TOKEN", mesh.gateway.dapr_headers["dapr-api-token"])
    with mesh.gateway.dapr_client() as client:
        resp = client.invoke_method("inference", "models", data=b"{}", http_verb="POST")
    assert [m["id"] for m in json.loads(resp.data)["data"]] == ["demo-glm", "all-MiniLM-L6-v2"]
