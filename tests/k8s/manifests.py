"""Rendering of k8s/ overlays and schema validation helpers for the k8s tests.

Everything here works offline once `tools/build.sh kustomize crds` has run: kustomize
renders, kubernetes-validate holds the core OpenAPI schemas, and the CRDs of Dapr,
Istio, KEDA and prometheus-operator come from the Go modules that publish them.
"""

from __future__ import annotations

import copy
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
TOOLS_BIN = REPO / ".tools" / "bin"
CRDS_DIR = REPO / ".tools" / "crds"
OVERLAYS = ("dev", "prod", "prod-canary", "edge")
#: Oldest Kubernetes the manifests target (native sidecars need >= 1.29).
KUBERNETES_VERSION = "1.33"

Doc = dict[str, Any]


def build_tools(*targets: str) -> None:
    """`tools/build.sh TARGETS` (no-op when current); fail loudly, never skip."""
    proc = subprocess.run(
        [str(REPO / "tools" / "build.sh"), *targets],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"tools/build.sh {' '.join(targets)} failed (Go and the module proxy are needed):\n"
            + proc.stdout
            + proc.stderr
        )


def ensure_tools() -> Path:
    """Build kustomize and fetch the CRDs."""
    build_tools("kustomize", "crds")
    return TOOLS_BIN / "kustomize"


def render(kustomize: Path, overlay: str) -> list[Doc]:
    proc = subprocess.run(
        [str(kustomize), "build", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"kustomize build {overlay} failed:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@dataclass(frozen=True)
class Rendered:
    overlay: str
    docs: list[Doc]

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: expected one {kind}/{name}, got {len(found)}"
        return found[0]


def group_of(api_version: str) -> str:
    return api_version.split("/")[0] if "/" in api_version else ""


def validate_core(doc: Doc) -> None:
    """Strict OpenAPI validation (unknown fields are errors) of a built-in object."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        raise AssertionError(
            f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}"
        ) from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise AssertionError(exc.message) from None


def _strict(node: Any) -> Any:
    """A CRD's structural schema as JSON Schema that rejects unknown fields.

    The API server prunes unknown fields silently; a typo in a manifest would be lost
    without a trace, so the tests treat them as errors, as `kubectl --validate=strict`.
    """
    if isinstance(node, list):
        return [_strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _strict(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields", False)
    if "properties" in node and "additionalProperties" not in node and not preserve:
        out["additionalProperties"] = False
    return out


class CRDSchemas:
    """JSON Schemas of the custom resources, by (group, version, kind)."""

    def __init__(self, crds_dir: Path) -> None:
        self.schemas: dict[tuple[str, str, str], Doc] = {}
        for path in sorted(crds_dir.glob("*.yaml")):
            for crd in yaml.safe_load_all(path.read_text()):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    if not version.get("served"):
                        continue
                    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                    # metadata is ObjectMeta, checked by the API server, not the CRD.
                    props = schema.setdefault("properties", {})
                    props.pop("metadata", None)
                    # Some CRDs (Istio's) leave the type fields out of their schema.
                    props.setdefault("apiVersion", {"type": "string"})
                    props.setdefault("kind", {"type": "string"})
                    key = (spec["group"], version["name"], spec["names"]["kind"])
                    self.schemas[key] = _strict(schema)
        if not self.schemas:
            raise RuntimeError(f"no CRDs under {crds_dir}; run tools/build.sh crds")

    def groups(self) -> set[str]:
        return {g for g, _, _ in self.schemas}

    def validate(self, doc: Doc) -> None:
        group, _, version = doc["apiVersion"].partition("/")
        key = (group, version, doc["kind"])
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        assert key in self.schemas, f"{name}: no served CRD version {doc['apiVersion']}"
        body = {k: v for k, v in doc.items() if k != "metadata"}
        errors = sorted(jsonschema.Draft7Validator(self.schemas[key]).iter_errors(body), key=str)
        assert not errors, f"{name}: " + "; ".join(
            f"{'.'.join(str(p) for p in e.path)}: {e.message}" for e in errors
        )


def containers(deployment: Doc) -> Iterator[Doc]:
    """Every container of a Deployment's pod, native sidecars (initContainers) included."""
    spec = deployment["spec"]["template"]["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}
