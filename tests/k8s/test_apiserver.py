"""k8s/ against a real kube-apiserver (etcd, RBAC, default admission, the CRDs installed).

1. Every overlay passes `kubectl apply --server-side --dry-run=server` (strict field
   validation, CRD schemas and their CEL rules, admission): zero refusals.
2. Each overlay is then applied for real into namespace `autoglm`, one pod is created
   from every Deployment's template (no controller-manager runs, so nothing else would
   create them; the pods pass PodSecurity `restricted`, the ServiceAccount, LimitRanger
   and ResourceQuota admission) and the checks a schema cannot make run against what
   the server stored: selectors (evaluated by the server) pick the pods they are meant
   to, Dapr/Istio references resolve, referenced Secrets and ConfigMaps exist or are
   documented as the operator's, and each ServiceAccount has exactly the API access its
   app needs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import yaml

from tests.k8s.apiserver import APIServer, label_selector
from tests.k8s.manifests import K8S, OVERLAYS, Doc, Rendered
from tests.support.polling import wait_for

NS = "autoglm"
FIELD_MANAGER = "autoglm-tests"

#: Ports a Dapr-enabled pod listens on besides its own containers' (daprd: HTTP API,
#: gRPC API, internal gRPC between sidecars, health; metrics from dapr.io/metrics-port).
DAPRD_PORTS = {3500, 50001, 50002, 3501}

#: Secrets the cluster operator creates (k8s/README.md, "What the cluster must
#: provide"): (namespace, name) -> keys. Everything else referenced must be in k8s/.
OPERATOR_SECRETS: dict[tuple[str, str], set[str]] = {
    (NS, "redis-auth"): {"password"},
    (NS, "vault-ca"): {"ca.crt"},
    (NS, "dapr-api-token"): {"token"},
    (NS, "dapr-app-token"): {"token"},
    ("istio-system", "autoglm-public-tls"): set(),
}

#: What each app's ServiceAccount may do through the Kubernetes API beyond what every
#: authenticated identity may (discovery, self reviews): nothing. Component secrets
#: (secretKeyRef) are resolved by the Dapr operator, Dapr API tokens are env vars the
#: kubelet fills, Vault's Kubernetes auth reviews the audience-bound token with
#: Vault's own ServiceAccount, KEDA reads redis-auth with its own.
APP_NEEDS: dict[str, list[tuple[str, str, str]]] = {
    "gateway": [],
    "inference": [],
    "archiver": [],
    "otel-collector": [],
}

#: Requests no app ServiceAccount may make: (verb, group, resource).
FORBIDDEN = [
    ("get", "", "secrets"),
    ("list", "", "secrets"),
    ("get", "", "configmaps"),
    ("list", "", "pods"),
    ("create", "", "pods"),
    ("create", "", "pods/exec"),
    ("create", "", "serviceaccounts/token"),
    ("patch", "apps", "deployments"),
    ("list", "dapr.io", "components"),
    ("get", "dapr.io", "configurations"),
]


# -- 1. server-side dry run ------------------------------------------------------------


def _apply(server: APIServer, docs: list[Doc], dry_run: bool) -> tuple[list[str], list[str]]:
    """`kubectl apply --server-side` of ``docs``: (accepted lines, refusal lines). The
    server's warnings (`Warning: ...` on stderr, e.g. a deprecated API or field) count
    as refusals: a cluster that warns is telling us something is wrong."""
    args = ["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    result = server.kubectl(*args, stdin=yaml.safe_dump_all(docs))
    accepted = [line for line in result.stdout.splitlines() if line.strip()]
    refused = [line for line in result.stderr.splitlines() if line.strip()]
    if result.returncode != 0 and not refused:
        refused = [f"kubectl exited {result.returncode}"]
    return accepted, refused


def _ensure_namespace(server: APIServer, rendered: Rendered) -> None:
    # Namespaced objects of a dry run need their namespace to exist; the `default`
    # ServiceAccount is what the controller-manager (absent here) would add to it.
    default_sa = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "default", "namespace": NS},
    }
    _, refused = _apply(server, [*rendered.of_kind("Namespace"), default_sa], dry_run=False)
    assert not refused, "\n".join(refused)


def test_every_overlay_is_accepted_by_the_api_server(
    apiserver: APIServer, all_rendered: dict[str, Rendered]
) -> None:
    report = []
    for overlay, rendered in all_rendered.items():
        _ensure_namespace(apiserver, rendered)
        accepted, refused = _apply(apiserver, rendered.docs, dry_run=True)
        if refused or len(accepted) != len(rendered.docs):
            report.append(
                f"{overlay}: {len(accepted)} of {len(rendered.docs)} objects accepted; refused:\n  "
                + "\n  ".join(refused)
            )
    assert not report, "kube-apiserver refused objects:\n" + "\n".join(report)


def test_the_api_server_refuses_what_a_cluster_would(
    apiserver: APIServer, all_rendered: dict[str, Rendered]
) -> None:
    """The dry run is a real check: the Istio CRD's rule against `timeout: 0s`, an
    unknown field, and a pod PodSecurity `restricted` forbids are all refused."""
    rendered = all_rendered["dev"]
    _ensure_namespace(apiserver, rendered)
    vs = yaml.safe_load(yaml.safe_dump(rendered.get("VirtualService", "autoglm-public")))
    vs["spec"]["http"][0]["timeout"] = "0s"
    svc = yaml.safe_load(yaml.safe_dump(rendered.get("Service", "gateway")))
    svc["spec"]["prots"] = []
    root = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "root", "namespace": NS},
        "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {}}]},
    }
    for doc, expected in ((vs, "timeout"), (svc, "prots"), (root, "restricted")):
        accepted, refused = _apply(apiserver, [doc], dry_run=True)
        assert not accepted and any(expected in line for line in refused), (accepted, refused)


# -- 2. applied for real ---------------------------------------------------------------


@dataclass
class Live:
    """One overlay as stored by the API server, with one pod per Deployment."""

    server: APIServer
    rendered: Rendered
    pod_errors: list[str] = field(default_factory=list)

    @property
    def deployments(self) -> list[Doc]:
        return self.rendered.of_kind("Deployment")

    def pods_of_app(self, app: str) -> set[str]:
        """The pods an object named after ``app`` is meant to select: the app's
        Deployment and its canary (components/canary)."""
        names = {d["metadata"]["name"] for d in self.deployments}
        return {n for n in names if n in (app, f"{app}-canary")}

    def all_pods(self) -> set[str]:
        return {d["metadata"]["name"] for d in self.deployments}

    def dapr_pods(self) -> set[str]:
        return {
            d["metadata"]["name"]
            for d in self.deployments
            if _annotations(d).get("dapr.io/enabled") == "true"
        }

    def app_ids(self) -> set[str]:
        return {
            _annotations(d)["dapr.io/app-id"]
            for d in self.deployments
            if "dapr.io/app-id" in _annotations(d)
        }

    def select(self, selector: Doc) -> set[str]:
        return self.server.pods(NS, selector)

    def ports_of(self, pods: set[str]) -> set[int]:
        """Ports the given pods listen on (containers, native sidecars, daprd)."""
        ports: set[int] = set()
        for d in self.deployments:
            if d["metadata"]["name"] not in pods:
                continue
            spec = d["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                ports |= {p["containerPort"] for p in c.get("ports", [])}
            ann = _annotations(d)
            if ann.get("dapr.io/enabled") == "true":
                ports |= DAPRD_PORTS | {int(ann.get("dapr.io/metrics-port", "9090"))}
        return ports

    def exists(self, path: str) -> bool:
        try:
            self.server.get(path)
        except AssertionError as exc:
            if "HTTP 404" in str(exc):
                return False
            raise
        return True


def _annotations(deployment: Doc) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"].get("annotations", {}))


def _reset_namespace(server: APIServer, rendered: Rendered) -> None:
    """Delete what an overlay stored (not the Namespace: without a controller-manager
    a deleted namespace never finishes terminating)."""
    server.kubectl("delete", "pods", "--all", f"-n={NS}", "--wait=false", check=True)
    docs = [d for d in rendered.docs if d["kind"] != "Namespace"]
    server.kubectl(
        "delete", "--ignore-not-found", "--wait=false", "-f", "-",
        stdin=yaml.safe_dump_all(docs), check=True,
    )  # fmt: skip
    # The pvc-protection finalizer is removed by the controller-manager, absent here.
    for pvc in rendered.of_kind("PersistentVolumeClaim"):
        server.kubectl(
            "patch", "pvc", pvc["metadata"]["name"], f"-n={NS}", "--type=merge",
            "-p", '{"metadata":{"finalizers":null}}',
        )  # fmt: skip

    def empty() -> bool:
        for kind in ("pods", "persistentvolumeclaims", "services", "configmaps"):
            if server.get(f"/api/v1/namespaces/{NS}/{kind}")["items"]:
                # kube-root-ca.crt is published by the controller-manager only.
                return False
        return True

    wait_for(f"namespace {NS} emptied", empty, 60)


def _fill_quota_status(server: APIServer, rendered: Rendered) -> None:
    """What the quota controller does first: status.hard = spec.hard, nothing used.
    Until then the ResourceQuota admission refuses every object it counts."""
    for quota in rendered.of_kind("ResourceQuota"):
        name = quota["metadata"]["name"]
        hard = quota["spec"]["hard"]
        server.request(
            "PATCH",
            f"/api/v1/namespaces/{NS}/resourcequotas/{name}/status",
            {"status": {"hard": hard, "used": {k: "0" for k in hard}}},
            content_type="application/merge-patch+json",
        )


@pytest.fixture(scope="module", params=OVERLAYS)
def live(
    request: pytest.FixtureRequest, apiserver: APIServer, all_rendered: dict[str, Rendered]
) -> Iterator[Live]:
    rendered = all_rendered[request.param]
    try:
        _ensure_namespace(apiserver, rendered)
        # Quota first, as the quota controller would have it before anything it counts.
        policy = [d for d in rendered.docs if d["kind"] in ("ResourceQuota", "LimitRange")]
        _, refused = _apply(apiserver, policy, dry_run=False)
        assert not refused, "\n".join(refused)
        _fill_quota_status(apiserver, rendered)
        _, refused = _apply(apiserver, rendered.docs, dry_run=False)
        assert not refused, f"{rendered.overlay}: refused:\n" + "\n".join(refused)
        live = Live(apiserver, rendered)
        for d in live.deployments:
            template = d["spec"]["template"]
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": d["metadata"]["name"], **template["metadata"]},
                "spec": template["spec"],
            }
            try:
                apiserver.post(f"/api/v1/namespaces/{NS}/pods", pod)
            except AssertionError as exc:
                live.pod_errors.append(f"pod of Deployment {d['metadata']['name']}: {exc}")
        yield live
    finally:
        # Also after a failed setup: the next overlay starts from an empty namespace.
        _reset_namespace(apiserver, rendered)


def test_every_deployment_template_is_admitted_as_a_pod(live: Live) -> None:
    """PodSecurity `restricted`, ServiceAccount, LimitRanger and ResourceQuota admission
    of the pods the Deployments will create (before Dapr and Istio inject sidecars)."""
    assert not live.pod_errors, "\n".join(live.pod_errors)


def test_deployments_select_only_their_own_pods(live: Live) -> None:
    for d in live.deployments:
        name = d["metadata"]["name"]
        assert live.select(d["spec"]["selector"]) == {name}, name


def test_services_pdbs_and_monitors_select_their_app(live: Live) -> None:
    problems = []
    for kind in ("Service", "PodDisruptionBudget"):
        for doc in live.rendered.of_kind(kind):
            name = doc["metadata"]["name"]
            sel = doc["spec"].get("selector")
            if not sel:
                # A Service without one selects no pod; a PDB's empty one, every pod.
                problems.append(f"{kind}/{name}: no selector")
                continue
            selector = sel if kind == "PodDisruptionBudget" else {"matchLabels": sel}
            got, want = live.select(selector), live.pods_of_app(name)
            if not want or got != want:
                problems.append(f"{kind}/{name} selects {sorted(got)}, meant {sorted(want)}")
            if kind == "Service":
                for port in doc["spec"]["ports"]:
                    target = port.get("targetPort", port["port"])
                    if not _pods_have_port(live, want, target):
                        problems.append(f"Service/{name}: no container port {target}")
    for monitor in live.rendered.of_kind("ServiceMonitor"):
        name = monitor["metadata"]["name"]
        services = live.server.get(
            f"/api/v1/namespaces/{NS}/services",
            labelSelector=label_selector(monitor["spec"]["selector"]),
        )["items"]
        names = {s["metadata"]["name"] for s in services}
        if names != {name}:
            problems.append(f"ServiceMonitor/{name} selects Services {sorted(names)}")
        ports = {p.get("name") for s in services for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint["port"] not in ports:
                problems.append(f"ServiceMonitor/{name}: no Service port {endpoint['port']}")
    for monitor in live.rendered.of_kind("PodMonitor"):
        name = monitor["metadata"]["name"]
        got = live.select(monitor["spec"]["selector"])
        # daprd's metrics port is named dapr-metrics by the Dapr sidecar injector.
        if name == "daprd" and got != live.dapr_pods():
            problems.append(f"PodMonitor/daprd selects {sorted(got)}, not every Dapr pod")
    assert not problems, f"{live.rendered.overlay}:\n" + "\n".join(problems)


def _pods_have_port(live: Live, pods: set[str], port: int | str) -> bool:
    for d in live.deployments:
        if d["metadata"]["name"] not in pods:
            continue
        ports = [p for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        if not any(port in (p.get("name"), p["containerPort"]) for p in ports):
            return False
    return True


def test_scalers_target_one_deployment_each(live: Live) -> None:
    targets: dict[str, str] = {}
    for scaler in [*live.rendered.of_kind("HorizontalPodAutoscaler"),
                   *live.rendered.of_kind("ScaledObject")]:  # fmt: skip
        name = f"{scaler['kind']}/{scaler['metadata']['name']}"
        ref = scaler["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment", name
        assert ref.get("apiVersion", "apps/v1") == "apps/v1", name
        target = ref["name"]
        assert target not in targets, f"{name} and {targets[target]} both scale {target}"
        targets[target] = name
        # The scale subresource is what the HPA (KEDA's too) reads and writes.
        scale = live.server.get(f"/apis/apps/v1/namespaces/{NS}/deployments/{target}/scale")
        assert live.server.pods(NS, scale["status"]["selector"]) == {target}, name
        low = scaler["spec"].get("minReplicas", scaler["spec"].get("minReplicaCount", 1))
        high = scaler["spec"].get("maxReplicas", scaler["spec"].get("maxReplicaCount"))
        assert low <= scale["spec"]["replicas"] <= high, f"{name}: replicas outside its range"


def _subject_app(live: Live, policy_name: str) -> str | None:
    """The app a policy is named after (`gateway-to-inference` -> gateway), if any."""
    apps = sorted(
        {d["metadata"]["name"].removesuffix("-canary") for d in live.deployments},
        key=len,
        reverse=True,
    )
    for app in apps:
        if policy_name == app or policy_name.startswith(f"{app}-"):
            return app
    return None


def _whole_apps(live: Live, pods: set[str]) -> bool:
    """A peer selects whole apps (stable and canary together), never half of one."""
    return all(live.pods_of_app(p.removesuffix("-canary")) <= pods for p in pods)


def test_network_policies_select_the_pods_they_are_meant_to(live: Live) -> None:
    problems = []
    for np in live.rendered.of_kind("NetworkPolicy"):
        name = np["metadata"]["name"]
        subject = live.select(np["spec"]["podSelector"])
        app = _subject_app(live, name)
        if not subject:
            problems.append(f"{name}: selects no pod")
        elif app is not None and subject != live.pods_of_app(app):
            problems.append(f"{name}: selects {sorted(subject)}, meant the {app} pods")
        elif not _whole_apps(live, subject):
            problems.append(f"{name}: selects part of an app: {sorted(subject)}")
        for rule in np["spec"].get("ingress", []):
            for port in rule.get("ports", []):
                if port["port"] not in live.ports_of(subject):
                    problems.append(f"{name}: ingress port {port['port']}: nothing listens")
            problems += _check_peers(live, name, rule.get("from", []))
        for rule in np["spec"].get("egress", []):
            peers = rule.get("to", [])
            problems += _check_peers(live, name, peers)
            local = [p for p in peers if "podSelector" in p and "namespaceSelector" not in p]
            if local:
                listening = set().union(
                    *(live.ports_of(live.select(p["podSelector"])) for p in local)
                )
                for port in rule.get("ports", []):
                    if port["port"] not in listening:
                        problems.append(f"{name}: egress port {port['port']}: no peer listens")
    assert not problems, f"{live.rendered.overlay}:\n" + "\n".join(problems)


def _check_peers(live: Live, name: str, peers: list[Doc]) -> list[str]:
    problems = []
    for peer in peers:
        if "podSelector" in peer and "namespaceSelector" not in peer:
            pods = live.select(peer["podSelector"])
            if not pods:
                problems.append(f"{name}: peer {peer['podSelector']} selects no pod")
            elif not _whole_apps(live, pods):
                problems.append(f"{name}: peer selects part of an app: {sorted(pods)}")
        ns_sel = peer.get("namespaceSelector", {}).get("matchLabels", {})
        if ns_sel and set(ns_sel) != {"kubernetes.io/metadata.name"}:
            problems.append(f"{name}: namespaces selected by {ns_sel}, not by name")
    return problems


def _service_of_host(live: Live, host: str) -> tuple[str, Doc | None]:
    short = host.removesuffix(f".{NS}.svc.cluster.local")
    assert short != host and "." not in short, f"host {host} outside namespace {NS}"
    docs = [s for s in live.rendered.of_kind("Service") if s["metadata"]["name"] == short]
    return short, (docs[0] if docs else None)


def test_istio_policies_select_the_pods_they_are_meant_to(live: Live) -> None:
    problems = []
    service_accounts = {sa["metadata"]["name"] for sa in live.rendered.of_kind("ServiceAccount")}
    used_sas = {d["spec"]["template"]["spec"]["serviceAccountName"] for d in live.deployments}
    for ap in live.rendered.of_kind("AuthorizationPolicy"):
        name = ap["metadata"]["name"]
        spec = ap["spec"]
        subject = live.select(spec["selector"]) if "selector" in spec else live.all_pods()
        app = _subject_app(live, name)
        if not subject:
            problems.append(f"AuthorizationPolicy/{name}: selects no pod")
        elif app is not None and subject != live.pods_of_app(app):
            problems.append(f"AuthorizationPolicy/{name}: selects {sorted(subject)}")
        for rule in spec.get("rules", []):
            for to in rule.get("to", []):
                for port in to.get("operation", {}).get("ports", []):
                    if int(port) not in live.ports_of(subject):
                        problems.append(f"AuthorizationPolicy/{name}: port {port}: nothing listens")
            for src in rule.get("from", []):
                for principal in src.get("source", {}).get("principals", []):
                    m = re.fullmatch(r"cluster\.local/ns/([^/]+)/sa/([^/]+)", principal)
                    if not m:
                        problems.append(f"AuthorizationPolicy/{name}: principal {principal}")
                    elif m[1] == NS and (m[2] not in service_accounts or m[2] not in used_sas):
                        problems.append(f"AuthorizationPolicy/{name}: no pod runs as {principal}")
    dr_subsets: dict[str, dict[str, Doc]] = {}
    for dr in live.rendered.of_kind("DestinationRule"):
        name, host = dr["metadata"]["name"], dr["spec"]["host"]
        short, svc = _service_of_host(live, host)
        if svc is None:
            # <app-id>-dapr: the headless Service the Dapr sidecar injector creates.
            if not (short.endswith("-dapr") and short.removesuffix("-dapr") in live.app_ids()):
                problems.append(f"DestinationRule/{name}: no Service {host}")
            continue
        dr_subsets[host] = {s["name"]: s["labels"] for s in dr["spec"].get("subsets", [])}
    gateways = {g["metadata"]["name"] for g in live.rendered.of_kind("Gateway")}
    for vs in live.rendered.of_kind("VirtualService"):
        name = vs["metadata"]["name"]
        for gw in vs["spec"].get("gateways", []):
            if gw not in gateways:
                problems.append(f"VirtualService/{name}: no Gateway {gw}")
        for route in vs["spec"]["http"]:
            for dest in route["route"]:
                d = dest["destination"]
                short, svc = _service_of_host(live, d["host"])
                if svc is None:
                    problems.append(f"VirtualService/{name}: no Service {d['host']}")
                    continue
                if d["port"]["number"] not in {p["port"] for p in svc["spec"]["ports"]}:
                    problems.append(f"VirtualService/{name}: {short} has no port {d['port']}")
                if "subset" in d:
                    labels = dr_subsets.get(d["host"], {}).get(d["subset"])
                    if labels is None:
                        problems.append(f"VirtualService/{name}: no subset {d['subset']}")
                        continue
                    pods = live.select({"matchLabels": {**svc["spec"]["selector"], **labels}})
                    if not pods:
                        problems.append(f"VirtualService/{name}: subset {d['subset']} is empty")
    assert not problems, f"{live.rendered.overlay}:\n" + "\n".join(problems)


def test_dapr_references_resolve(live: Live) -> None:
    problems = []
    app_ids = live.app_ids()
    base = f"/apis/dapr.io/v1alpha1/namespaces/{NS}"
    components = {c["metadata"]["name"]: c for c in live.rendered.of_kind("Component")}
    stores = {n for n, c in components.items() if c["spec"]["type"].startswith("secretstores.")}
    for d in live.deployments:
        ann = _annotations(d)
        if ann.get("dapr.io/enabled") != "true":
            continue
        name = d["metadata"]["name"]
        config = ann.get("dapr.io/config")
        if config and not live.exists(f"{base}/configurations/{config}"):
            problems.append(f"{name}: dapr.io/config {config} does not exist")
        volumes = {v["name"] for v in d["spec"]["template"]["spec"]["volumes"]}
        for mount in filter(None, ann.get("dapr.io/volume-mounts", "").split(",")):
            if mount.split(":")[0] not in volumes:
                problems.append(f"{name}: dapr.io/volume-mounts names no volume: {mount}")
        if not _pods_have_port(live, {name}, int(ann["dapr.io/app-port"])):
            problems.append(
                f"{name}: dapr.io/app-port {ann['dapr.io/app-port']} not a container port"
            )
    for cname, comp in components.items():
        if not live.exists(f"{base}/components/{cname}"):
            problems.append(f"Component/{cname} not stored")
        for scope in comp.get("scopes", []):
            if scope not in app_ids:
                problems.append(f"Component/{cname}: scope {scope} is no app id")
        store = comp.get("auth", {}).get("secretStore", "kubernetes")
        if store != "kubernetes" and store not in stores:
            problems.append(f"Component/{cname}: no secret store {store}")
        # A file daprd reads (vaultTokenMountPath) lies under a dapr.io/volume-mounts
        # path of every app in the component's scope.
        for item in comp["spec"].get("metadata", []):
            path = str(item.get("value", ""))
            if not path.startswith("/"):
                continue
            for d in live.deployments:
                ann = _annotations(d)
                app_id = ann.get("dapr.io/app-id")
                if app_id is None or app_id not in comp.get("scopes", [app_id]):
                    continue
                mounts = [
                    m.split(":")[1] for m in ann.get("dapr.io/volume-mounts", "").split(",") if m
                ]
                if not any(path.startswith(m.rstrip("/") + "/") for m in mounts):
                    problems.append(
                        f"Component/{cname}: {item['name']} {path} is not mounted into "
                        f"daprd of {d['metadata']['name']}"
                    )
    for sub in live.rendered.of_kind("Subscription"):
        sname = sub["metadata"]["name"]
        pubsub = components.get(sub["spec"]["pubsubname"])
        if pubsub is None or not pubsub["spec"]["type"].startswith("pubsub."):
            problems.append(f"Subscription/{sname}: no pub/sub {sub['spec']['pubsubname']}")
        for scope in sub.get("scopes", []):
            if scope not in app_ids:
                problems.append(f"Subscription/{sname}: scope {scope} is no app id")
            elif pubsub is not None and scope not in pubsub.get("scopes", [scope]):
                problems.append(
                    f"Subscription/{sname}: {scope} is not in {pubsub['metadata']['name']}'s scopes"
                )
    for res in live.rendered.of_kind("Resiliency"):
        rname = res["metadata"]["name"]
        targets = res["spec"].get("targets", {})
        for app in [*res.get("scopes", []), *targets.get("apps", {})]:
            if app not in app_ids:
                problems.append(f"Resiliency/{rname}: {app} is no app id")
        for comp_name in targets.get("components", {}):
            if comp_name not in components:
                problems.append(f"Resiliency/{rname}: no Component {comp_name}")
    for conf in live.rendered.of_kind("Configuration"):
        cfg = conf["metadata"]["name"]
        for policy in conf["spec"].get("accessControl", {}).get("policies", []):
            if policy["appId"] not in app_ids:
                problems.append(f"Configuration/{cfg}: ACL for unknown app {policy['appId']}")
        for scope in conf["spec"].get("secrets", {}).get("scopes", []):
            if scope["storeName"] != "kubernetes" and scope["storeName"] not in stores:
                problems.append(f"Configuration/{cfg}: no secret store {scope['storeName']}")
    assert not problems, f"{live.rendered.overlay}:\n" + "\n".join(problems)


def _references(live: Live) -> Iterator[tuple[str, str, str, str | None, str]]:
    """(kind, namespace, name, key or None, where) of every Secret/ConfigMap reference."""
    for d in live.deployments:
        dname = f"Deployment/{d['metadata']['name']}"
        spec = d["spec"]["template"]["spec"]
        for v in spec.get("volumes", []):
            if "secret" in v:
                yield "Secret", NS, v["secret"]["secretName"], None, dname
            if "configMap" in v:
                yield "ConfigMap", NS, v["configMap"]["name"], None, dname
            for src in v.get("projected", {}).get("sources", []):
                if "secret" in src:
                    yield "Secret", NS, src["secret"]["name"], None, dname
                if "configMap" in src:
                    yield "ConfigMap", NS, src["configMap"]["name"], None, dname
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            for env in c.get("env", []):
                ref = env.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    yield (
                        "Secret",
                        NS,
                        ref["secretKeyRef"]["name"],
                        ref["secretKeyRef"]["key"],
                        dname,
                    )
                if "configMapKeyRef" in ref:
                    r = ref["configMapKeyRef"]
                    yield "ConfigMap", NS, r["name"], r["key"], dname
            for src in c.get("envFrom", []):
                for kind, key in (("Secret", "secretRef"), ("ConfigMap", "configMapRef")):
                    if key in src:
                        yield kind, NS, src[key]["name"], None, dname
            # A file argument under a ConfigMap mount names one of its keys.
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            cms = {
                v["name"]: v["configMap"]["name"]
                for v in spec.get("volumes", [])
                if "configMap" in v
            }
            for arg in c.get("args", []):
                for path, vol in mounts.items():
                    m = re.search(re.escape(path) + r"/([^/\s]+)$", arg)
                    if m and vol in cms:
                        yield "ConfigMap", NS, cms[vol], m[1], f"{dname} args"
        ann = _annotations(d)
        for key in ("dapr.io/api-token-secret", "dapr.io/app-token-secret"):
            if key in ann:
                yield "Secret", NS, ann[key], "token", f"{dname} {key}"
    for comp in live.rendered.of_kind("Component"):
        if comp.get("auth", {}).get("secretStore", "kubernetes") != "kubernetes":
            continue
        for item in comp["spec"].get("metadata", []):
            if "secretKeyRef" in item:
                ref = item["secretKeyRef"]
                yield (
                    "Secret",
                    NS,
                    ref["name"],
                    ref.get("key"),
                    f"Component/{comp['metadata']['name']}",
                )
    for ta in live.rendered.of_kind("TriggerAuthentication"):
        for ref in ta["spec"].get("secretTargetRef", []):
            yield (
                "Secret",
                NS,
                ref["name"],
                ref["key"],
                f"TriggerAuthentication/{ta['metadata']['name']}",
            )
    for gw in live.rendered.of_kind("Gateway"):
        for server in gw["spec"]["servers"]:
            cred = server.get("tls", {}).get("credentialName")
            if cred:
                # Read by the ingress gateway, from its own namespace.
                yield "Secret", "istio-system", cred, None, f"Gateway/{gw['metadata']['name']}"


def test_referenced_secrets_and_configmaps_exist(live: Live) -> None:
    readme = (K8S / "README.md").read_text()
    problems, used = [], set()
    for kind, ns, name, key, where in _references(live):
        stored = {f"{d['kind']}/{d['metadata']['name']}": d for d in live.rendered.docs}.get(
            f"{kind}/{name}"
        )
        if stored is not None and ns == NS:
            assert live.exists(f"/api/v1/namespaces/{NS}/{kind.lower()}s/{name}")
            data = {**stored.get("data", {}), **stored.get("stringData", {})}
            if key is not None and key not in data:
                problems.append(f"{where}: {kind} {name} has no key {key}")
        elif kind == "Secret" and (ns, name) in OPERATOR_SECRETS:
            used.add((ns, name))
            if key is not None and key not in OPERATOR_SECRETS[(ns, name)]:
                problems.append(f"{where}: operator Secret {name}: key {key} not documented")
        else:
            problems.append(f"{where}: {kind} {ns}/{name} neither in k8s/ nor operator-provided")
    for (ns, name), keys in OPERATOR_SECRETS.items():
        if (ns, name) not in used:
            problems.append(f"operator Secret {ns}/{name} is referenced nowhere")
        if f"`{name}`" not in readme or any(f"`{k}`" not in readme for k in keys):
            problems.append(f"k8s/README.md does not document Secret {name} ({sorted(keys)})")
    assert not problems, f"{live.rendered.overlay}:\n" + "\n".join(problems)


def _rules(server: APIServer, user: str) -> list[Doc]:
    review = server.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
         "spec": {"namespace": NS}},
        headers={"Impersonate-User": user},
    )  # fmt: skip
    rules = review["status"]["resourceRules"] + review["status"]["nonResourceRules"]
    return sorted(rules, key=repr)


def _allowed(server: APIServer, sa: str, verb: str, group: str, resource: str) -> bool:
    sub, _, subresource = resource.partition("/")
    review = server.post(
        "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": f"system:serviceaccount:{NS}:{sa}",
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{NS}",
                           "system:authenticated"],
                "resourceAttributes": {"namespace": NS, "verb": verb, "group": group,
                                       "resource": sub, "subresource": subresource},
            },
        },
    )  # fmt: skip
    return bool(review["status"].get("allowed"))


def test_service_accounts_have_exactly_what_their_app_needs(live: Live) -> None:
    server = live.server
    accounts = {sa["metadata"]["name"]: sa for sa in live.rendered.of_kind("ServiceAccount")}
    assert set(accounts) == set(APP_NEEDS), "an app ServiceAccount without a stated need"
    for d in live.deployments:
        spec = d["spec"]["template"]["spec"]
        assert spec.get("serviceAccountName") in accounts, d["metadata"]["name"]
    # Baseline: what any ServiceAccount without bindings may do (discovery, reviews).
    server.kubectl("create", "serviceaccount", "rbac-baseline", f"-n={NS}")
    baseline = _rules(server, f"system:serviceaccount:{NS}:rbac-baseline")
    problems = []
    for name, needs in APP_NEEDS.items():
        user = f"system:serviceaccount:{NS}:{name}"
        for verb, group, resource in needs:
            if not _allowed(server, name, verb, group, resource):
                problems.append(f"{name} may not {verb} {group}/{resource}, which it needs")
        if not needs and _rules(server, user) != baseline:
            problems.append(f"{name} has API access beyond the baseline: {_rules(server, user)}")
        for verb, group, resource in FORBIDDEN:
            if (verb, group, resource) not in needs and _allowed(
                server, name, verb, group, resource
            ):
                problems.append(f"{name} may {verb} {group or 'core'}/{resource}")
        if accounts[name].get("automountServiceAccountToken") is not False:
            problems.append(f"ServiceAccount {name} automounts its API token")
    server.kubectl("delete", "serviceaccount", "rbac-baseline", f"-n={NS}")
    # Aggregated ClusterRoles (view, edit, admin) get their rules from the
    # controller-manager, absent here: a binding to an app's account is a finding even
    # when the live review above cannot see what it would grant.
    for binding in [*live.rendered.of_kind("RoleBinding"),
                    *live.rendered.of_kind("ClusterRoleBinding")]:  # fmt: skip
        for subject in binding.get("subjects", []):
            if subject["kind"] == "ServiceAccount" and not APP_NEEDS.get(subject["name"], [1]):
                problems.append(
                    f"{binding['kind']}/{binding['metadata']['name']} grants "
                    f"{binding['roleRef']['name']} to {subject['name']}, which needs nothing"
                )
    assert not problems, f"{live.rendered.overlay}:\n" + "\n".join(problems)


def test_label_selectors_are_written_as_the_server_reads_them() -> None:
    selector = {
        "matchLabels": {"app": "gateway", "track": "stable"},
        "matchExpressions": [
            {"key": "app", "operator": "In", "values": ["gateway", "inference"]},
            {"key": "tier", "operator": "NotIn", "values": ["x"]},
            {"key": "version", "operator": "Exists"},
            {"key": "canary", "operator": "DoesNotExist"},
        ],
    }
    assert label_selector(selector) == (
        "app=gateway,track=stable,app in (gateway,inference),tier notin (x),version,!canary"
    )
    assert label_selector({}) == ""
