"""``autoglm doctor``: what is running, what is missing, and how to fix it."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from autoglm.devstack.layout import MODELS_DIR, REPO_ROOT, tool
from autoglm.devstack.processes import port_open


@dataclass
class Check:
    name: str
    probe: Callable[[], str | None]  # None: fine; otherwise what is wrong
    fix: str


def _binary(name: str, *version_args: str) -> Callable[[], str | None]:
    def probe() -> str | None:
        try:
            path = tool(name)
        except FileNotFoundError as exc:
            return str(exc)
        out = subprocess.run(
            [str(path), *version_args], capture_output=True, text=True, timeout=20, check=False
        )
        return None if out.returncode == 0 else f"{path} {' '.join(version_args)} failed"

    return probe


def _port(port: int, what: str) -> Callable[[], str | None]:
    return lambda: None if port_open(port) else f"{what} not listening on 127.0.0.1:{port}"


def _gateway_ready() -> str | None:
    try:
        resp = httpx.get("http://127.0.0.1:8080/readyz", timeout=5)
    except httpx.HTTPError:
        return "gateway not reachable on 127.0.0.1:8080"
    return None if resp.status_code == 200 else f"gateway not ready: {resp.text.strip()}"


CHECKS = [
    Check(
        "virtualenv",
        lambda: None if (REPO_ROOT / ".venv/bin/python").is_file() else ".venv missing",
        "make install",
    ),
    Check("daprd", _binary("daprd", "--version"), "make tools"),
    Check("sentry", _binary("sentry", "--help"), "make tools"),
    Check("placement", _binary("placement", "--help"), "make tools"),
    Check("vault", _binary("vault", "version"), "make tools"),
    Check(
        "redis-server",
        _binary("redis-server", "--version"),
        "apt-get install redis-server (make install does it)",
    ),
    Check(
        "demo model",
        lambda: (
            None
            if (MODELS_DIR / "demo-glm/config.json").is_file()
            else "no model at .models/demo-glm"
        ),
        "autoglm models init-demo",
    ),
    Check("redis running", _port(6379, "Redis"), "make run"),
    Check("vault running", _port(8200, "Vault"), "make run"),
    Check("gateway ready", _gateway_ready, "make run (see .data/logs/ and the terminal)"),
]


def run_doctor() -> int:
    problems = 0
    for check in CHECKS:
        issue = check.probe()
        if issue is None:
            print(f"  ok    {check.name}")
        else:
            problems += 1
            print(f"  FAIL  {check.name}: {issue}\n        fix: {check.fix}")
    print("all good" if not problems else f"{problems} problem(s)")
    return 0 if not problems else 1
