"""The contract table is the one place the apps' calls are declared, and the local
components and sidecar configurations follow it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from autoglm.core import contracts
from autoglm.devstack.layout import COMPONENTS_DIR
from autoglm.devstack.sidecars import render_app_config


def test_local_pubsub_scopes_are_the_contract() -> None:
    pubsub = yaml.safe_load((COMPONENTS_DIR / "pubsub.yaml").read_text())
    meta = {m["name"]: m.get("value") for m in pubsub["spec"]["metadata"]}
    for key, value in contracts.pubsub_scopes().items():
        assert meta[key] == value, key


def test_every_app_is_listed_in_every_scope_so_none_is_left_open() -> None:
    """An app missing from publishingScopes may publish to every allowed topic."""
    for value in (
        contracts.pubsub_scopes()["publishingScopes"],
        contracts.pubsub_scopes()["subscriptionScopes"],
    ):
        assert [part.split("=")[0] for part in value.split(";")] == list(contracts.APPS)


def test_what_the_table_allows() -> None:
    calls = contracts.invocations()
    # Restores, attachments and audit reads (missing from the cluster's lists once).
    for method in ("restore", "attachment_start", "attachment_put", "attachment_get"):
        assert ("gateway", "archiver", f"/{method}") in calls
    assert ("gateway", "archiver", "/audit_query") in calls
    # Model administration only from the gateway; nothing calls the gateway.
    admins = {c for c, _, op in calls if op in ("/load_model", "/unload_model")}
    assert admins == {"gateway"}
    assert not [c for c in calls if c[1] == "gateway"]
    assert contracts.app_flows() == {
        ("gateway", "inference"),
        ("gateway", "archiver"),
        ("inference", "inference"),
    }
    # A subscriber may publish its dead letters; a publisher nothing else.
    assert ("archiver", "audit.deadletter") in contracts.publications()
    assert ("archiver", "audit") not in contracts.publications()


def test_rendered_config_has_the_apps_own_lists(tmp_path: Path) -> None:
    base = COMPONENTS_DIR / "configuration" / "autoglm.yaml"
    for app in contracts.APPS:
        path = render_app_config(base, app, tmp_path / f"{app}.yaml", mtls=True)
        spec = yaml.safe_load(path.read_text())["spec"]
        assert spec["secrets"]["scopes"] == contracts.secret_scopes(app)
        assert spec["accessControl"] == contracts.access_control(app)
        assert spec["tracing"] == yaml.safe_load(base.read_text())["spec"]["tracing"]
    # Without mTLS daprd cannot tell callers apart: no access list that denies all.
    plain = render_app_config(base, "inference", tmp_path / "plain.yaml", mtls=False)
    assert "accessControl" not in yaml.safe_load(plain.read_text())["spec"]
    # A test client outside the table runs with the base configuration.
    assert render_app_config(base, "itest", tmp_path / "x.yaml", mtls=True) == base


def test_the_apps_serve_exactly_the_declared_methods_and_topics() -> None:
    """Handlers are registered through the table: no app serves a method or takes a
    topic the access lists do not know (reads the SDK servicer's maps, pinned here)."""
    from unittest import mock

    from autoglm.archiver.app import build_app as archiver_app
    from autoglm.inference.app import build_app as inference_app

    for app_id, build in (("inference", inference_app), ("archiver", archiver_app)):
        app = build(mock.MagicMock(), 2)
        servicer = app._servicer
        methods = set(servicer._invoke_method_map)
        declared = {r.name for r in contracts.RPCS if r.app == app_id}
        assert methods == {n for n in declared if not n.startswith("/")}, app_id
        topics = {key.split(":")[1] for key in servicer._topic_map}  # pubsub:topic:path
        assert topics == {t for a, t in contracts.subscriptions() if a == app_id}, app_id


def test_undeclared_methods_cannot_be_served() -> None:
    import pytest

    from autoglm.core.callback_server import callback_app, method, subscribe

    app = callback_app(1, app_token="t")
    with pytest.raises(KeyError):
        method(app, "inference", "drop_all_tables")
    with pytest.raises(KeyError):
        subscribe(app, "gateway", "audit")


def test_the_endpoint_parses_replies_and_maps_every_failure_to_an_error_reply() -> None:
    """What each served method gets from the table: the declared request model in, the
    reply or a structured error out (never a traceback), the caller's verified id where
    the handler asks for it, and every call reported with its outcome."""
    import json

    from autoglm.core.callback_server import Endpoint
    from autoglm.core.errors import NotFoundError, UnavailableError
    from autoglm.core.schemas import ModelRef, ModelState

    seen: list[tuple[str, object, str]] = []

    def load(ref: ModelRef, caller: str | None) -> ModelState:
        if ref.model == "gone":
            raise NotFoundError("no such model", param="model")
        if ref.model == "disk":
            raise OSError(28, "No space left on device")
        if ref.model == "bug":
            raise RuntimeError("secret internals")
        return ModelState(model=ref.model, state=f"loaded for {caller}")

    def storage(method: str, exc: Exception) -> UnavailableError | None:
        return UnavailableError(f"{method}: storage") if isinstance(exc, OSError) else None

    endpoint = Endpoint(
        "inference",
        {contracts.LOAD_MODEL: load, contracts.INFERENCE_HEALTH: lambda: {"ready": True}},
        failure=storage,
        observe=lambda m, req, outcome, _s: seen.append((m, req, outcome)),
    )

    def call(model: object) -> dict[str, Any]:
        body = json.dumps({"model": model}).encode()
        reply = json.loads(endpoint("load_model", body, {"dapr-caller-app-id": ["gateway"]}))
        return reply.get("error", reply)  # type: ignore[no-any-return]

    assert call("m") == {"model": "m", "state": "loaded for gateway"}
    assert call("gone")["status"] == 404
    assert call("disk")["status"] == 503 and call("disk")["message"] == "load_model: storage"
    bug = call("bug")
    assert bug["status"] == 500 and bug["message"] == "load_model failed"
    assert "secret" not in json.dumps(bug) and "Traceback" not in json.dumps(bug)
    assert call(5)["status"] == 400
    outcomes = ["ok", "not_found", "unavailable", "unavailable", "internal_error"]
    assert [o for _, _, o in seen] == [*outcomes, "invalid_request"]
    assert seen[0][1] == ModelRef(model="m") and seen[-1][1] is None  # did not parse
    assert json.loads(endpoint("health", b"")) == {"ready": True}


def test_the_endpoint_serves_only_declared_methods_with_declared_replies() -> None:
    import json

    import pytest

    from autoglm.core.callback_server import Endpoint

    health = contracts.ARCHIVER_HEALTH
    endpoint = Endpoint("archiver", {health: lambda: {"ready": True}})  # not a HealthReply
    assert json.loads(endpoint("health", b""))["error"]["status"] == 500
    with pytest.raises(KeyError):  # inference's, not the archiver's
        Endpoint("archiver", {contracts.INFERENCE_HEALTH: lambda: {}})
