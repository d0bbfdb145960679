"""``autoglm dev up`` (``make run``): backing services, demo model, then ``dapr run -f``.

Stays in the foreground; Ctrl-C or SIGTERM stops the apps, their sidecars and whatever
backing service this command started (services that were already running are left alone).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx

from autoglm.devstack.backing import DEV_VAULT_TOKEN, seed_vault, start_redis, start_vault
from autoglm.devstack.layout import DATA_DIR, MODELS_DIR, REPO_ROOT, TOOLS_BIN, tool
from autoglm.devstack.processes import ManagedProcess, StartupError, port_open

REDIS_PORT = 6379
VAULT_PORT = 8200
GATEWAY_URL = "http://127.0.0.1:8080"


def _say(msg: str) -> None:
    print(f"[autoglm] {msg}", flush=True)


def run_dev_stack() -> int:
    from autoglm.models.demo import init_demo_models

    logs = DATA_DIR / "logs"
    started: list[ManagedProcess] = []
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if port_open(REDIS_PORT):
            _say(f"Redis already listening on {REDIS_PORT}; using it")
        else:
            _say(f"starting Redis on 127.0.0.1:{REDIS_PORT} (appendonly)")
            started.append(start_redis(REDIS_PORT, DATA_DIR / "redis", logs / "redis.log"))
        if port_open(VAULT_PORT):
            _say(f"Vault already listening on {VAULT_PORT}; using it")
        else:
            _say(f"starting Vault dev server on 127.0.0.1:{VAULT_PORT}")
            started.append(start_vault(VAULT_PORT, logs / "vault.log"))
        _say(f"preparing signed demo models in {MODELS_DIR}")
        public_key = init_demo_models(MODELS_DIR)
        seed_vault(f"http://127.0.0.1:{VAULT_PORT}", public_key, DEV_VAULT_TOKEN)
        _say("Vault seeded with dev secrets under secret/autoglm/")
        _say("starting gateway, inference and archiver with their daprd sidecars")
        env = dict(os.environ, DAPR_RUNTIME_PATH=str(TOOLS_BIN.parent / "dapr-runtime"))
        apps = ManagedProcess(
            "dapr-run",
            [
                str(tool("dapr")),
                "run",
                "-f",
                str(REPO_ROOT / "dapr.yaml"),
                "--runtime-path",
                str(TOOLS_BIN.parent / "dapr-runtime"),
            ],
            None,
            env=env,
            cwd=REPO_ROOT,
        ).start()
        started.append(apps)
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline and apps.alive():
            try:
                if httpx.get(f"{GATEWAY_URL}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            stop.wait(1)
        if apps.alive() and not stop.is_set():
            _say(f"ready: gateway at {GATEWAY_URL}")
            _say(
                "try:\n  curl -s " + GATEWAY_URL + "/v1/chat/completions "
                "-H 'content-type: application/json' "
                '-d \'{"model":"demo-glm","messages":[{"role":"user",'
                '"content":"Hello"}],"max_tokens":16}\''
            )
            _say("Ctrl-C stops everything")
        while not stop.is_set() and apps.alive():
            stop.wait(1)
        return 0 if stop.is_set() else 1
    except StartupError as exc:
        _say(f"start failed: {exc}")
        return 1
    finally:
        _say("stopping")
        for proc in reversed(started):
            proc.stop(timeout=20)
