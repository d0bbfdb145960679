"""Every overlay renders, and every object in it is valid against its schema."""

from __future__ import annotations

import json

from tests.k8s.manifests import K8S, CRDSchemas, Rendered, group_of, validate_core


def test_every_object_is_valid(rendered: Rendered, crd_schemas: CRDSchemas) -> None:
    custom = crd_schemas.groups()
    problems = []
    for doc in rendered.docs:
        try:
            if group_of(doc["apiVersion"]) in custom:
                crd_schemas.validate(doc)
            else:
                validate_core(doc)
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, f"{rendered.overlay}:\n" + "\n".join(problems)


def test_all_objects_live_in_the_namespace(rendered: Rendered) -> None:
    for doc in rendered.docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "autoglm", doc["metadata"]["name"]


def test_names_are_unique(rendered: Rendered) -> None:
    keys = [(d["apiVersion"], d["kind"], d["metadata"]["name"]) for d in rendered.docs]
    assert len(keys) == len(set(keys))


def test_the_schema_check_rejects_typos(crd_schemas: CRDSchemas) -> None:
    """Unknown fields fail (the API server would prune them silently)."""
    bad = {
        "apiVersion": "dapr.io/v2alpha1",
        "kind": "Subscription",
        "metadata": {"name": "x"},
        "spec": {"pubsubname": "pubsub", "topic": "t", "routes": {"default": ""}},
        "scope": ["gateway"],
    }
    try:
        crd_schemas.validate(bad)
    except AssertionError as exc:
        assert "scope" in str(exc)
    else:
        raise AssertionError("a misspelt field passed CRD validation")
    core = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"prots": []}}
    try:
        validate_core(core)
    except AssertionError as exc:
        assert "prots" in str(exc)
    else:
        raise AssertionError("a misspelt field passed core validation")


def test_dashboard_is_grafana_json(rendered: Rendered) -> None:
    cm = rendered.get("ConfigMap", "grafana-dashboard-autoglm")
    dashboard = json.loads(cm["data"]["autoglm.json"])
    assert dashboard["uid"] and dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    assert (K8S / "base/observability/dashboards/autoglm.json").is_file()
