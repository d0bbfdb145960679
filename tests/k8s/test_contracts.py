"""The cluster allows exactly the calls of the contract table, and nothing else.

``services/autoglm/core/contracts.py`` declares every method and topic with the apps
that may call, publish or subscribe to it. Each rendered overlay must let exactly that
set through at every layer: Dapr's access lists (per app Configuration), the pub/sub
scopes, the secret scopes, Istio's AuthorizationPolicies and the NetworkPolicies. A
method the code calls but a layer forgets fails here (as restores, attachments and audit
reads once would have in a cluster), and so does a layer that allows more."""

from __future__ import annotations

from typing import Any

from autoglm.archiver.settings import ArchiverSettings
from autoglm.core import contracts
from tests.k8s.manifests import Doc, Rendered

SA_PREFIX = f"cluster.local/ns/{contracts.NAMESPACE}/sa/"


def _dapr_pods(rendered: Rendered) -> list[tuple[str, str, Doc]]:
    """(Dapr app id, the table's app it runs, annotations) of every Dapr Deployment."""
    pods = []
    for dep in rendered.of_kind("Deployment"):
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("dapr.io/enabled") == "true":
            app = dep["spec"]["template"]["metadata"]["labels"]["app"]
            pods.append((ann["dapr.io/app-id"], app, ann))
    return pods


def _as_app(app_id: str, aliases: dict[str, str]) -> str:
    return aliases.get(app_id, app_id)


def test_dapr_access_lists_allow_exactly_the_contract(rendered: Rendered) -> None:
    configs = {c["metadata"]["name"]: c["spec"] for c in rendered.of_kind("Configuration")}
    pods = _dapr_pods(rendered)
    aliases = {app_id: app for app_id, app, _ in pods}  # inference-canary -> inference
    allowed: set[tuple[str, str, str]] = set()
    for app_id, app, ann in pods:
        spec = configs[ann["dapr.io/config"]]
        acl = spec["accessControl"]
        assert acl["defaultAction"] == "deny", app_id
        assert acl["trustDomain"] == contracts.TRUST_DOMAIN
        for policy in acl.get("policies") or []:
            assert policy["defaultAction"] == "deny", (app_id, policy["appId"])
            assert policy["namespace"] == contracts.NAMESPACE
            for op in policy["operations"]:
                assert op["action"] == "allow" and op["httpVerb"] == ["*"], op
                allowed.add((_as_app(policy["appId"], aliases), app, op["name"]))
        # Each app reads its own secrets and no others; nothing from Kubernetes' store.
        assert spec["secrets"]["scopes"] == contracts.secret_scopes(app), app_id
    assert allowed == contracts.invocations()


def test_canary_calls_itself_under_its_own_id(all_rendered: dict[str, Rendered]) -> None:
    rendered = all_rendered["prod-canary"]
    [(_, _, ann)] = [p for p in _dapr_pods(rendered) if p[0] == "inference-canary"]
    config = rendered.get("Configuration", ann["dapr.io/config"])["spec"]["accessControl"]
    assert config == contracts.access_control(contracts.INFERENCE, app_id="inference-canary")


def test_pubsub_scopes_are_the_contract(rendered: Rendered) -> None:
    pubsub = rendered.get("Component", "pubsub")
    meta = {m["name"]: m.get("value") for m in pubsub["spec"]["metadata"]}
    for key, value in contracts.pubsub_scopes().items():
        assert meta[key] == value, key
    subs = {(s["scopes"][0], s["spec"]["topic"]) for s in rendered.of_kind("Subscription")}
    assert subs == contracts.subscriptions()
    for sub in rendered.of_kind("Subscription"):
        assert len(sub["scopes"]) == 1
        assert sub["spec"]["deadLetterTopic"] == f"{sub['spec']['topic']}.deadletter"


def test_archiver_subscriptions_are_bulk_as_the_app_registers_them(rendered: Rendered) -> None:
    """daprd prefers the archiver's programmatic subscriptions (bulk, from its settings);
    the declarative copies say the same."""
    settings = ArchiverSettings()
    bulk = {
        "enabled": True,
        "maxMessagesCount": settings.bulk_max_messages,
        "maxAwaitDurationMs": settings.bulk_max_await_ms,
    }
    archiver = [s for s in rendered.of_kind("Subscription") if s["scopes"] == [contracts.ARCHIVER]]
    assert {s["spec"]["topic"] for s in archiver} == {"audit", "session.snapshots"}
    for sub in archiver:
        assert sub["spec"].get("bulkSubscribe") == bulk, sub["metadata"]["name"]


def _ports(rule: dict[str, Any]) -> set[int]:
    return {int(p) for op in rule.get("to", []) for p in op["operation"].get("ports", [])}


def test_istio_lets_exactly_the_contract_reach_daprd(rendered: Rendered) -> None:
    flows: set[tuple[str, str]] = set()
    for policy in rendered.of_kind("AuthorizationPolicy"):
        spec = policy["spec"]
        if not spec or spec.get("action", "ALLOW") != "ALLOW":
            continue
        callee = spec["selector"]["matchLabels"]["app"]
        for rule in spec["rules"]:
            if contracts.DAPR_INTERNAL_PORT not in _ports(rule):
                continue
            assert _ports(rule) == {contracts.DAPR_INTERNAL_PORT}, policy["metadata"]["name"]
            for source in rule["from"]:
                for principal in source["source"]["principals"]:
                    assert principal.startswith(SA_PREFIX), principal
                    flows.add((principal.removeprefix(SA_PREFIX), callee))
    assert flows == contracts.app_flows()
    # Each workload runs under its app's ServiceAccount, so principals name apps.
    for dep in rendered.of_kind("Deployment"):
        labels = dep["spec"]["template"]["metadata"]["labels"]
        if labels.get("app") in contracts.APPS:
            assert dep["spec"]["template"]["spec"]["serviceAccountName"] == labels["app"]


def _selected_app(selector: Doc) -> str | None:
    app = selector.get("matchLabels", {}).get("app")
    return str(app) if app in contracts.APPS else None


def test_network_policies_open_exactly_the_contract(rendered: Rendered) -> None:
    ingress: set[tuple[str, str]] = set()
    egress: set[tuple[str, str]] = set()
    for policy in rendered.of_kind("NetworkPolicy"):
        spec = policy["spec"]
        owner = _selected_app(spec["podSelector"])
        for rule in spec.get("ingress", []):
            if contracts.DAPR_INTERNAL_PORT in {p["port"] for p in rule.get("ports", [])}:
                assert owner, policy["metadata"]["name"]
                for peer in rule["from"]:
                    src = _selected_app(peer.get("podSelector", {}))
                    assert src and "namespaceSelector" not in peer, policy["metadata"]["name"]
                    ingress.add((src, owner))
        for rule in spec.get("egress", []):
            if contracts.DAPR_INTERNAL_PORT in {p["port"] for p in rule.get("ports", [])}:
                assert owner, policy["metadata"]["name"]
                for peer in rule["to"]:
                    dst = _selected_app(peer.get("podSelector", {}))
                    assert dst and "namespaceSelector" not in peer, policy["metadata"]["name"]
                    egress.add((owner, dst))
    assert ingress == contracts.app_flows()
    assert egress == contracts.app_flows()
