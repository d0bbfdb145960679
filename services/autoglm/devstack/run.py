"""``autoglm dev up`` (``make run``): backing services, demo models, then every app of
``dapr.yaml`` with its daprd (Multi-App Run, see ``multiapp.py``).

Stays in the foreground; Ctrl-C or SIGTERM stops the apps, their sidecars and whatever
backing service this command started (services that were already running are left alone).
"""

from __future__ import annotations

import signal
import threading
import time

import httpx

from autoglm.devstack.backing import DEV_VAULT_TOKEN, seed_vault, start_redis, start_vault
from autoglm.devstack.layout import DATA_DIR, MODELS_DIR, REPO_ROOT
from autoglm.devstack.multiapp import launch, read_run_file
from autoglm.devstack.processes import ManagedProcess, StartupError, port_open

REDIS_PORT = 6379
VAULT_PORT = 8200
GATEWAY_URL = "http://127.0.0.1:8080"


def _say(msg: str) -> None:
    print(f"[autoglm] {msg}", flush=True)


def run_dev_stack() -> int:
    from autoglm.gateway.security.tokens import mint_token
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
        secrets = seed_vault(f"http://127.0.0.1:{VAULT_PORT}", public_key, DEV_VAULT_TOKEN)
        _say("Vault seeded with dev secrets under secret/autoglm/")
        _say("starting gateway, inference and archiver, each with its daprd sidecar")
        run_file = read_run_file(REPO_ROOT / "dapr.yaml")
        for entry in run_file.apps:
            _say(f"  {entry.app_id}: app port {entry.app_port}, daprd http {entry.ports.http}")
            launch(entry, run_file.resources, run_file.config, logs, REPO_ROOT, started=started)
        apps = [p for p in started if p.name in {a.app_id for a in run_file.apps}]
        deadline = time.monotonic() + 300
        while not stop.is_set() and time.monotonic() < deadline and all(a.alive() for a in apps):
            try:
                if httpx.get(f"{GATEWAY_URL}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            stop.wait(1)
        if all(a.alive() for a in apps) and not stop.is_set():
            token = mint_token(secrets["jwt"], tenant="dev", role="user", ttl_s=24 * 3600)
            _say(f"ready: gateway at {GATEWAY_URL}")
            _say(
                "try (a dev token for tenant 'dev', valid 24 h; "
                "more with `autoglm token --tenant T --role R`):\n"
                f"  export AUTOGLM_TOKEN={token}\n"
                f"  curl -s {GATEWAY_URL}/v1/chat/completions "
                "-H 'content-type: application/json' "
                '-H "Authorization: Bearer $AUTOGLM_TOKEN" '
                '-d \'{"model":"demo-glm","messages":[{"role":"user",'
                '"content":"Hello"}],"max_tokens":16}\''
            )
            _say("Ctrl-C stops everything")
        while not stop.is_set() and all(a.alive() for a in apps):
            stop.wait(1)
        for proc in started:
            if not proc.alive() and not stop.is_set():
                _say(f"{proc.name} exited; last log lines:\n{proc.log_tail(20)}")
        return 0 if stop.is_set() else 1
    except StartupError as exc:
        _say(f"start failed: {exc}")
        return 1
    finally:
        _say("stopping")
        for proc in reversed(started):
            proc.stop(timeout=20)
