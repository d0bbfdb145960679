"""What the running dev stack consists of, in ``.data/run/stack.json``: written by the
launcher (``autoglm dev up``) whenever a process starts, read by ``autoglm dev ps`` and
``autoglm dev down`` and by the next launcher's port check.

Each process is recorded with its pid and start time (``/proc/<pid>/stat``), so a pid
the kernel handed to someone else since is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from autoglm.core.readiness import sidecar_problems
from autoglm.devstack.layout import DATA_DIR
from autoglm.devstack.secrets import StackSecrets

STACK_FILE = DATA_DIR / "run" / "stack.json"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


@dataclass
class ProcessRecord:
    app_id: str
    #: ``app``, ``daprd``, ``frontdoor``, ``redis``, ``vault``
    role: str
    pid: int
    started: int | None
    replica: int | None = None
    app_port: int | None = None
    dapr_http: int | None = None
    dapr_grpc: int | None = None
    dapr_internal_grpc: int | None = None
    metrics: int | None = None

    def alive(self) -> bool:
        return self.started is not None and start_time(self.pid) == self.started


def write_stack(records: list[ProcessRecord], path: Path = STACK_FILE, **extra: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "launcher": {"pid": os.getpid(), "started": start_time(os.getpid())},
        **extra,
        "processes": [asdict(r) for r in records],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(path)


@dataclass
class Stack:
    launcher_pid: int
    launcher_started: int | None
    processes: list[ProcessRecord]
    extra: dict[str, Any]

    def launcher_alive(self) -> bool:
        return (
            self.launcher_started is not None
            and start_time(self.launcher_pid) == self.launcher_started
        )

    def pids(self) -> set[int]:
        return {p.pid for p in self.processes if p.alive()}


def read_stack(path: Path = STACK_FILE) -> Stack | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    launcher = doc.pop("launcher", {})
    records = [ProcessRecord(**p) for p in doc.pop("processes", [])]
    return Stack(int(launcher.get("pid", 0)), launcher.get("started"), records, doc)


def _probe(record: ProcessRecord) -> str:
    """``running``/``ready``/``not ready: why``/``dead`` for one recorded process."""
    if not record.alive():
        return "dead"
    if record.role not in ("app", "daprd") or record.dapr_http is None:
        return "running"
    # The stack's own tokens (one per app), saved by `autoglm dev up`.
    saved = StackSecrets.load()
    token = saved.dapr_token(record.app_id) if saved else os.environ.get("DAPR_API_TOKEN")
    headers = {"dapr-api-token": token} if token else {}
    try:
        resp = httpx.get(
            f"http://127.0.0.1:{record.dapr_http}/v1.0/metadata", headers=headers, timeout=2
        )
        problems = sidecar_problems(resp.json(), record.app_id)
    except (httpx.HTTPError, ValueError) as exc:
        return f"not ready: sidecar metadata unavailable ({type(exc).__name__})"
    return "ready" if not problems else "not ready: " + "; ".join(problems)


def ps_rows(stack: Stack) -> list[dict[str, Any]]:
    rows = []
    for record in stack.processes:
        row = asdict(record)
        row.pop("started")
        row["state"] = _probe(record)
        rows.append(row)
    return rows


def format_ps(stack: Stack, rows: list[dict[str, Any]]) -> str:
    state = "running" if stack.launcher_alive() else "GONE (processes below may be orphans)"
    out = [f"launcher pid {stack.launcher_pid}: {state}"]
    cols = [
        "app_id",
        "replica",
        "role",
        "pid",
        "app_port",
        "dapr_http",
        "dapr_grpc",
        "metrics",
        "state",
    ]
    table = [[("-" if r[c] is None else str(r[c])) for c in cols] for r in rows]
    widths = [
        max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)
    ]
    out.append("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for t in table:
        out.append("  ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)).rstrip())
    return "\n".join(out)


def stop_stack(stack: Stack, timeout: float = 90) -> list[int]:
    """Stop a recorded stack: its launcher if it still runs (it stops everything it
    started), then whatever recorded process is left. Returns the pids signalled."""
    signalled = []
    if stack.launcher_alive():
        os.kill(stack.launcher_pid, signal.SIGTERM)
        signalled.append(stack.launcher_pid)
        deadline = time.monotonic() + timeout
        while stack.launcher_alive() and time.monotonic() < deadline:
            time.sleep(0.3)
    left = [p for p in stack.processes if p.alive()]
    for record in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, signal.SIGTERM)
            signalled.append(record.pid)
    deadline = time.monotonic() + 30
    while any(p.alive() for p in left) and time.monotonic() < deadline:
        time.sleep(0.3)
    for record in left:
        if record.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(record.pid, signal.SIGKILL)
    return signalled
