"""All three apps behind their own real daprd on a ``Backing``, for tests that need a
stack of their own (chaos: they kill and restart parts of it) and for ``make bench``.

Unlike the session-wide e2e ``mesh`` fixture, each app can be given extra settings
(fault injection, short timeouts) and the inference app can be killed and started again
on the same ports, so its daprd keeps its subscriptions and the gateway's daprd finds it.
"""

from __future__ import annotations

import json
import signal
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from autoglm.devstack.processes import ManagedProcess, free_port, port_open
from autoglm.devstack.sidecars import wait_sidecar_ready
from tests.support.stack import AppUnderTest, Backing, start_app, wait_http_ok
from tests.support.tokens import bearer


def inference_env(models_dir: Path, metrics_port: int) -> dict[str, str]:
    return {
        "AUTOGLM_INFERENCE_MODELS": json.dumps(
            [
                {"id": "demo-glm", "path": str(models_dir / "demo-glm"), "priority": True},
                {
                    "id": "all-MiniLM-L6-v2",
                    "path": str(models_dir / "all-MiniLM-L6-v2"),
                    "priority": True,
                },
            ]
        ),
        "AUTOGLM_INFERENCE_METRICS_PORT": str(metrics_port),
    }


@dataclass
class OwnMesh:
    backing: Backing
    gateway: AppUnderTest
    inference: AppUnderTest
    archiver: AppUnderTest
    gateway_url: str
    archive_root: Path
    stack: ExitStack
    #: Settings each app was started with, reused when one is restarted.
    envs: dict[str, dict[str, str]] = field(default_factory=dict)

    def headers(self, tenant: str = "acme", role: str = "user") -> dict[str, str]:
        return bearer(tenant, role, self.backing.secrets["jwt"])

    def kill_inference(self) -> None:
        """SIGKILL the inference app (not its daprd): no shutdown hook runs."""
        assert self.inference.app is not None
        self.inference.app.signal(signal.SIGKILL)
        assert self.inference.app.proc is not None
        self.inference.app.proc.wait(timeout=10)

    def restart_inference(self, timeout: float = 120) -> None:
        """Start the inference app again on its old port, next to its running daprd."""
        assert self.inference.app is not None and self.inference.app_port is not None
        old = self.inference.app
        app = ManagedProcess("inference", old.argv, old.log_path, env=old.env, cwd=old.cwd)
        app.start()
        self.stack.callback(app.stop)
        port = self.inference.app_port
        app.wait_until(lambda: port_open(port), timeout, "inference listening again")
        wait_sidecar_ready(self.inference.sidecar, self.inference.ports, timeout)
        self.inference.app = app


def start_mesh(
    backing: Backing,
    stack: ExitStack,
    models_dir: Path,
    *,
    archive_root: Path | None = None,
    inference: dict[str, str] | None = None,
    gateway: dict[str, str] | None = None,
    archiver: dict[str, str] | None = None,
) -> OwnMesh:
    """Start inference, archiver and gateway (each with its daprd); wait for /readyz."""
    root = archive_root or backing.workdir / "archive"
    envs = {
        "inference": {**inference_env(models_dir, free_port()), **(inference or {})},
        # Side ports are free ones too: another stack (make run, a session-wide e2e
        # mesh) may hold the defaults.
        "archiver": {
            "AUTOGLM_ARCHIVER_ROOT": str(root),
            "AUTOGLM_ARCHIVER_METRICS_PORT": str(free_port()),
            **(archiver or {}),
        },
        "gateway": dict(gateway or {}),
    }
    inf = start_app(backing, stack, "inference", "autoglm.inference", env=envs["inference"])
    arc = start_app(backing, stack, "archiver", "autoglm.archiver", env=envs["archiver"])
    gw = start_app(
        backing, stack, "gateway", "autoglm.gateway", protocol="http", env=envs["gateway"]
    )
    url = f"http://127.0.0.1:{gw.app_port}"
    assert gw.app is not None
    wait_http_ok(f"{url}/readyz", gw.app)
    return OwnMesh(backing, gw, inf, arc, url, root, stack, envs)
