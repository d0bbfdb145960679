"""Flame graphs of the three apps under load (issue 15): the stack of ``make bench``,
32 clients in flight on the ``sessions`` scenario (chat turns that read and save a
session and publish its snapshot, so the archiver's autosave runs too), and py-spy
(``requirements.lock``) sampling the gateway (its gunicorn worker included), inference
and the archiver for the same seconds.

    python -m load.profile --label before [--seconds 20] [--scenario sessions]

writes ``load/results/flame-<app>-<label>.svg`` and prints, per app, the functions that
held the most samples (own and total), which is what ``load/RESULTS.md`` quotes.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from autoglm.devstack.layout import MODELS_DIR
from autoglm.devstack.processes import free_port
from autoglm.models.demo import init_demo_models
from load import loadgen
from load.bench import RESULTS, TENANT, processes, say, stack

PY_SPY = Path(sys.executable).parent / "py-spy"
APPS = ("gateway", "inference", "archiver")


def record(pid: int, seconds: int, out: Path, raw: Path) -> list[subprocess.Popen[bytes]]:
    common = [str(PY_SPY), "record", "-p", str(pid), "-d", str(seconds), "-r", "67"]
    common += ["--subprocesses", "--nonblocking"]
    return [
        subprocess.Popen([*common, "-f", "flamegraph", "-o", str(out)], stderr=subprocess.DEVNULL),
        subprocess.Popen([*common, "-f", "raw", "-o", str(raw)], stderr=subprocess.DEVNULL),
    ]


def top(raw: Path, n: int = 15) -> tuple[list[tuple[str, float]], list[tuple[str, float]]]:
    """(own, total) share of samples of the busiest frames."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    count = 0
    for line in raw.read_text().splitlines():
        stack, _, k = line.rpartition(" ")
        samples = int(k)
        frames = stack.split(";")
        count += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            total[frame] += samples
    count = max(count, 1)
    return (
        [(f, round(100 * s / count, 1)) for f, s in own.most_common(n)],
        [(f, round(100 * s / count, 1)) for f, s in total.most_common(n)],
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--scenario", default="sessions")
    ap.add_argument("--concurrency", type=int, default=32)
    args = ap.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="autoglm-profile-"))
    init_demo_models(MODELS_DIR)
    with stack(workdir, MODELS_DIR, free_port()) as mesh:
        procs = processes(mesh)
        token = mesh.headers(TENANT)["Authorization"].removeprefix("Bearer ")
        argv = ["--url", mesh.gateway_url, "--token", token, "--tenant", TENANT]
        argv += ["--scenario", args.scenario, "--concurrency", str(args.concurrency)]
        argv += ["--requests", "100000", "--duration", str(args.seconds + 8), "--max-tokens", "16"]
        load_args = loadgen.parser().parse_args(argv)
        result: dict[str, object] = {}
        runner = threading.Thread(
            target=lambda: result.update(asyncio.run(loadgen.run(load_args)).to_json())
        )
        runner.start()
        time.sleep(4)  # past the warm-up
        raws = {app: workdir / f"{app}.raw" for app in APPS}
        spies = []
        for app in APPS:
            svg = RESULTS / f"flame-{app}-{args.label}.svg"
            spies += record(procs[app].pid, args.seconds, svg, raws[app])
        for spy in spies:
            spy.wait()
        runner.join()
        say(
            f"{args.scenario} at {args.concurrency}: {result.get('throughput_rps')} req/s, "
            f"p50 {result.get('latency_ms')}"
        )
    for app in APPS:
        own, total = top(raws[app])
        print(f"\n== {app}: own")
        for frame, share in own:
            print(f"{share:5.1f}%  {frame}")
        print(f"== {app}: total")
        for frame, share in total:
            print(f"{share:5.1f}%  {frame}")


if __name__ == "__main__":
    main()
