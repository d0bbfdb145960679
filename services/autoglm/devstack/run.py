"""``autoglm dev up`` (``make run``): backing services, demo models, then every app of
``dapr.yaml`` with its daprd (Multi-App Run, see ``multiapp.py``), as many replicas of
the stateless apps as asked (``--replicas``, ``make run REPLICAS=N``; ``replicas.py``),
with HAProxy in front of the gateway replicas when there are several (``frontdoor.py``).
With one replica of each app the gateway itself listens on 8080, as before.

Stays in the foreground and supervises: a replica whose app or sidecar dies is
restarted (as Kubernetes restarts a pod). Ctrl-C or SIGTERM stops the apps, their
sidecars and whatever backing service this command started (services that were already
running are left alone). Nothing it starts outlives it (``PR_SET_PDEATHSIG``), it
refuses to start when a port it needs is taken (naming who holds it), and it prints
``ready`` only when the processes answering are the ones it started.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace

import httpx

from autoglm.devstack.backing import seed_vault, start_redis, start_vault
from autoglm.devstack.frontdoor import GATEWAY_ENV, Backend, FrontDoor
from autoglm.devstack.layout import DATA_DIR, MODELS_DIR, REPO_ROOT
from autoglm.devstack.mtls import sentry_available, start_sentry
from autoglm.devstack.multiapp import read_run_file
from autoglm.devstack.placement import placement_available, start_placement
from autoglm.devstack.processes import (
    ManagedProcess,
    StartupError,
    ancestors,
    describe_pid,
    die_with_parent,
    port_holders,
    port_open,
)
from autoglm.devstack.replicas import Replica, build_replicas, parse_replicas
from autoglm.devstack.secrets import RUN_SECRETS_FILE, StackSecrets
from autoglm.devstack.stackfile import ProcessRecord, read_stack, start_time, write_stack

REDIS_PORT = 6379
VAULT_PORT = 8200
GATEWAY_PORT = 8080
GATEWAY_URL = f"http://127.0.0.1:{GATEWAY_PORT}"
#: A replica restarted this often by the supervisor is given up on (the stack stops).
MAX_RESTARTS = 5


def _say(msg: str) -> None:
    print(f"[autoglm] {msg}", flush=True)


def needed_ports(replicas: dict[str, list[Replica]], front: bool) -> dict[int, str]:
    """Every fixed port the stack will listen on -> what for."""
    ports: dict[int, str] = {}
    if front:
        ports[GATEWAY_PORT] = "front door"
    for reps in replicas.values():
        for r in reps:
            if r.app_port is not None:
                ports[r.app_port] = f"{r.name} app port"
            ports[r.ports.http] = f"daprd of {r.name} (HTTP)"
            ports[r.ports.grpc] = f"daprd of {r.name} (gRPC)"
            ports[r.ports.metrics] = f"daprd of {r.name} (metrics)"
            for key, value in r.entry.env.items():
                if key.endswith("_PORT") and value.isdigit() and int(value) != r.app_port:
                    ports[int(value)] = f"{r.name} {key}"
    return ports


def _holder(port: int) -> str:
    holders = port_holders(port)
    if not holders:
        return "a process /proc does not show us"
    pid = holders[0]
    try:
        where = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        where = "?"
    return f"{describe_pid(pid)}, working directory {where}"


def port_conflicts(needed: dict[int, str]) -> list[str]:
    """Why the stack cannot start: the ports taken, each with who holds it."""
    taken = [(p, what) for p, what in sorted(needed.items()) if port_open(p) or port_holders(p)]
    if not taken:
        return []
    msgs = [f"port {p} ({what}) is in use by {_holder(p)}" for p, what in taken]
    stack = read_stack()
    if stack is not None and stack.launcher_alive():
        msgs.append(
            f"a stack of this checkout is running (launcher pid {stack.launcher_pid}): "
            "see `autoglm dev ps`, stop it with `autoglm dev down`"
        )
    elif stack is not None and any(p.alive() for p in stack.processes):
        msgs.append(
            "processes of an earlier stack of this checkout are still running without "
            "their launcher: `autoglm dev down` stops them"
        )
    else:
        msgs.append(
            "stop that process (if it is an AutoGLM stack of another checkout, run "
            "`autoglm dev down` there), or free the port"
        )
    return msgs


def _records(
    replicas: dict[str, list[Replica]], backing: list[ManagedProcess], front: FrontDoor | None
) -> list[ProcessRecord]:
    records = []
    for proc in backing:
        if proc.alive():
            port = {"redis": REDIS_PORT, "vault": VAULT_PORT}.get(proc.name)
            records.append(
                ProcessRecord(proc.name, proc.name, proc.pid, start_time(proc.pid), app_port=port)
            )
    if front is not None and front.process.alive():
        pid = front.process.pid
        records.append(
            ProcessRecord("frontdoor", "frontdoor", pid, start_time(pid), app_port=front.port)
        )
    for reps in replicas.values():
        for r in reps:
            pairs: list[tuple[ManagedProcess | None, str]] = [(r.sidecar, "daprd"), (r.app, "app")]
            for member, role in pairs:
                if member is None or not member.alive():
                    continue
                records.append(
                    ProcessRecord(
                        r.app_id,
                        role,
                        member.pid,
                        start_time(member.pid),
                        replica=r.index,
                        app_port=r.app_port,
                        dapr_http=r.ports.http,
                        dapr_grpc=r.ports.grpc,
                        dapr_internal_grpc=r.ports.internal_grpc,
                        metrics=r.ports.metrics,
                    )
                )
    return records


def answered_by_us(port: int, ours: set[int]) -> bool:
    """Whether the listener on ``port`` is one of ``ours`` or a child of one (gunicorn's
    workers share their master's socket)."""
    holders = port_holders(port)
    return bool(holders) and all(set(ancestors(pid)) & ours for pid in holders)


def stack_secrets() -> StackSecrets:
    """Fresh secrets when this run starts Redis and Vault itself; the saved ones of the
    run that started them when they are already up (their password and root token)."""
    if port_open(REDIS_PORT) or port_open(VAULT_PORT):
        saved = StackSecrets.load()
        if saved is None:
            raise StartupError(
                f"Redis or Vault is already running on {REDIS_PORT}/{VAULT_PORT}, but "
                f"{RUN_SECRETS_FILE} (their password and token) is missing: stop them, "
                "or start from the checkout whose `make run` started them"
            )
        return saved
    return StackSecrets.generate()


def run_dev_stack(replicas_spec: str | None = None) -> int:
    from autoglm.gateway.security.tokens import mint_token
    from autoglm.models.demo import init_demo_models

    die_with_parent()  # make (or the shell) killed: stop everything, do not orphan it
    logs = DATA_DIR / "logs"
    try:
        counts = parse_replicas(replicas_spec or os.environ.get("AUTOGLM_REPLICAS"))
    except ValueError as exc:
        _say(str(exc))
        return 2
    run_file = read_run_file(REPO_ROOT / "dapr.yaml")
    front = counts.get("gateway", 1) > 1
    apps = [
        replace(e, env={**e.env, **GATEWAY_ENV}) if front and e.app_id == "gateway" else e
        for e in run_file.apps
    ]
    replicas = build_replicas(
        apps,
        counts,
        resources=run_file.resources,
        config=run_file.config,
        logs=logs,
        cwd=REPO_ROOT,
        keep_ports=lambda e: not (front and e.app_id == "gateway"),
        on_event=_say,
    )
    conflicts = port_conflicts(needed_ports(replicas, front))
    if conflicts:
        _say("cannot start:\n  " + "\n  ".join(conflicts))
        return 1

    backing: list[ManagedProcess] = []
    started: list[ManagedProcess] = []
    door: FrontDoor | None = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def record() -> None:
        write_stack(_records(replicas, backing, door), replicas=counts)

    try:
        secrets = stack_secrets()
        secrets.save()
        _say(f"stack secrets (API tokens, Redis password, Vault token): {RUN_SECRETS_FILE}")
        if port_open(REDIS_PORT):
            _say(f"Redis already listening on {REDIS_PORT} ({_holder(REDIS_PORT)}); using it")
        else:
            _say(f"starting Redis on 127.0.0.1:{REDIS_PORT} (appendonly)")
            backing.append(
                start_redis(
                    REDIS_PORT, DATA_DIR / "redis", logs / "redis.log", secrets.redis_password
                )
            )
        if port_open(VAULT_PORT):
            _say(f"Vault already listening on {VAULT_PORT} ({_holder(VAULT_PORT)}); using it")
        else:
            _say(f"starting Vault dev server on 127.0.0.1:{VAULT_PORT}")
            backing.append(start_vault(VAULT_PORT, logs / "vault.log", secrets.vault_token))
        if not sentry_available():
            raise StartupError("sentry not found in .tools/bin: run 'make tools'")
        _say("starting Dapr Sentry (mTLS between the sidecars, access lists by app id)")
        sentry_proc, sentry = start_sentry(DATA_DIR / "dapr", logs / "sentry.log")
        backing.append(sentry_proc)
        if not placement_available():
            raise StartupError("placement not found in .tools/bin: run 'make tools'")
        _say("starting Dapr placement (session actors: a chat stays on one inference replica)")
        placement_proc, sentry = start_placement(sentry, DATA_DIR / "dapr", logs / "placement.log")
        backing.append(placement_proc)
        for reps in replicas.values():
            for r in reps:
                r.secrets, r.sentry = secrets, sentry
        record()
        _say(f"preparing signed demo models in {MODELS_DIR}")
        public_key = init_demo_models(MODELS_DIR)
        seeded = seed_vault(f"http://127.0.0.1:{VAULT_PORT}", public_key, secrets.vault_token)
        _say("Vault seeded with dev secrets under secret/autoglm/")
        _say(
            "starting "
            + ", ".join(f"{n} x{c}" if c > 1 else n for n, c in counts.items())
            + ", each replica with its own daprd sidecar"
        )
        for reps in replicas.values():
            for r in reps:
                _say(f"  {r.name}: app port {r.app_port}, daprd http {r.ports.http}")
                r.start(started=started)
                record()
        if front:
            door = FrontDoor(
                GATEWAY_PORT,
                [Backend(r.name, r.app_port or 0) for r in replicas["gateway"]],
                DATA_DIR / "run" / "frontdoor",
                logs / "frontdoor.log",
            ).start()
            _say(f"front door (HAProxy) on {GATEWAY_PORT} -> {len(replicas['gateway'])} gateways")
            record()
        ours = {p.pid for p in [*started, *([door.process] if door else [])] if p.alive()}
        deadline = time.monotonic() + 300
        ready = False
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                ready = httpx.get(
                    f"{GATEWAY_URL}/readyz", timeout=2
                ).status_code == 200 and answered_by_us(GATEWAY_PORT, ours)
            except httpx.HTTPError:
                ready = False
            if ready:
                break
            stop.wait(1)
        if not ready and not stop.is_set():
            _say(f"not ready: {GATEWAY_URL} is not answered by the gateway this command started")
            return 1
        if not stop.is_set():
            token = mint_token(seeded["jwt"], tenant="dev", role="user", ttl_s=24 * 3600)
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
            _say("`autoglm dev ps` lists every process; Ctrl-C stops everything")
        return _supervise(replicas, stop, started, record)
    except StartupError as exc:
        _say(f"start failed: {exc}")
        return 1
    finally:
        _say("stopping")
        if door is not None:
            door.stop()
        for reps in reversed(list(replicas.values())):
            for r in reps:
                r.stop(graceful=False)
        for proc in reversed(backing):
            proc.stop(timeout=20)
        with_stack = read_stack()
        if with_stack is not None and with_stack.launcher_pid == os.getpid():
            (DATA_DIR / "run" / "stack.json").unlink(missing_ok=True)


def _supervise(
    replicas: dict[str, list[Replica]],
    stop: threading.Event,
    started: list[ManagedProcess],
    record: object,
) -> int:
    """Restart a replica whose app or sidecar died, like a pod's restart policy."""
    assert callable(record)
    while not stop.is_set():
        for reps in replicas.values():
            for r in reps:
                if stop.is_set() or r.alive():
                    continue
                dead = ", ".join(p.name for p in r.processes() if not p.alive())
                tail = next((p.log_tail(10) for p in r.processes() if not p.alive()), "")
                _say(f"{r.name}: {dead} exited; last log lines:\n{tail}")
                if r.restarts >= MAX_RESTARTS:
                    _say(f"{r.name} restarted {r.restarts} times already; giving up")
                    return 1
                r.stop(graceful=False)
                r.restarts += 1
                _say(f"{r.name}: restarting (restart {r.restarts})")
                try:
                    r.start(started=started)
                except StartupError as exc:
                    _say(f"{r.name}: restart failed: {exc}")
                record()
        stop.wait(1)
    return 0
