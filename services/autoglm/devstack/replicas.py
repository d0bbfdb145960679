"""Replicas: several instances of one app id on one machine, each with its own daprd and
ports, the way Dapr runs them in self-hosted mode. Service invocation spreads calls over
the instances (name resolution returns one at random per call), pub/sub deliveries are
shared by the app id's consumer group. The gateway and inference are stateless and may
run several; the archiver is the single writer of its archive and runs one.

A ``Replica`` is started only when its sidecar really serves it (``ensure_serving``:
daprd's metadata lists the app's subscriptions and components; a daprd that came up
without them is restarted), and it is stopped the way Kubernetes stops a pod: out of
name resolution first, then the sidecar's graceful stop, then the app's.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import yaml

from autoglm.core.readiness import sidecar_problems
from autoglm.devstack.frontdoor import FrontDoor
from autoglm.devstack.mtls import Sentry
from autoglm.devstack.multiapp import AppEntry, launch
from autoglm.devstack.processes import ManagedProcess, StartupError, free_port
from autoglm.devstack.secrets import StackSecrets
from autoglm.devstack.sidecars import DrainTimings, SidecarPorts, start_daprd, wait_sidecar_ready

log = logging.getLogger(__name__)

#: Apps that may run as several replicas; the others run exactly one.
STATELESS = ("gateway", "inference")


def parse_replicas(
    spec: str | None, app_ids: Iterable[str] = ("gateway", "inference", "archiver")
) -> dict[str, int]:
    """``"2"``: two of every stateless app; ``"gateway=2,inference=3"``: per app. Apps
    not named run one replica. A single writer (the archiver) cannot have more."""
    counts = dict.fromkeys(app_ids, 1)
    if not spec or not spec.strip():
        return counts
    spec = spec.strip()
    if spec.isdigit():
        counts.update(dict.fromkeys((a for a in STATELESS if a in counts), int(spec)))
    else:
        for part in spec.split(","):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in counts or not value.strip().isdigit():
                raise ValueError(
                    f"bad replica count {part!r}: use N or APP=N[,APP=N] with APP one of "
                    + ", ".join(counts)
                )
            counts[name] = int(value)
    for name, n in counts.items():
        if n < 1:
            raise ValueError(f"{name}: at least one replica")
        if n > 1 and name not in STATELESS:
            raise ValueError(f"{name} is the single writer of its data: it runs one replica")
    return counts


def replica_entries(entry: AppEntry, count: int, *, keep_first: bool = True) -> list[AppEntry]:
    """``count`` copies of ``entry``: the first keeps its ports (``keep_first``; with one
    replica nothing changes), the others get free ones: app port, daprd ports, and every
    ``*_PORT`` setting (metrics side ports) of the app's environment."""
    entries = []
    for index in range(count):
        if index == 0 and keep_first:
            entries.append(entry)
            continue
        app_port = free_port() if entry.app_port is not None else None
        env = {}
        for key, value in entry.env.items():
            if key.endswith("_PORT") and value.isdigit():
                value = str(app_port) if value == str(entry.app_port) else str(free_port())
            env[key] = value
        ports = SidecarPorts.allocate()
        entries.append(replace(entry, app_port=app_port, ports=ports, env=env))
    return entries


