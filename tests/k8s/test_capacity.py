"""The namespace's ResourceQuota and LimitRange leave room for what the overlay scales to.

A quota is enforced at pod creation: one that is too small does not fail `kubectl
apply`, it silently stops the HPA/KEDA scale-up or a rollout's surge pod later. So each
overlay must fit every Deployment at its scaler's maximum (or its replicas), plus the
largest pod a rolling update adds, counting what Dapr and Istio inject: daprd sized by
`dapr.io/sidecar-*`, Envoy by `sidecar.istio.io/proxy*` (required on every meshed pod,
so the sum does not depend on the mesh's defaults).
"""

from __future__ import annotations

import re

from tests.k8s.manifests import Doc, Rendered, containers

QUANTITY = re.compile(r"^([0-9.]+)(m|Ki|Mi|Gi|Ti|k|M|G)?$")
FACTORS = {
    None: 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
}
#: Quota keys this check accounts for.
KEYS = ("requests.cpu", "limits.cpu", "requests.memory", "limits.memory")
GPU = "requests.nvidia.com/gpu"
SIDECARS = {
    "dapr": {
        "requests.cpu": "dapr.io/sidecar-cpu-request",
        "limits.cpu": "dapr.io/sidecar-cpu-limit",
        "requests.memory": "dapr.io/sidecar-memory-request",
        "limits.memory": "dapr.io/sidecar-memory-limit",
    },
    "istio": {
        "requests.cpu": "sidecar.istio.io/proxyCPU",
        "limits.cpu": "sidecar.istio.io/proxyCPULimit",
        "requests.memory": "sidecar.istio.io/proxyMemory",
        "limits.memory": "sidecar.istio.io/proxyMemoryLimit",
    },
}


def quantity(value: object) -> float:
    m = QUANTITY.match(str(value))
    assert m, f"not a quantity: {value}"
    return float(m[1]) * FACTORS[m[2]]


def pod_usage(rendered: Rendered, deployment: Doc) -> dict[str, float]:
    """What one pod of ``deployment`` counts against the quota, injected sidecars included."""
    usage = dict.fromkeys((*KEYS, GPU), 0.0)
    name = deployment["metadata"]["name"]
    for c in containers(deployment):
        for kind in ("requests", "limits"):
            for resource, value in c.get("resources", {}).get(kind, {}).items():
                key = f"{kind}.{resource}"
                if key in usage:
                    usage[key] += quantity(value)
    ann = deployment["spec"]["template"]["metadata"].get("annotations", {})
    meshed = rendered.get("Namespace", "autoglm")["metadata"]["labels"].get("istio-injection")
    injected = {"dapr": ann.get("dapr.io/enabled") == "true", "istio": meshed == "enabled"}
    for sidecar, keys in SIDECARS.items():
        if not injected[sidecar]:
            continue
        for key, annotation in keys.items():
            assert annotation in ann, f"{rendered.overlay}: {name} has no {annotation}"
            usage[key] += quantity(ann[annotation])
    return usage


def test_quota_fits_every_deployment_at_its_maximum(rendered: Rendered) -> None:
    scale_max = {
        h["spec"]["scaleTargetRef"]["name"]: h["spec"]["maxReplicas"]
        for h in rendered.of_kind("HorizontalPodAutoscaler")
    }
    scale_max |= {
        s["spec"]["scaleTargetRef"]["name"]: s["spec"]["maxReplicaCount"]
        for s in rendered.of_kind("ScaledObject")
    }
    total = dict.fromkeys((*KEYS, GPU, "pods"), 0.0)
    surge = dict.fromkeys(total, 0.0)
    for d in rendered.of_kind("Deployment"):
        per_pod = pod_usage(rendered, d) | {"pods": 1.0}
        replicas = scale_max.get(d["metadata"]["name"], d["spec"].get("replicas", 1))
        rolling = d["spec"].get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
        for key, value in per_pod.items():
            total[key] += replicas * value
            if rolling:
                # One rollout at a time: the largest extra pod any Deployment adds.
                surge[key] = max(surge[key], value)
    hard = rendered.get("ResourceQuota", "autoglm")["spec"]["hard"]
    short = [
        f"{key}: needs {total[key] + surge[key]:.3g}, quota {quantity(hard[key]):.3g}"
        for key in total
        if key in hard and total[key] + surge[key] > quantity(hard[key])
    ]
    assert not short, f"{rendered.overlay}: the quota stops scaling before the maximum:\n" + (
        "\n".join(short)
    )


def test_limit_range_admits_every_container(rendered: Rendered) -> None:
    limit_max = {
        k: quantity(v)
        for lr in rendered.of_kind("LimitRange")
        for item in lr["spec"]["limits"]
        if item["type"] == "Container"
        for k, v in item.get("max", {}).items()
    }
    for d in rendered.of_kind("Deployment"):
        for c in containers(d):
            for resource, value in c.get("resources", {}).get("limits", {}).items():
                if resource in limit_max:
                    assert quantity(value) <= limit_max[resource], (
                        d["metadata"]["name"],
                        c["name"],
                    )


def test_quantities() -> None:
    assert quantity("250m") == 0.25
    assert quantity("2") == 2.0
    assert quantity("1Gi") == 2.0**30
    assert quantity("512Mi") == 2.0**29
