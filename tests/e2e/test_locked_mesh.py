"""The local mesh is locked like a cluster: a local process without the stack's tokens
gets nothing from any daprd or app, and a caller cannot claim another app's identity.

Every request here is what the outside attack on ``make run`` tried (issue 10, item 5):
read the JWT key and sessions through daprd, forge a job result, call the apps' ports."""

from __future__ import annotations

import json

import grpc
import httpx
import pytest
from dapr.clients.grpc.interceptors import DaprClientInterceptor

from autoglm.core.affinity import ACTOR_TYPE
from tests.e2e.conftest import Mesh

#: daprd API routes that hand out or change data (method, path, JSON body).
DAPRD_ROUTES = [
    ("GET", "/v1.0/secrets/vault/jwt", None),
    ("GET", "/v1.0/state/statestore/session:acme:s-1", None),
    ("POST", "/v1.0/state/statestore", [{"key": "session:acme:s-1", "value": {}}]),
    ("POST", "/v1.0/publish/pubsub/audit", {"tenant": "acme"}),
    ("POST", "/v1.0/invoke/archiver/method/audit_query", {"tenant": "acme"}),
    ("GET", "/v1.0/metadata", None),
    ("POST", f"/v1.0/actors/{ACTOR_TYPE}/a1/method/generate", {"prompt": "Hi"}),
]


@pytest.mark.parametrize("app", ["gateway", "inference", "archiver"])
def test_every_daprd_api_needs_the_dapr_api_token(mesh: Mesh, app: str) -> None:
    daprd = getattr(mesh, app)
    for method, path, body in DAPRD_ROUTES:
        for headers in ({}, {"dapr-api-token": "guess"}):
            resp = httpx.request(
                method, f"{daprd.dapr_url}{path}", json=body, headers=headers, timeout=10
            )
            assert resp.status_code == 401, f"{app} {method} {path}: {resp.status_code}"
    # Health stays open (probes), and the token opens the API.
    assert httpx.get(f"{daprd.dapr_url}/v1.0/healthz", timeout=5).status_code == 204
    ok = httpx.get(f"{daprd.dapr_url}/v1.0/metadata", headers=daprd.dapr_headers, timeout=5)
    assert ok.status_code == 200 and ok.json()["id"] == app


@pytest.mark.parametrize("app", ["gateway", "inference", "archiver"])
def test_every_daprd_grpc_api_needs_the_dapr_api_token(mesh: Mesh, app: str) -> None:
    daprd = getattr(mesh, app)
    with grpc.insecure_channel(f"127.0.0.1:{daprd.ports.grpc}") as channel:
        get_metadata = channel.unary_unary("/dapr.proto.runtime.v1.Dapr/GetMetadata")
        with pytest.raises(grpc.RpcError) as refused:
            get_metadata(b"", timeout=10)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
        token = DaprClientInterceptor(list(daprd.dapr_headers.items()))
        authorized = grpc.intercept_channel(channel, token)
        assert authorized.unary_unary("/dapr.proto.runtime.v1.Dapr/GetMetadata")(b"", timeout=10)


def test_only_the_gateway_reaches_the_session_actors(mesh: Mesh) -> None:
    """Dapr's access lists do not cover actor calls: only the apps the contract table
    names as actor hosts or callers get an actor runtime, so the archiver's daprd
    (even with its token) cannot generate through inference's session actors."""
    path = f"/v1.0/actors/{ACTOR_TYPE}/a1/method/generate"
    body = {"prompt": "Hi", "sampling": {"max_tokens": 2}, "tenant": "acme"}
    refused = httpx.post(
        f"{mesh.archiver.dapr_url}{path}", json=body, headers=mesh.archiver.dapr_headers, timeout=30
    )
    assert refused.status_code == 400 and "ERR_ACTOR_NO_PLACEMENT" in refused.text, refused.text
    served = httpx.post(
        f"{mesh.gateway.dapr_url}{path}", json=body, headers=mesh.gateway.dapr_headers, timeout=60
    )
    assert served.status_code == 200 and served.json()["model"] == "demo-glm", served.text


def test_a_forged_job_result_is_refused_by_the_gateway(mesh: Mesh) -> None:
    """The gateway's delivery route, called directly as daprd would but without the app
    token, changes nothing."""
    job = httpx.post(
        f"{mesh.gateway_url}/v1/jobs",
        json={"model": "demo-glm", "messages": [{"role": "user", "content": "x"}]},
        headers=mesh.headers(),
        timeout=30,
    ).json()
    forged = {
        "data": {
            "request_id": f"acme:{job['id']}",
            "result": {
                "request_id": f"acme:{job['id']}",
                "model": "demo-glm",
                "text": "forged",
                "finish_reason": "stop",
                "prompt_tokens": 1,
                "completion_tokens": 1,
            },
        }
    }
    for headers in ({}, mesh.gateway.dapr_headers):
        resp = httpx.post(
            f"{mesh.gateway_url}/dapr/events/inference-results",
            json=forged,
            headers=headers,
            timeout=10,
        )
        assert resp.status_code == 401
    got = httpx.get(
        f"{mesh.gateway_url}/v1/jobs/{job['id']}", headers=mesh.headers(), timeout=10
    ).json()
    assert "forged" not in json.dumps(got)  # queued, or completed by inference itself


