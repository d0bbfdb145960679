"""Fixtures of the k8s tests: kustomize, the rendered overlays, the CRD schemas and a
real API server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.apiserver import APIServer, running_apiserver
from tests.k8s.manifests import (
    CRDS_DIR,
    OVERLAYS,
    CRDSchemas,
    Rendered,
    build_tools,
    ensure_tools,
    render,
)


@pytest.fixture(scope="session")
def kustomize() -> Path:
    return ensure_tools()


@pytest.fixture(scope="session")
def all_rendered(kustomize: Path) -> dict[str, Rendered]:
    return {name: Rendered(name, render(kustomize, name)) for name in OVERLAYS}


@pytest.fixture(params=OVERLAYS)
def rendered(request: pytest.FixtureRequest, all_rendered: dict[str, Rendered]) -> Rendered:
    return all_rendered[request.param]


@pytest.fixture(scope="session")
def crd_schemas(kustomize: Path) -> CRDSchemas:
    return CRDSchemas(CRDS_DIR)


@pytest.fixture(scope="session")
def apiserver(kustomize: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[APIServer]:
    """etcd + kube-apiserver on 127.0.0.1 with the CRDs installed; stopped at the end."""
    build_tools("kube")
    with running_apiserver(tmp_path_factory.mktemp("apiserver")) as server:
        yield server
