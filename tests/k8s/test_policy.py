"""Policy of the rendered overlays, and parity with the local dapr.yaml/components/."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from autoglm.core import contracts, schemas
from autoglm.core.affinity import ACTORSTORE
from tests.k8s.manifests import REPO, Doc, Rendered, containers, env_of

DAPR_APPS = {a["appID"]: a for a in yaml.safe_load((REPO / "dapr.yaml").read_text())["apps"]}
LOCAL = {
    d["metadata"]["name"]: d
    for p in sorted((REPO / "components").rglob("*.yaml"))
    for d in yaml.safe_load_all(p.read_text())
    if d
}
#: Component settings that describe behaviour, not a connection: equal everywhere.
BEHAVIOUR_METADATA = {"processingTimeout", "redeliverInterval", "concurrency", "enginePath",
                      "vaultKVPrefix", "allowedTopics", "publishingScopes",
                      "subscriptionScopes", "actorStateStore"}  # fmt: skip


def _base_app(deployment: Doc) -> str:
    """The dapr.yaml app a Deployment runs (a canary runs the same app)."""
    return str(deployment["spec"]["template"]["metadata"]["labels"]["app"])


def _app_container(deployment: Doc) -> Doc:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == _base_app(deployment))


def test_every_container_is_locked_down(rendered: Rendered) -> None:
    for dep in rendered.of_kind("Deployment"):
        pod = dep["spec"]["template"]["spec"]
        name = dep["metadata"]["name"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod.get("serviceAccountName") not in (None, "default"), name
        assert pod.get("automountServiceAccountToken") is False, name
        assert pod.get("topologySpreadConstraints"), name
        for c in containers(dep):
            where = f"{name}/{c['name']}"
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert "add" not in sc["capabilities"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where} {kind}"


def test_every_container_has_probes(rendered: Rendered) -> None:
    for dep in rendered.of_kind("Deployment"):
        pod = dep["spec"]["template"]["spec"]
        for c in pod["containers"]:
            where = f"{dep['metadata']['name']}/{c['name']}"
            ports = {p["name"] for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: no {probe}"
                action = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                if action is not None:
                    assert action["port"] in ports, f"{where}: {probe} on unknown port"
        for c in pod.get("initContainers", []):
            # Native sidecars: started (probe passed) before the app containers.
            assert c.get("restartPolicy") == "Always" and "startupProbe" in c, c["name"]


def test_dapr_annotations_agree_with_dapr_yaml(rendered: Rendered) -> None:
    config_name = LOCAL["autoglm"]["metadata"]["name"]
    configs = {c["metadata"]["name"] for c in rendered.of_kind("Configuration")}
    dapr_deployments = [
        d
        for d in rendered.of_kind("Deployment")
        if d["spec"]["template"]["metadata"].get("annotations", {}).get("dapr.io/enabled")
    ]
    assert {_base_app(d) for d in dapr_deployments} == set(DAPR_APPS)
    for dep in dapr_deployments:
        ann = dep["spec"]["template"]["metadata"]["annotations"]
        app = DAPR_APPS[_base_app(dep)]
        track = dep["spec"]["template"]["metadata"]["labels"]["track"]
        # A canary inference has its own id (components/canary); gateway's shares it.
        canary = track == "canary" and app["appID"] == "inference"
        expected_id = "inference-canary" if canary else app["appID"]
        assert ann["dapr.io/enabled"] == "true"
        assert ann["dapr.io/app-id"] == expected_id
        assert ann["dapr.io/app-port"] == str(app["appPort"])
        assert ann["dapr.io/app-protocol"] == app["appProtocol"]
        # Each app its own Configuration (its access list and secret scopes).
        assert ann["dapr.io/config"] == f"{config_name}-{expected_id}"
        assert ann["dapr.io/config"] in configs
        # Its daprd requires the Dapr API token and sends the app token to the app.
        assert ann["dapr.io/api-token-secret"] and ann["dapr.io/app-token-secret"]
        assert ann["dapr.io/log-as-json"] == "true"
        for key in ("cpu-limit", "memory-limit", "cpu-request", "memory-request"):
            assert ann[f"dapr.io/sidecar-{key}"], key
        prefix = f"AUTOGLM_{app['appID'].upper()}_"
        env = env_of(_app_container(dep))
        # The app listens where daprd calls it, on every interface for the probes.
        assert env[f"{prefix}PORT"] == str(app["appPort"]) == app["env"][f"{prefix}PORT"]
        assert env[f"{prefix}HOST"] == "0.0.0.0"
        ports = {p["containerPort"] for p in _app_container(dep)["ports"]}
        assert app["appPort"] in ports


def test_components_match_local_ones(rendered: Rendered) -> None:
    cluster = {c["metadata"]["name"]: c for c in rendered.of_kind("Component")}
    local = {n: d for n, d in LOCAL.items() if d["kind"] == "Component"}
    assert (
        set(cluster)
        == set(local)
        == {
            schemas.STATESTORE,
            ACTORSTORE,
            schemas.PUBSUB,
            schemas.SECRETSTORE,
        }
    )
    for name, comp in cluster.items():
        assert comp["spec"]["type"] == local[name]["spec"]["type"], name
        meta = {m["name"]: m for m in comp["spec"]["metadata"]}
        local_meta = {m["name"]: m for m in local[name]["spec"]["metadata"]}
        for key in BEHAVIOUR_METADATA & (set(local_meta) | set(meta)):
            assert meta[key]["value"] == local_meta[key]["value"], f"{name}.{key}"
        if name == ACTORSTORE:
            # The actor state store: only the apps hosting actors load it (not the
            # canary: session actors stay with the stable inference).
            hosts = {a.app for a in contracts.ACTORS}
            assert set(comp["scopes"]) == set(local[name]["scopes"]) == hosts, name
            assert meta["actorStateStore"]["value"] == "true"
        else:
            # DESIGN.md: all three apps use all three building blocks; nobody else does.
            assert set(DAPR_APPS) <= set(comp["scopes"]), name
            assert set(comp["scopes"]) <= set(DAPR_APPS) | {"inference-canary"}, name
        if name in (schemas.STATESTORE, ACTORSTORE, schemas.PUBSUB):
            assert meta["enableTLS"]["value"] == "true"
            assert meta["redisPassword"]["secretKeyRef"]["name"], "password from a secret"
    # The canary must not join inference.requests' consumers (second consumer group).
    assert "inference-canary" not in cluster[schemas.PUBSUB]["scopes"]


def test_vault_uses_kubernetes_auth(rendered: Rendered) -> None:
    meta = {m["name"]: m for m in rendered.get("Component", "vault")["spec"]["metadata"]}
    assert "vaultToken" not in meta and meta["skipVerify"]["value"] == "false"
    token_path = meta["vaultTokenMountPath"]["value"]
    for dep in rendered.of_kind("Deployment"):
        ann = dep["spec"]["template"]["metadata"].get("annotations", {})
        if ann.get("dapr.io/enabled") != "true":
            continue
        volume, _, mount = ann["dapr.io/volume-mounts"].partition(":")
        assert token_path.startswith(mount + "/")
        agent = next(c for c in containers(dep) if c["name"] == "vault-agent")
        assert any(m["name"] == volume for m in agent["volumeMounts"])
        config = rendered.get("ConfigMap", "vault-agent")["data"][f"{_base_app(dep)}.hcl"]
        assert 'method "kubernetes"' in config and token_path in config


def test_configuration(rendered: Rendered) -> None:
    configs = [c["spec"] for c in rendered.of_kind("Configuration")]
    assert all(c["metric"]["enabled"] is True for c in configs)
    [collector] = {c["tracing"]["otel"]["endpointAddress"] for c in configs}
    assert collector.split(".")[0] in {s["metadata"]["name"] for s in rendered.of_kind("Service")}
    for dep in rendered.of_kind("Deployment"):
        if dep["metadata"]["name"] != "otel-collector":
            # The apps' own spans go to the same collector as daprd's.
            endpoint = env_of(_app_container(dep))["OTEL_EXPORTER_OTLP_ENDPOINT"]
            assert endpoint == f"http://{collector}"
    admin = {"/load_model", "/unload_model"}
    allowed_admin = {
        p["appId"]
        for c in configs
        for p in c["accessControl"]["policies"]
        for op in p.get("operations", [])
        if op["name"] in admin and op["action"] == "allow"
    }
    assert allowed_admin == {"gateway"}
    for dep in rendered.of_kind("Deployment"):
        if _base_app(dep) == "inference":
            env = env_of(_app_container(dep))
            assert yaml.safe_load(env["AUTOGLM_INFERENCE_ADMIN_CALLERS"]) == ["gateway"]


def test_resiliency_covers_inference_and_state(rendered: Rendered) -> None:
    spec = rendered.get("Resiliency", "autoglm")["spec"]
    policies = spec["policies"]
    target = spec["targets"]["apps"]["inference"]
    assert target["circuitBreaker"] in policies["circuitBreakers"]
    assert target["timeout"] in policies["timeouts"]
    assert policies["retries"][target["retry"]]["policy"] == "exponential"
    state = spec["targets"]["components"][schemas.STATESTORE]["outbound"]
    assert state["circuitBreaker"] in policies["circuitBreakers"]
    assert state["retry"] in policies["retries"]


def test_subscriptions_match_the_apps(rendered: Rendered) -> None:
    expected = {
        schemas.REQUESTS_TOPIC: ("inference", ""),
        schemas.RESULTS_TOPIC: ("gateway", None),
        schemas.SNAPSHOTS_TOPIC: ("archiver", ""),
        schemas.AUDIT_TOPIC: ("archiver", ""),
    }
    subs = {s["spec"]["topic"]: s for s in rendered.of_kind("Subscription")}
    assert set(subs) == set(expected)
    for topic, (app, route) in expected.items():
        sub = subs[topic]
        assert sub["spec"]["pubsubname"] == schemas.PUBSUB
        assert sub["spec"]["deadLetterTopic"] == f"{topic}.deadletter"
        assert sub["scopes"] == [app]
        # gRPC apps register handlers without a route; HTTP apps name theirs.
        if route is not None:
            assert sub["spec"]["routes"]["default"] == route
        else:
            assert sub["spec"]["routes"]["default"].startswith("/")


def test_network_policies_default_deny(rendered: Rendered) -> None:
    deny = rendered.get("NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny
    gateway_in = rendered.get("NetworkPolicy", "gateway-from-ingress")["spec"]["ingress"]
    assert [p["port"] for rule in gateway_in for p in rule["ports"]] == [8080]


def test_scaling(rendered: Rendered) -> None:
    hpa = rendered.get("HorizontalPodAutoscaler", "gateway")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "gateway"
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    scaled = rendered.get("ScaledObject", "inference")["spec"]
    rendered.get("Deployment", scaled["scaleTargetRef"]["name"])
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "redis-streams"
    assert trigger["metadata"]["stream"] == schemas.REQUESTS_TOPIC
    # pubsub.redis' consumer group is the subscriber's app id.
    assert trigger["metadata"]["consumerGroup"] == "inference"
    auth = rendered.get("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["parameter"] == "password"
    assert not [
        h for h in rendered.of_kind("HorizontalPodAutoscaler") if h["metadata"]["name"] != "gateway"
    ], "KEDA owns inference's HPA"


def test_every_app_has_a_pdb(rendered: Rendered) -> None:
    covered = {
        p["spec"]["selector"]["matchLabels"]["app"] for p in rendered.of_kind("PodDisruptionBudget")
    }
    assert {_base_app(d) for d in rendered.of_kind("Deployment")} <= covered


def test_archiver_is_a_single_writer(rendered: Rendered) -> None:
    """One archiver pod at any time: its Bloom filter, head cache and staging files are
    per process, so a second writer on the volume (or a rollout surge) corrupts state."""
    archivers = [d for d in rendered.of_kind("Deployment") if _base_app(d) == "archiver"]
    assert len(archivers) == 1, f"{rendered.overlay}: one archiver Deployment, no canary"
    spec = archivers[0]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    assert not [
        s
        for s in rendered.of_kind("HorizontalPodAutoscaler") + rendered.of_kind("ScaledObject")
        if s["spec"]["scaleTargetRef"]["name"] == archivers[0]["metadata"]["name"]
    ], "nothing may scale the archiver"
    assert rendered.get("PersistentVolumeClaim", "archive")["spec"]["accessModes"] == [
        "ReadWriteOnce"
    ]
    # A single replica with minAvailable 1 would block every node drain.
    pdb = rendered.get("PodDisruptionBudget", "archiver")["spec"]
    assert pdb["selector"]["matchLabels"] == {"app": "archiver"}
    assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb


def test_istio(rendered: Rendered) -> None:
    mode = rendered.get("PeerAuthentication", "default")["spec"]["mtls"]["mode"]
    assert mode == ("PERMISSIVE" if rendered.overlay == "dev" else "STRICT")
    assert rendered.get("AuthorizationPolicy", "allow-nothing")["spec"] == {}
    rules = rendered.get("AuthorizationPolicy", "gateway-from-ingress")["spec"]["rules"]
    principals = [p for r in rules for f in r["from"] for p in f["source"]["principals"]]
    assert principals == ["cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"]
    vs = rendered.get("VirtualService", "autoglm-public")["spec"]
    gw = rendered.get("Gateway", "autoglm-public")["spec"]
    assert vs["hosts"] == gw["servers"][0]["hosts"]
    subsets = {s["name"] for s in rendered.get("DestinationRule", "gateway")["spec"]["subsets"]}
    for route in vs["http"]:
        assert "timeout" in route and "retries" in route, route["name"]
        # istiod reads a protobuf JSON Duration (seconds); the CRD wants >= 1ms, so a
        # stream's "no deadline" is a day (0s is refused by the API server).
        assert re.fullmatch(r"\d+(\.\d+)?s", route["timeout"]), route["timeout"]
        assert float(route["timeout"][:-1]) >= 0.001, route["name"]
        if route["name"] in ("stream", "canary-pinned"):
            assert float(route["timeout"][:-1]) >= 86400, route["name"]
        for dest in route["route"]:
            assert dest["destination"]["subset"] in subsets
    for dr in rendered.of_kind("DestinationRule"):
        assert dr["spec"]["trafficPolicy"]["outlierDetection"], dr["metadata"]["name"]
        assert dr["spec"]["trafficPolicy"]["connectionPool"], dr["metadata"]["name"]


def test_canary_split(all_rendered: dict[str, Rendered]) -> None:
    vs = all_rendered["prod-canary"].get("VirtualService", "autoglm-public")["spec"]
    api = next(r for r in vs["http"] if r["name"] == "api")
    weights = {d["destination"]["subset"]: d["weight"] for d in api["route"]}
    assert weights == {"stable": 90, "canary": 10}
    assert vs["http"][0]["name"] == "canary-pinned"
    canary = all_rendered["prod-canary"].get("Deployment", "gateway-canary")
    env = env_of(_app_container(canary))
    assert env["AUTOGLM_GATEWAY_INFERENCE_APP_ID"] == "inference-canary"
    all_rendered["prod-canary"].get("Deployment", "inference-canary")
    assert not all_rendered["prod"].of_kind("Deployment")[0]["metadata"]["name"].endswith("-canary")


def _inference(rendered: Rendered) -> list[Doc]:
    return [d for d in rendered.of_kind("Deployment") if _base_app(d) == "inference"]


@pytest.mark.parametrize("overlay", ["prod", "prod-canary"])
def test_prod_inference_on_gpu_and_signed(all_rendered: dict[str, Rendered], overlay: str) -> None:
    for dep in _inference(all_rendered[overlay]):
        pod = dep["spec"]["template"]["spec"]
        app = _app_container(dep)
        assert env_of(app)["AUTOGLM_INFERENCE_TRUST_UNSIGNED"] == "false"
        assert "AUTOGLM_CONFIG" not in env_of(app)
        assert app["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert pod["nodeSelector"]["nvidia.com/gpu.present"] == "true"
        assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
        assert app["image"].endswith("-cuda")
    quota = all_rendered[overlay].get("ResourceQuota", "autoglm")["spec"]["hard"]
    assert int(quota["requests.nvidia.com/gpu"]) >= 1


def test_edge_inference_is_small_and_arm64(all_rendered: dict[str, Rendered]) -> None:
    (edge,) = _inference(all_rendered["edge"])
    (base,) = _inference(all_rendered["dev"])
    pod = edge["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"autoglm.io/edge": "true", "kubernetes.io/arch": "arm64"}
    app = _app_container(edge)
    assert app["image"].endswith("-cpu")
    assert "nvidia.com/gpu" not in app["resources"]["limits"]

    def mem(c: Doc) -> float:
        value: Any = c["resources"]["limits"]["memory"]
        return float(str(value).removesuffix("Gi"))

    assert mem(app) < mem(_app_container(base))
    assert env_of(app)["AUTOGLM_INFERENCE_TRUST_UNSIGNED"] == "false"


def test_observability(rendered: Rendered) -> None:
    services = {s["metadata"]["name"]: s for s in rendered.of_kind("Service")}
    for monitor in rendered.of_kind("ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [
            s for s in services.values() if selector.items() <= s["metadata"]["labels"].items()
        ]
        assert matched, monitor["metadata"]["name"]
        ports = {p["name"] for s in matched for p in s["spec"]["ports"]}
        assert {e["port"] for e in monitor["spec"]["endpoints"]} <= ports
    assert rendered.of_kind("PodMonitor")
    rules = rendered.get("PrometheusRule", "autoglm")["spec"]["groups"]
    exprs = " ".join(r["expr"] for g in rules for r in g["rules"])
    for metric in (
        "autoglm_request_latency_seconds_bucket",  # p99 latency
        "autoglm_requests_total",  # error rate
        "autoglm_queue_depth",  # queue depth
        'app_id="archiver"',  # archive failures
        "DCGM_FI_DEV_FB_USED",  # GPU memory
    ):
        assert metric in exprs, metric
