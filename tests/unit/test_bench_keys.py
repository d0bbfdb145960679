"""``make bench``'s issue-15 keys, computed from scenario reports (no stack)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from load import bench, hops

from tests.support.otlp import ReceivedSpan

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


def test_hops_split_a_request_and_add_up_to_its_time() -> None:
    def span(service: str, name: str, start_ms: float, end_ms: float, kind: int) -> ReceivedSpan:
        ms = 1_000_000
        return ReceivedSpan(
            service, name, "t1", "s", "p", {}, int(start_ms * ms), int(end_ms * ms), kind
        )

    spans = [
        span("gateway", hops.GATEWAY_SPAN, 1.0, 9.0, hops.SPAN_KIND_SERVER),
        span("gateway", hops.INVOKE_SPAN, 2.0, 8.0, hops.SPAN_KIND_CLIENT),
        span("inference", hops.INVOKE_SPAN, 2.5, 7.5, hops.SPAN_KIND_SERVER),
        span("inference", hops.APP_SPAN, 3.0, 7.0, hops.SPAN_KIND_SERVER),
        span("archiver", "audit process", 9.5, 10.0, hops.SPAN_KIND_SERVER),  # not a hop
    ]
    table = hops.hop_ms(spans, {"t1": (0, 10_000_000), "t2": (0, 1)})
    assert table["requests"] == {"traced": 1.0, "sent": 2.0}  # t2's spans never came
    means = [table[name]["mean"] for name in hops.HOPS]
    assert means == [1.0, 1.0, 0.5, 0.5, 4.0, 0.5, 0.5, 1.0, 1.0]
    assert sum(means) == 10.0


def test_floor_hops_split_the_echo_calls_from_their_two_daprds_spans() -> None:
    def span(trace: str, service: str, start_ms: float, end_ms: float, kind: int) -> ReceivedSpan:
        start, end = int(start_ms * 1_000_000), int(end_ms * 1_000_000)
        return ReceivedSpan(service, hops.FLOOR_SPAN, trace, "s", "p", {}, start, end, kind)

    spans = [
        span("t1", hops.FLOOR_CALLER, 0.0, 3.0, hops.SPAN_KIND_CLIENT),
        span("t1", hops.FLOOR_CALLEE, 1.0, 2.5, hops.SPAN_KIND_SERVER),
        span("t2", hops.FLOOR_CALLER, 0.0, 9.0, hops.SPAN_KIND_CLIENT),  # callee's never came
        span("t3", hops.FLOOR_CALLEE, 0.0, 9.0, hops.SPAN_KIND_CLIENT),  # not the callee's
    ]
    table = hops.floor_hop_ms(spans)
    assert table["calls"] == {"traced": 1.0}
    assert [table[name]["mean"] for name in hops.FLOOR_HOPS] == [1.0, 1.5, 0.5]


def test_the_floor_calls_the_echo_app_under_inferences_resiliency_policy(tmp_path: Path) -> None:
    import yaml

    bench.echo_resiliency(tmp_path)
    doc = yaml.safe_load((tmp_path / "resiliency-echo.yaml").read_text())
    mesh = yaml.safe_load((bench.REPO_ROOT / "components" / "resiliency.yaml").read_text())
    assert doc["kind"] == "Resiliency"
    assert doc["metadata"]["name"] != mesh["metadata"]["name"]
    assert doc["scopes"] == ["echo-caller", "echo"]
    assert doc["spec"]["policies"] == mesh["spec"]["policies"]
    inference = mesh["spec"]["targets"]["apps"]["inference"]
    assert doc["spec"]["targets"] == {"apps": {"echo": inference}}


def test_autosave_overhead_is_the_median_of_the_rounds_own_ratios() -> None:
    """A round on a busier machine is slower on both sides: its ratio, not its rates,
    enters the figure, and one outlying round does not move the median."""

    def rps(*values: float) -> list[dict[str, object]]:
        return [{"throughput_rps": v} for v in values]

    runs = {
        "chat": rps(38.0, 20.0, 40.0),
        "chat-history": rps(30.0, 15.0, 30.0),
        "sessions": rps(28.5, 14.7, 15.0),  # 5 %, 2 %, and one 50 % outlier
    }
    keys = bench.autosave_keys(runs, [25.0, 12.0, 20.0])
    assert keys["autosave_overhead_pct"] == 5.0
    assert keys["autosave_overhead_pct_rounds"] == [5.0, 2.0, 50.0]
    assert keys["chat_rps_without_sessions"] == 30.0
    assert keys["chat_rps_with_autosave"] == 15.0
    assert keys["snapshots_per_s"] == 20.0
    assert keys["chat_rps_short_messages"] == 38.0
    assert keys["autosave_overhead_vs_short_chat_pct"] == 26.5  # 25, 26.5, 62.5