def components_for(resources: Path, app_id: str) -> list[str]:
    """Names of the components in ``resources`` that ``app_id``'s sidecar loads (those
    not scoped, or scoped to it)."""
    names = []
    for path in sorted(resources.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "Component":
                continue
            scopes = doc.get("scopes")
            if not scopes or app_id in scopes:
                names.append(doc["metadata"]["name"])
    return names


def nameresolution_db(config: Path, cwd: Path) -> Path | None:
    """The SQLite file of the sqlite name resolver the sidecar config uses, if any."""
    spec = yaml.safe_load(config.read_text()).get("spec", {}).get("nameResolution") or {}
    if spec.get("component") != "sqlite":
        return None
    conn = str(spec.get("configuration", {}).get("connectionString", ""))
    path = Path(conn.removeprefix("file:").split("?")[0])
    return path if path.is_absolute() else cwd / path


def deregister(db: Path, internal_grpc_port: int) -> bool:
    """Take one daprd out of name resolution without stopping it: its row is renamed to
    an app id nobody resolves, so callers pick the other replicas from the next call on,
    while calls in flight to it finish. daprd keeps renewing the renamed row (it matches
    on registration id and address), so it does not notice. This is the local stand-in
    for Kubernetes removing a terminating pod from the Service's endpoints."""
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn, conn:
            cur = conn.execute(
                "UPDATE hosts SET app_id = app_id || '~draining' "
                "WHERE address LIKE ? AND app_id NOT LIKE '%~draining'",
                (f"%:{internal_grpc_port}",),
            )
            return cur.rowcount > 0
    except sqlite3.Error as exc:
        log.warning("could not take a sidecar out of name resolution", extra={"reason": str(exc)})
        return False


@contextlib.contextmanager
def held_out_of_resolution(db: Path | None, internal_grpc_port: int) -> Iterator[None]:
    """Keep a starting replica out of name resolution until it serves. daprd registers
    itself as soon as it initialises, before the app behind it listens (inference loads
    its models first), and callers would be sent to it and fail. A trigger in the
    resolver's SQLite file renames the row in the same transaction that inserts it;
    on a clean exit of the block the row gets its app id back (Kubernetes: a pod
    joins the endpoints only once ready). Not when the block fails: the replica never
    served, and its row goes when its daprd stops."""
    trigger = f"autoglm_hold_{internal_grpc_port}"
    created = False
    if db is not None:
        try:
            with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn, conn:
                conn.execute(
                    f"CREATE TRIGGER IF NOT EXISTS {trigger} AFTER INSERT ON hosts "
                    f"WHEN NEW.address LIKE '%:{internal_grpc_port}' BEGIN "
                    "UPDATE hosts SET app_id = NEW.app_id || '~starting' "
                    "WHERE rowid = NEW.rowid; END"
                )
                created = True
        except sqlite3.Error:
            pass  # no table yet: the first daprd of this file; nobody to send calls
    yield
    if created and db is not None:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as conn, conn:
            conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
            conn.execute(
                "UPDATE hosts SET app_id = substr(app_id, 1, length(app_id) - 9) "
                "WHERE address LIKE ? AND app_id LIKE '%~starting'",
                (f"%:{internal_grpc_port}",),
            )


def _stop(proc: ManagedProcess | None, timeout: float) -> None:
    if proc is not None:
        proc.stop(timeout=timeout)


@dataclass
class Replica:
    """One instance of an app: its daprd and its process, on ports of their own."""

    entry: AppEntry
    index: int
    resources: Path
    config: Path
    logs: Path
    cwd: Path
    #: The app's output: a file, or ``None`` for the terminal (``make run``).
    app_log: Path | None = None
    drain: DrainTimings = field(default_factory=DrainTimings)
    #: How long the app itself may take to finish work in flight after SIGTERM.
    app_grace_s: float = 30.0
    sidecar: ManagedProcess | None = None
    app: ManagedProcess | None = None
    #: The stack's tokens and credentials, and its Sentry (mTLS, access lists); both
    #: must be set before ``start``.
    secrets: StackSecrets | None = None
    sentry: Sentry | None = None
    restarts: int = 0
    #: ``starting``, ``ready``, ``not ready: <why>``, ``draining``, ``dead``, ``stopped``.
    state: str = "stopped"
    on_event: Callable[[str], None] = field(default=lambda msg: log.info(msg))

    @property
    def app_id(self) -> str:
        return self.entry.app_id

    @property
    def name(self) -> str:
        return f"{self.app_id}-{self.index}"

    @property
    def ports(self) -> SidecarPorts:
        return self.entry.ports

    @property
    def app_port(self) -> int | None:
        return self.entry.app_port

    @property
    def dapr_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.http}"

    @property
    def dapr_headers(self) -> dict[str, str]:
        """The API token this replica's daprd requires."""
        return self.secrets.dapr_headers(self.app_id) if self.secrets else {}

    def processes(self) -> list[ManagedProcess]:
        return [p for p in (self.sidecar, self.app) if p is not None]

    def alive(self) -> bool:
        return all(p.alive() for p in (self.sidecar, self.app) if p is not None) and bool(
            self.processes()
        )

    # -- start ---------------------------------------------------------------------
    def start(self, timeout: float = 300, started: list[ManagedProcess] | None = None) -> Replica:
        """Start daprd and the app; return once the sidecar serves the app (else raise
        ``StartupError`` with the reason). Processes go to ``started`` at once.

        A replica started again gets a new daprd-to-daprd (internal gRPC) port, as a
        restarted pod gets a new address: the other daprds keep their pooled connection
        to the old one in gRPC's reconnect backoff (daprd drops a failed connection only
        for targets without a resiliency policy), so calls to a daprd back on the same
        port failed for seconds (seen: 5 s of retries, one 503, in a rolling restart)."""
        if self.sidecar is not None:
            self.entry = replace(self.entry, ports=replace(self.ports, internal_grpc=free_port()))
        self.state = "starting"
        with held_out_of_resolution(
            nameresolution_db(self.config, self.cwd), self.ports.internal_grpc
        ):
            self._start(timeout, started)
        return self

    def _start(self, timeout: float, started: list[ManagedProcess] | None) -> None:
        mine: list[ManagedProcess] = []
        assert self.secrets is not None, f"{self.name}: no stack secrets"
        try:
            self.sidecar, self.app = launch(
                self.entry,
                self.resources,
                self.config,
                self.logs,
                self.cwd,
                self.secrets,
                self.sentry,
                app_log=self.app_log,
                started=mine,
                ready_timeout=timeout,
                name=self.name,
                drain=self.drain,
            )
        except BaseException:
            self.sidecar = next((p for p in mine if p.name.startswith("daprd-")), None)
            self.app = next((p for p in mine if not p.name.startswith("daprd-")), None)
            raise
        finally:
            if started is not None:
                started.extend(mine)
        self.ensure_serving()

    def sidecar_problems(self) -> list[str]:
        """What this replica's daprd lacks to serve the app (empty: nothing)."""
        headers = self.dapr_headers
        try:
            resp = httpx.get(f"{self.dapr_url}/v1.0/metadata", headers=headers, timeout=3)
            resp.raise_for_status()
            metadata: dict[str, Any] = resp.json()
        except (httpx.HTTPError, ValueError) as exc:
            return [f"metadata API not answering: {exc}"]
        return sidecar_problems(metadata, self.app_id, components_for(self.resources, self.app_id))

    def ensure_serving(self, settle_s: float = 8.0, attempts: int = 3) -> None:
        """Ready only when daprd reports the app's subscriptions and components. A daprd
        that came up without them (it asked the app for its topics too early and gave
        up) stays that way: restart it, up to ``attempts`` times, then fail with why."""
        problems: list[str] = []
        for attempt in range(attempts):
            deadline = time.monotonic() + settle_s
            while True:
                problems = self.sidecar_problems()
                if not problems or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            if not problems:
                self.state = "ready"
                return
            self.state = "not ready: " + "; ".join(problems)
            if attempt + 1 < attempts:
                self.on_event(
                    f"{self.name}: sidecar up without {'; '.join(problems)}: restarting daprd"
                )
                self.restart_sidecar()
        raise StartupError(f"{self.name} not ready after {attempts} sidecar starts: {self.state}")

    def restart_sidecar(self, timeout: float = 120) -> None:
        """A new daprd on the same ports next to the running app."""
        _stop(self.sidecar, timeout=10)
        assert self.secrets is not None, f"{self.name}: no stack secrets"
        self.sidecar = start_daprd(
            self.app_id,
            resources=self.resources,
            config=self.config,
            log_path=self.logs / f"daprd-{self.name}.log",
            ports=self.ports,
            secrets=self.secrets,
            sentry=self.sentry,
            app_port=self.app_port,
            app_protocol=self.entry.app_protocol,
            drain=self.drain,
            name=f"daprd-{self.name}",
        )
        wait_sidecar_ready(self.sidecar, self.ports, timeout)

    # -- stop ----------------------------------------------------------------------
    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        """Kill app and sidecar at once, as when a pod's node dies: no drain, no
        deregistration (name resolution forgets it after its update interval)."""
        for proc in self.processes():
            proc.signal(sig)
        for proc in self.processes():
            if proc.proc is not None:
                with contextlib.suppress(Exception):
                    proc.proc.wait(timeout=10)
        self.state = "dead"

    def stop(self, graceful: bool = True) -> None:
        """Graceful: out of name resolution, ``drain.settle_s`` for calls in flight,
        then SIGTERM daprd (it stops its subscriptions, lets calls still in flight
        finish within ``drain.grace_s``, exits), then SIGTERM the app (it finishes what
        is left within its own grace). Not graceful: SIGTERM both, short timeouts."""
        if graceful:
            self.state = "draining"
            db = nameresolution_db(self.config, self.cwd)
            if db is not None:
                deregister(db, self.ports.internal_grpc)
            time.sleep(self.drain.settle_s)
            _stop(self.sidecar, timeout=self.drain.grace_s + 5)
            _stop(self.app, timeout=self.app_grace_s + 5)
        else:
            for proc in (self.app, self.sidecar):
                _stop(proc, timeout=10)
        self.state = "stopped"

    def restart(self, timeout: float = 300, started: list[ManagedProcess] | None = None) -> None:
        """Graceful stop, then a fresh start on the same ports."""
        self.stop()
        self.restarts += 1
        self.start(timeout, started)