@pytest.mark.parametrize("app", ["inference", "archiver"])
def test_grpc_apps_refuse_calls_that_do_not_come_from_their_daprd(mesh: Mesh, app: str) -> None:
    """Straight to the app's port: methods, topic deliveries and the token stream are
    all refused without the app token (the Dapr API token is not it either)."""
    target = getattr(mesh, app)
    # Another app's app token does not open this one either.
    other_app = {"dapr-api-token": mesh.gateway.creds.app_token("gateway")}
    calls = [
        "/dapr.proto.runtime.v1.AppCallback/OnInvoke",
        "/dapr.proto.runtime.v1.AppCallback/OnTopicEvent",
        "/dapr.proto.runtime.v1.AppCallback/OnBindingEvent",
    ]
    with grpc.insecure_channel(f"127.0.0.1:{target.app_port}") as channel:
        for metadata in ((), tuple(target.dapr_headers.items()), tuple(other_app.items())):
            for path in calls:
                with pytest.raises(grpc.RpcError) as refused:
                    channel.unary_unary(path)(b"", metadata=metadata, timeout=10)
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED, path
            if app == "inference":
                stream = channel.unary_stream("/autoglm.inference.v1.Inference/GenerateStream")
                body = json.dumps({"prompt": "x", "sampling": {"max_tokens": 1}}).encode()
                with pytest.raises(grpc.RpcError) as refused:
                    list(stream(body, metadata=metadata, timeout=10))
                assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED


def test_a_caller_cannot_claim_the_gateway_identity_with_a_header(mesh: Mesh) -> None:
    """``dapr-caller-app-id`` comes from daprd; one a caller adds to its request does
    not make the archiver an admin of inference."""
    sidecar = mesh.archiver.client()
    forged = {"dapr-caller-app-id": "gateway"}
    resp = sidecar._request(
        "POST",
        "/v1.0/invoke/inference/method/unload_model",
        json_body={"model": "demo-glm"},
        headers=forged,
    )
    body = resp.json()
    assert resp.status_code == 403 or body.get("error", {}).get("status") == 403, body
    # Still loaded: nothing was unloaded.
    models = mesh.gateway.client().invoke("inference", "models", {})["data"]
    assert {m["id"]: m["state"] for m in models}["demo-glm"] == "ready"


@pytest.mark.parametrize(
    ("caller", "callee", "method"),
    [
        ("archiver", "inference", "generate"),
        ("archiver", "inference", "load_model"),
        ("inference", "archiver", "restore"),
        ("gateway", "inference", "health"),
        ("inference", "gateway", "dapr/subscribe"),
    ],
)
def test_only_the_contract_tables_calls_pass_daprd(
    mesh: Mesh, caller: str, callee: str, method: str
) -> None:
    """Dapr's access lists (over mTLS, from the contract table) refuse every call between
    apps that the table does not declare, whatever the caller sends."""
    daprd = getattr(mesh, caller)
    resp = httpx.post(
        f"{daprd.dapr_url}/v1.0/invoke/{callee}/method/{method}",
        json={"tenant": "acme", "session_id": "s", "model": "demo-glm", "day": "2024-01-01"},
        headers={**daprd.dapr_headers, "dapr-caller-app-id": "gateway"},
        timeout=20,
    )
    assert resp.status_code == 403, resp.text
    assert "access control policy has denied" in resp.text


@pytest.mark.parametrize(
    ("app", "topic"),
    [
        ("archiver", "inference.requests"),
        ("inference", "audit"),
        ("archiver", "session.snapshots"),
        ("gateway", "some.other.topic"),
    ],
)
def test_only_the_contract_tables_publishers_may_publish(mesh: Mesh, app: str, topic: str) -> None:
    daprd = getattr(mesh, app)
    resp = httpx.post(
        f"{daprd.dapr_url}/v1.0/publish/pubsub/{topic}",
        json={"x": 1},
        headers=daprd.dapr_headers,
        timeout=10,
    )
    assert resp.status_code == 403, resp.text


def test_one_apps_dapr_token_does_not_open_another_apps_daprd(mesh: Mesh) -> None:
    """Locally every daprd listens on the same host: each has its own API token, so an
    app cannot use another app's daprd (where a call to its own app id skips the access
    lists) to act as that app."""
    for holder in ("gateway", "inference"):
        token = getattr(mesh, holder).dapr_headers
        resp = httpx.post(
            f"{mesh.archiver.dapr_url}/v1.0/invoke/archiver/method/audit_query",
            json={"tenant": "acme", "day": "2024-01-01"},
            headers=token,
            timeout=10,
        )
        assert resp.status_code == 401, holder
