"""Admin routes of the gateway: reading the audit archive and restoring a chosen session
version, against a fake sidecar; and the OpenAPI document describing them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from autoglm.core.errors import NotFoundError, UnavailableError
from autoglm.core.schemas import SNAPSHOTS_TOPIC
from tests.support.fakes import FakeSidecar
from tests.support.tokens import bearer
from tests.unit.gateway_fixtures import USER, FakeStream, make_client, sidecar, stream
from tests.unit.test_archiver_sessions import build, event, invoke

__all__ = ["sidecar", "stream"]  # fixtures used by name

ADMIN = bearer("acme", "admin")
SERVICE = bearer("acme", "service")


@pytest.fixture
def client(sidecar: FakeSidecar, stream: FakeStream) -> FlaskClient:
    return make_client(sidecar, stream)


def _calls(sidecar: FakeSidecar, method: str) -> list[dict[str, Any]]:
    return [payload for _, m, payload in sidecar.invocations if m == method]


def _snapshots(sidecar: FakeSidecar) -> list[dict[str, Any]]:
    return [payload for topic, payload in sidecar.published if topic == SNAPSHOTS_TOPIC]


# -- GET /v1/audit ---------------------------------------------------------------------
def _audit_page(payload: dict[str, Any]) -> dict[str, Any]:
    event = {"tenant": payload["tenant"], "request_id": "r1", "status": 200}
    return {"tenant": payload["tenant"], "day": payload["day"], "events": [event], "next_offset": 7}


def test_an_admin_reads_any_tenants_audit_day(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["audit_query"] = _audit_page
    resp = client.get("/v1/audit?tenant=globex&day=2024-06-01&offset=5&limit=2", headers=ADMIN)
    assert resp.status_code == 200
    assert resp.get_json() == {
        "tenant": "globex",
        "day": "2024-06-01",
        "events": [{"tenant": "globex", "request_id": "r1", "status": 200}],
        "next_offset": 7,
    }
    assert sidecar.invocations[-1] == (
        "archiver",
        "audit_query",
        {"tenant": "globex", "day": "2024-06-01", "offset": 5, "limit": 2},
    )


def test_without_a_tenant_an_admin_reads_its_own(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["audit_query"] = _audit_page
    assert client.get("/v1/audit?day=2024-06-01", headers=ADMIN).status_code == 200
    assert _calls(sidecar, "audit_query") == [
        {"tenant": "acme", "day": "2024-06-01", "offset": 0, "limit": 100}
    ]


@pytest.mark.parametrize("who", [USER, SERVICE], ids=["user", "service"])
@pytest.mark.parametrize("tenant", ["acme", "globex"])
def test_no_other_role_reads_audit_not_even_its_own_tenant(
    client: FlaskClient, sidecar: FakeSidecar, who: dict[str, str], tenant: str
) -> None:
    sidecar.invoke_replies["audit_query"] = _audit_page
    resp = client.get(f"/v1/audit?tenant={tenant}&day=2024-06-01", headers=who)
    assert resp.status_code == 403
    error = resp.get_json()["error"]
    assert error["type"] == "permission_error" and "audit.read" in error["message"]
    assert _calls(sidecar, "audit_query") == []


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("tenant=..&day=2024-06-01", "tenant"),
        ("tenant=a%2Fb&day=2024-06-01", "tenant"),
        ("day=..%2F2024-06-01", "day"),
        ("day=2024-13-01", "day"),
        ("", "day"),
        ("day=2024-06-01&limit=1001", "limit"),
        ("day=2024-06-01&offset=x", "offset"),
        ("day=2024-06-01&since=0", "since"),
    ],
)
def test_malformed_audit_queries_are_400_naming_the_field(
    client: FlaskClient, sidecar: FakeSidecar, query: str, param: str
) -> None:
    resp = client.get(f"/v1/audit?{query}", headers=ADMIN)
    assert resp.status_code == 400
    assert resp.get_json()["error"]["param"] == param
    assert _calls(sidecar, "audit_query") == []


def test_an_unavailable_archiver_is_503(client: FlaskClient, sidecar: FakeSidecar) -> None:
    sidecar.invoke_replies["audit_query"] = UnavailableError("archive storage is unavailable")
    resp = client.get("/v1/audit?day=2024-06-01", headers=ADMIN)
    assert resp.status_code == 503 and resp.get_json()["error"]["code"] == "unavailable"


# -- POST /v1/sessions/{id}/restore ----------------------------------------------------
OLD = [{"role": "system", "content": "old"}, {"role": "user", "content": "first"}]


def _snapshot_reply(version: int, latest: int) -> Any:
    def reply(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            "tenant": payload["tenant"],
            "session_id": payload["session_id"],
            "version": version,
            "latest_version": latest,
            "messages": OLD,
            "model": "demo-glm",
        }

    return reply


def _create(client: FlaskClient, sidecar: FakeSidecar, sid: str, version: int) -> None:
    body = {"id": sid, "messages": [{"role": "system", "content": "new"}], "metadata": {"k": "v"}}
    assert client.post("/v1/sessions", json=body, headers=USER).status_code == 201
    key = f"session:acme:{sid}"
    value, etag = sidecar.state[key]
    sidecar.state[key] = ({**value, "version": version}, etag)
    sidecar.published.clear()


def test_restore_is_admin_only(client: FlaskClient, sidecar: FakeSidecar) -> None:
    _create(client, sidecar, "s1", 3)
    sidecar.invoke_replies["restore"] = _snapshot_reply(1, 3)
    before = sidecar.state["session:acme:s1"]
    for who in (USER, SERVICE):
        resp = client.post("/v1/sessions/s1/restore", json={"version": 1}, headers=who)
        assert resp.status_code == 403
        assert "sessions.admin" in resp.get_json()["error"]["message"]
    assert _calls(sidecar, "restore") == []
    assert sidecar.state["session:acme:s1"] == before
    assert _snapshots(sidecar) == []


@pytest.mark.parametrize(
    ("stored", "archived", "expected"),
    [(3, 4, 5), (6, 2, 7)],
    ids=["archive-ahead-after-a-merge", "state-store-ahead"],
)
def test_admin_restore_writes_above_both_versions_with_the_etag_and_publishes(
    client: FlaskClient, sidecar: FakeSidecar, stored: int, archived: int, expected: int
) -> None:
    _create(client, sidecar, "s1", stored)
    sidecar.invoke_replies["restore"] = _snapshot_reply(1, archived)
    resp = client.post("/v1/sessions/s1/restore", json={"version": 1}, headers=ADMIN)
    assert resp.status_code == 200, resp.get_json()
    record = resp.get_json()
    assert record["version"] == expected and record["messages"] == OLD
    assert record["metadata"] == {"k": "v"} and record["tenant"] == "acme"
    assert _calls(sidecar, "restore") == [{"tenant": "acme", "session_id": "s1", "version": 1}]
    # The key was created first-write: the fake, like state.redis, refuses a write
    # without its ETag, so this landed only because it carried it.
    assert sidecar.state["session:acme:s1"][0] == record
    snapshots = _snapshots(sidecar)
    assert len(snapshots) == 1
    assert snapshots[0]["version"] == expected and snapshots[0]["flush"] is True
    assert snapshots[0]["messages"] == OLD
    assert client.get("/v1/sessions/s1", headers=USER).get_json() == record


def test_admin_restores_another_tenants_lost_session(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    sidecar.invoke_replies["restore"] = _snapshot_reply(2, 5)
    resp = client.post(
        "/v1/sessions/s9/restore", json={"version": 2, "tenant": "globex"}, headers=ADMIN
    )
    assert resp.status_code == 200
    assert resp.get_json()["tenant"] == "globex" and resp.get_json()["version"] == 6
    assert _calls(sidecar, "restore")[0]["tenant"] == "globex"
    assert "session:acme:s9" not in sidecar.state
    # Absent before: written create-only, so the owner's next write needs the ETag too.
    assert "session:globex:s9" in sidecar.first_write
    globex = bearer("globex")
    assert client.get("/v1/sessions/s9", headers=globex).get_json()["messages"] == OLD


def test_a_turn_landing_during_the_restore_is_a_409_and_wins(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    _create(client, sidecar, "s1", 3)
    snapshot = _snapshot_reply(1, 3)

    def concurrent_turn(payload: dict[str, Any]) -> dict[str, Any]:
        value, etag = sidecar.state["session:acme:s1"]
        sidecar.state["session:acme:s1"] = ({**value, "version": 4}, etag + 1)
        return snapshot(payload)

    sidecar.invoke_replies["restore"] = concurrent_turn
    resp = client.post("/v1/sessions/s1/restore", json={"version": 1}, headers=ADMIN)
    assert resp.status_code == 409
    assert resp.get_json()["error"]["code"] == "session_conflict"
    assert sidecar.state["session:acme:s1"][0]["version"] == 4
    assert _snapshots(sidecar) == []


def test_an_unknown_version_is_404_and_nothing_changes(
    client: FlaskClient, sidecar: FakeSidecar
) -> None:
    _create(client, sidecar, "s1", 3)
    sidecar.invoke_replies["restore"] = NotFoundError(
        "session 's1' has no version 9", param="version"
    )
    before = sidecar.state["session:acme:s1"]
    resp = client.post("/v1/sessions/s1/restore", json={"version": 9}, headers=ADMIN)
    assert resp.status_code == 404 and resp.get_json()["error"]["param"] == "version"
    assert sidecar.state["session:acme:s1"] == before and _snapshots(sidecar) == []


@pytest.mark.parametrize(
    ("body", "param"),
    [({}, "version"), ({"version": 0}, "version"), ({"version": 1, "tenant": "../x"}, "tenant")],
)
def test_malformed_restore_bodies_are_400(
    client: FlaskClient, sidecar: FakeSidecar, body: dict[str, Any], param: str
) -> None:
    resp = client.post("/v1/sessions/s1/restore", json=body, headers=ADMIN)
    assert resp.status_code == 400 and resp.get_json()["error"]["param"] == param
    assert _calls(sidecar, "restore") == []


def test_the_archiver_names_its_newest_version_when_an_older_is_chosen(tmp_path: Path) -> None:
    _, service = build(tmp_path)
    service.on_snapshot(event(1, "a", flush=True))
    service.on_snapshot(event(2, "a", "b", flush=True))
    older = invoke(service, "restore", b'{"tenant": "acme", "session_id": "s1", "version": 1}')
    assert older["version"] == 1 and older["latest_version"] == 2
    assert [m["content"] for m in older["messages"]] == ["a"]
    newest = invoke(service, "restore", b'{"tenant": "acme", "session_id": "s1"}')
    assert newest["version"] == newest["latest_version"] == 2


# -- OpenAPI ---------------------------------------------------------------------------
def test_openapi_describes_the_admin_routes_and_attachment_bodies(client: FlaskClient) -> None:
    doc = client.get("/openapi.json").get_json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]

    audit = paths["/v1/audit"]["get"]
    params = {p["name"]: p for p in audit["parameters"]}
    assert set(params) == {"tenant", "day", "offset", "limit"}
    assert params["day"]["required"] and not params["tenant"]["required"]
    assert params["limit"]["schema"]["maximum"] == 1000
    ok = audit["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/AuditQueryReply"}
    assert "403" in audit["responses"]

    restore = paths["/v1/sessions/{session_id}/restore"]["post"]
    body = restore["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schemas[body.rsplit("/", 1)[1]]["required"] == ["version"]
    assert restore["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SessionRecord"
    }

    start = paths["/v1/attachments"]["post"]
    body = start["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    fields = schemas[body.rsplit("/", 1)[1]]["properties"]
    # The gateway sets the tenant itself; a client never sends it.
    assert set(fields) == {"filename", "mime_type", "size", "sha256"}
    reply = start["responses"]["201"]["content"]["application/json"]["schema"]["$ref"]
    assert {"id", "offset", "complete"} <= set(schemas[reply.rsplit("/", 1)[1]]["properties"])

    download = paths["/v1/attachments/{attachment_id}"]["get"]["responses"]["200"]
    assert "application/json" not in download["content"]
    assert download["content"]["application/octet-stream"]["schema"]["format"] == "binary"
    assert "Content-Disposition" in download["headers"]