def build_replicas(
    entries: Iterable[AppEntry],
    counts: dict[str, int],
    *,
    resources: Path,
    config: Path,
    logs: Path,
    cwd: Path,
    app_logs: bool = False,
    keep_ports: Callable[[AppEntry], bool] = lambda _e: True,
    drain: DrainTimings | None = None,
    on_event: Callable[[str], None] | None = None,
    secrets: StackSecrets | None = None,
    sentry: Sentry | None = None,
) -> dict[str, list[Replica]]:
    """The replicas of each app, not started. ``app_logs``: the app's output goes to
    ``logs/<app>-<i>.log`` (else the terminal); ``keep_ports(entry)``: whether replica 0
    keeps the ports of the run file."""
    out: dict[str, list[Replica]] = {}
    for entry in entries:
        reps = []
        for index, rep_entry in enumerate(
            replica_entries(entry, counts.get(entry.app_id, 1), keep_first=keep_ports(entry))
        ):
            replica = Replica(
                rep_entry,
                index,
                resources,
                config,
                logs,
                cwd,
                app_log=logs / f"{entry.app_id}-{index}.log" if app_logs else None,
                drain=drain or DrainTimings(),
                secrets=secrets,
                sentry=sentry,
            )
            if on_event is not None:
                replica.on_event = on_event
            reps.append(replica)
        out[entry.app_id] = reps
    return out


def rolling_restart(
    replicas: Iterable[Replica],
    frontdoor: FrontDoor | None = None,
    timeout: float = 300,
    started: list[ManagedProcess] | None = None,
) -> None:
    """Restart every replica, one at a time, each back and ready before the next. A
    gateway replica behind the front door is drained there first (no new requests,
    those in flight finish) and put back once its health checks pass."""
    for replica in replicas:
        behind_door = frontdoor is not None and replica.app_id == "gateway"
        if behind_door:
            assert frontdoor is not None
            frontdoor.set_state(replica.name, "drain")
            frontdoor.wait_idle(replica.name, replica.app_grace_s)
        replica.restart(timeout, started)
        if behind_door:
            assert frontdoor is not None
            frontdoor.set_state(replica.name, "ready")
            if not frontdoor.wait_up(replica.name, 60):
                raise StartupError(f"front door did not take {replica.name} back")
