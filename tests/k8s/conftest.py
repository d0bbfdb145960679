"""Fixtures of the k8s tests: kustomize, the rendered overlays and the CRD schemas."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.manifests import CRDS_DIR, OVERLAYS, CRDSchemas, Rendered, ensure_tools, render


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
