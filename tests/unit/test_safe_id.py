"""One id rule (``SafeId`` / ``TenantId``) everywhere an id becomes a state key part, a
URL path segment or a folder: ``..``, ``/``, empty and over-long ids are refused by every
check, and ordinary ids pass them all."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient
from pydantic import TypeAdapter, ValidationError

from autoglm.archiver import paths
from autoglm.core.archive_protocol import AuditQueryRequest, RestoreRequest
from autoglm.core.errors import InvalidRequestError, NotFoundError
from autoglm.core.schemas import (
    SAFE_ID_MAX_LENGTH,
    TENANT_MAX_LENGTH,
    AuditEvent,
    GenerateRequest,
    SafeId,
    SnapshotEvent,
    TenantId,
    is_safe_id,
    new_id,
)
from autoglm.gateway.audit_log.protocol import AuditQuery
from autoglm.gateway.openai.chat.protocol import ChatCompletionRequest, completion_id
from autoglm.gateway.openai.responses.protocol import ResponsesRequest
from autoglm.gateway.records import known_id
from autoglm.gateway.security.principal import is_tenant
from autoglm.gateway.sessions.protocol import CreateSessionRequest, RestoreSessionRequest
from tests.support.fakes import FakeSidecar
from tests.unit.gateway_fixtures import (  # noqa: F401 - fixtures
    USER,
    client,
    sidecar,
    stream,
)

BAD = ["..", ".", "a/b", "x/../y", "", "a" * (SAFE_ID_MAX_LENGTH + 1), ".hidden", "a:b", "a\\b"]
GOOD = ["sess-0a1b", "a.b", "_x", "resp_1", "a" * SAFE_ID_MAX_LENGTH]
BAD_TENANTS = [*BAD, "t" * (TENANT_MAX_LENGTH + 1)]
GOOD_TENANTS = ["acme", "_anonymous", "t" * TENANT_MAX_LENGTH]

MSG = [{"role": "user", "content": "hi"}]


#: Every place an id (not a tenant) is validated, as a function that raises on refusal.
ID_CHECKS: dict[str, Callable[[str], Any]] = {
    "SafeId": TypeAdapter(SafeId).validate_python,
    "is_safe_id": lambda v: is_safe_id(v) or (_ for _ in ()).throw(ValueError(v)),
    "archiver path component": lambda v: paths.component(v, "id"),
    "gateway known_id": lambda v: known_id(v, "session", "session_id"),
    "snapshot event": lambda v: SnapshotEvent(tenant="acme", session_id=v, version=1, messages=[]),
    "restore request": lambda v: RestoreRequest(tenant="acme", session_id=v),
    "session create": lambda v: CreateSessionRequest(id=v),
    "chat session_id": lambda v: ChatCompletionRequest(model="m", messages=MSG, session_id=v),
    "previous_response_id": lambda v: ResponsesRequest(
        model="m", input="hi", previous_response_id=v
    ),
    "openapi path pattern": lambda v: _openapi_id(v),
}

#: ... and every place a tenant is.
TENANT_CHECKS: dict[str, Callable[[str], Any]] = {
    "TenantId": TypeAdapter(TenantId).validate_python,
    "principal": lambda v: is_tenant(v) or (_ for _ in ()).throw(ValueError(v)),
    "snapshot event": lambda v: SnapshotEvent(tenant=v, session_id="s", version=1, messages=[]),
    "audit event": lambda v: AuditEvent(
        tenant=v, action="GET /", resource="/", status=200, latency_ms=0.0
    ),
    "generate request": lambda v: GenerateRequest(prompt="hi", tenant=v),
    "restore request": lambda v: RestoreRequest(tenant=v, session_id="s"),
    "audit query (archiver)": lambda v: AuditQueryRequest(tenant=v, day="2026-01-01"),
    "audit query (gateway)": lambda v: AuditQuery(tenant=v, day="2026-01-01"),
    "session restore": lambda v: RestoreSessionRequest(version=1, tenant=v),
}


def _openapi_id(value: str) -> None:
    from autoglm.gateway.openapi import _ID_SCHEMA

    ok = (
        _ID_SCHEMA["minLength"] <= len(value) <= _ID_SCHEMA["maxLength"]
        and re.search(_ID_SCHEMA["pattern"], value) is not None
    )
    if not ok:
        raise ValueError(value)


REFUSED = (ValueError, ValidationError, InvalidRequestError, NotFoundError)


@pytest.mark.parametrize("where", sorted(ID_CHECKS))
@pytest.mark.parametrize("value", BAD)
def test_unsafe_ids_are_refused_everywhere(where: str, value: str) -> None:
    with pytest.raises(REFUSED):
        ID_CHECKS[where](value)


@pytest.mark.parametrize("where", sorted(ID_CHECKS))
@pytest.mark.parametrize("value", GOOD)
def test_ordinary_ids_pass_everywhere(where: str, value: str) -> None:
    ID_CHECKS[where](value)


@pytest.mark.parametrize("where", sorted(TENANT_CHECKS))
@pytest.mark.parametrize("value", BAD_TENANTS)
def test_unsafe_tenants_are_refused_everywhere(where: str, value: str) -> None:
    with pytest.raises(REFUSED):
        TENANT_CHECKS[where](value)


@pytest.mark.parametrize("where", sorted(TENANT_CHECKS))
@pytest.mark.parametrize("value", GOOD_TENANTS)
def test_ordinary_tenants_pass_everywhere(where: str, value: str) -> None:
    TENANT_CHECKS[where](value)


@pytest.mark.parametrize("value", [v for v in BAD if v and "/" not in v and v not in (".", "..")])
@pytest.mark.parametrize(
    "path", ["/v1/sessions/{}", "/v1/jobs/{}", "/v1/responses/{}", "/v1/attachments/{}"]
)
def test_routes_answer_404_for_unsafe_ids_without_a_lookup(
    client: FlaskClient,  # noqa: F811
    sidecar: FakeSidecar,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    value: str,
) -> None:
    """An id in a URL path that no record can have is not found, and nothing (state
    store, archiver) is asked about it. (``/``, ``.`` and ``..`` never reach a route:
    the URL itself resolves elsewhere.)"""
    keys: list[str] = []
    read = sidecar.get_state
    monkeypatch.setattr(
        sidecar, "get_state", lambda key, *a, **kw: keys.append(key) or read(key, *a, **kw)
    )
    before = len(sidecar.invocations)
    resp = client.get(path.format(value), headers=USER)
    assert resp.status_code == 404, resp.get_json()
    assert len(sidecar.invocations) == before
    # Only the rate limiter's own keys were read, no record's.
    assert not [k for k in keys if k.startswith(("session:", "job:", "response:"))]


def test_ids_the_mesh_makes_are_random_hex_that_any_id_check_accepts() -> None:
    ids = {new_id("req") for _ in range(100)} | {completion_id() for _ in range(100)}
    assert len(ids) == 200
    for made in ids:
        assert re.fullmatch(r"(req-|chatcmpl-)[0-9a-f]{32}", made)
        assert TypeAdapter(SafeId).validate_python(made) == made
