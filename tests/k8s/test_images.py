"""Static checks of the Dockerfile and the bake file (no Docker engine runs here)."""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field

from tests.k8s.manifests import REPO, Rendered

REGISTRY_IMAGE = re.compile(r"^ghcr\.io/autoglm-mesh/")
#: A tag naming an exact release (x.y.z), optionally with a sha256 digest.
PINNED = re.compile(r"^[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?$")
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|build-essential|make|clang|cargo|rustc|git)\b")
#: What the Kubernetes probes and the image HEALTHCHECK both look at, per target.
HEALTH = {
    "gateway": "http://127.0.0.1:8080/healthz",
    "archiver": "('127.0.0.1', 50052)",
    "inference-cpu": "('127.0.0.1', 50051)",
    "inference-cuda": "('127.0.0.1', 50051)",
}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile() -> tuple[dict[str, str], dict[str, Stage]]:
    text = (REPO / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for line in joined.splitlines():
        if not line.strip():
            continue
        op, _, rest = line.strip().partition(" ")
        op = op.upper()
        if op == "ARG" and current is None:
            key, _, value = rest.partition("=")
            args[key] = value
        elif op == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest.strip(), flags=re.IGNORECASE)
            assert match, f"unnamed stage: FROM {rest}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], match.group(1))
            current = stages[match.group(2)] = Stage(match.group(2), base)
        else:
            assert current is not None, f"{op} before FROM"
            current.instructions.append((op, rest))
    return args, stages


def chain(stages: dict[str, Stage], name: str) -> list[Stage]:
    """The stage and its parents (FROM <stage>), nearest first."""
    out = [stages[name]]
    while out[-1].base in stages:
        out.append(stages[out[-1].base])
    return out


def bake_tags() -> dict[str, tuple[str, list[str]]]:
    """Bake target -> (image tag, platforms), variables at their defaults."""
    bake = json.loads((REPO / "docker-bake.json").read_text())
    variables = {k: v["default"] for k, v in bake["variable"].items()}
    out = {}
    for name, target in bake["target"].items():
        (tag,) = target["tags"]
        tag = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], tag)
        out[name] = (tag, target["platforms"])
    return out


def test_stages_are_pinned_and_final_stages_are_clean() -> None:
    _, stages = parse_dockerfile()
    bake = json.loads((REPO / "docker-bake.json").read_text())
    for stage in stages.values():
        if stage.base not in stages:
            assert PINNED.match(stage.base), f"{stage.name}: base {stage.base} not pinned"
    for name, target in bake["target"].items():
        assert target["dockerfile"] == "Dockerfile" and target["target"] == name
        final = chain(stages, name)
        users = [rest for st in final for op, rest in st.instructions if op == "USER"]
        assert users, f"{name}: no USER"
        assert users[0].split(":")[0] not in ("0", "root"), name
        ops = [(op, rest) for st in final for op, rest in st.instructions]
        for op, rest in ops:
            assert not (op == "RUN" and BUILD_TOOLS.search(rest)), f"{name}: {rest}"
            assert not (op == "RUN" and "pip install" in rest), f"{name}: pip in final stage"
            if op == "COPY" and "--from=" in rest:
                source = re.search(r"--from=(\S+)", rest)
                assert source and source.group(1) in stages, rest
        checks = [rest for op, rest in ops if op == "HEALTHCHECK"]
        assert checks and HEALTH[name] in checks[0], f"{name}: HEALTHCHECK"
        assert any(op == "ENTRYPOINT" for op, _ in ops), name


def test_healthchecks_match_probes(all_rendered: dict[str, Rendered]) -> None:
    dev = all_rendered["dev"]
    gateway = dev.get("Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert HEALTH["gateway"].endswith(":8080/healthz")
    for app, port in (("archiver", 50052), ("inference", 50051)):
        c = dev.get("Deployment", app)["spec"]["template"]["spec"]["containers"][0]
        probe_port = c["livenessProbe"]["tcpSocket"]["port"]
        assert {p["name"]: p["containerPort"] for p in c["ports"]}[probe_port] == port


def test_manifest_images_are_built(all_rendered: dict[str, Rendered]) -> None:
    tags = bake_tags()
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    built = {tag for tag, _ in tags.values()}
    assert all(tag.split(":")[1].startswith(version) for tag in built)
    used: set[str] = set()
    for rendered in all_rendered.values():
        for dep in rendered.of_kind("Deployment"):
            labels = dep["spec"]["template"]["metadata"]["labels"]
            for c in dep["spec"]["template"]["spec"]["containers"] + dep["spec"]["template"][
                "spec"
            ].get("initContainers", []):
                image = c["image"]
                if not REGISTRY_IMAGE.match(image):
                    assert PINNED.match(image), f"third-party image {image} not pinned"
                elif labels.get("track") == "canary" and image not in built:
                    # A candidate version: same repository and variant as a built image.
                    repo, _, tag = image.partition(":")
                    variant = tag.partition("-")[2]
                    assert any(
                        b.startswith(repo + ":")
                        and b.partition(":")[2].partition("-")[2] == variant
                        for b in built
                    ), image
                else:
                    assert image in built, f"{rendered.overlay}: {image} is not a bake tag"
                    used.add(image)
    assert used == built, f"bake targets no overlay uses: {built - used}"
    edge = all_rendered["edge"].get("Deployment", "inference")
    edge_image = edge["spec"]["template"]["spec"]["containers"][0]["image"]
    assert any(tag == edge_image and "linux/arm64" in p for tag, p in tags.values())
