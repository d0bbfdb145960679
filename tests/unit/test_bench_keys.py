"""``make bench``'s issue-15 keys, computed from scenario reports (no stack)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from load import bench

pytestmark = pytest.mark.unit


def report(tok_s: float, p50: float) -> dict[str, object]:
    return {"tokens_per_s": tok_s, "latency_ms": {"p50": p50}, "errors": {}}


def test_same_workload_keys_with_the_peer() -> None:
    keys = bench.same_workload_keys(
        [report(1100.0, 380.0), report(1300.0, 420.0)],
        [{"tok_s": 1400.0, "p50_s": 0.2}, {"tok_s": 1600.0, "p50_s": 0.4}],
        [report(900.0, 450.0), report(1100.0, 550.0)],
    )
    assert keys["gateway_tok_s_same_workload"] == 1200.0
    assert keys["path_efficiency"] == 0.8
    assert keys["peer_hf_serve_tok_s"] == 1000.0
    assert keys["gateway_over_hf_serve"] == 1.2
    assert keys["gateway_p50_over_hf_serve_p50"] == 0.8
    assert keys["in_process_p50_ms_same_workload"] == 300.0


def test_a_skipped_peer_leaves_its_keys_empty_not_missing() -> None:
    keys = bench.same_workload_keys(
        [report(1200.0, 400.0)], [{"tok_s": 1500.0, "p50_s": 0.3}], None
    )
    assert keys["peer_hf_serve_tok_s"] is None
    assert keys["gateway_over_hf_serve"] is None
    assert keys["path_efficiency"] == 0.8


def test_the_peer_is_skipped_with_a_reason_when_its_deps_are_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench, "PEERS", tmp_path / "peers")
    with ExitStack() as st:
        assert bench.start_hf_serve(tmp_path / "model", tmp_path, st) is None
    out = capsys.readouterr().out
    assert "SKIPPED peer transformers serve" in out and "make bench-peers" in out


def test_paired_differences_are_taken_round_by_round() -> None:
    slow = [0.010, 0.020, 0.030]
    fast = [0.008, 0.019, 0.025]
    assert bench.paired_ms(slow, fast)["p50"] == pytest.approx(2.0, abs=0.01)


def test_path_efficiency_at_the_inference_apps_threads() -> None:
    keys = bench.same_workload_keys(
        [report(1200.0, 400.0)],
        [{"tok_s": 3000.0, "p50_s": 0.2}],
        None,
        [{"tok_s": 1400.0, "p50_s": 0.3}, {"tok_s": 1600.0, "p50_s": 0.5}],
    )
    assert keys["path_efficiency"] == 0.4  # against torch's default threads
    assert keys["in_process_app_threads_tok_s_same_workload"] == 1500.0
    assert keys["in_process_app_threads_p50_ms_same_workload"] == 400.0
    assert keys["path_efficiency_app_threads"] == 0.8
