"""The inference app leaves a core to its sidecar unless told otherwise (issue 15)."""

from __future__ import annotations

import pytest
import torch

from autoglm.inference.__main__ import engine_threads

pytestmark = pytest.mark.unit


def test_configured_threads_are_kept() -> None:
    assert engine_threads(3) == 3


def test_default_is_one_core_fewer_than_torch_would_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    assert engine_threads(None) == 7
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    assert engine_threads(None) == 1
