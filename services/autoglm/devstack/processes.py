"""Child processes in their own process group, started with logs and stopped for sure."""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path


class StartupError(RuntimeError):
    """A managed process died or did not become ready in time; carries its log tail."""


_handed_out: set[int] = set()
_handed_out_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and not handed out before by this
    process. A port is only bound later by whoever it is given to, and until then the OS
    may offer it again: without the memory, two servers of one stack could get the same
    port."""
    with _handed_out_lock:
        for _ in range(100):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise RuntimeError("no free TCP port on 127.0.0.1 that was not handed out already")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes of TCP listeners on ``port`` (any address), from /proc/net/tcp*."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                # local_address is HEXIP:HEXPORT; state 0A is LISTEN.
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    return inodes


def port_holders(port: int) -> list[int]:
    """Pids of the processes holding a listening socket on ``port`` (those /proc shows
    us: all of them as root, our own otherwise)."""
    wanted = {f"socket:[{inode}]" for inode in _listening_inodes(port)}
    if not wanted:
        return []
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in wanted:
                        pids.append(int(proc.name))
                        break
    return sorted(pids)


def describe_pid(pid: int) -> str:
    """``pid 123 (redis-server 127.0.0.1:6379)``: what a message names a process by."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        cmd = " ".join(" ".join(a.decode(errors="replace").split()) for a in argv if a)
    except OSError:
        cmd = "?"
    return f"pid {pid} ({cmd[:120]})"


def ancestors(pid: int) -> list[int]:
    """``pid`` and its parents up to init, from /proc."""
    chain: list[int] = []
    while pid > 1 and len(chain) < 64:
        chain.append(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return chain


_PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` for the launcher itself (see ``die_with_parent``)."""
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def die_with_parent() -> None:
    """Ask for SIGTERM when our own parent (``make``, a shell) dies."""
    _die_with(os.getppid())()


def bound_to_launcher(argv: Sequence[str]) -> list[str]:
    """``argv`` run so that it gets SIGTERM when the thread that started it ends (the
    launcher died, even by SIGKILL): no service outlives its launcher as an orphan.
    ``setpriv --pdeathsig`` (util-linux) sets it and execs the command, keeping the pid;
    a ``preexec_fn`` would do the same, but forces a plain fork() whose atfork handlers
    (gRPC's, in a test process) can kill the child before it execs."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--", *argv] if setpriv else list(argv)


class ManagedProcess:
    """One child process in a new session (process group), logging to ``log_path``
    (``None``: inherit the terminal, for the foreground ``dapr run`` of ``make run``).

    The child is bound to its launcher (``PR_SET_PDEATHSIG``): when the *thread* that
    started it ends, it gets SIGTERM. Start long-lived services from a thread that lives
    as long as the stack (the main thread, a supervisor), never from a short-lived one."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        argv = bound_to_launcher(self.argv)
        if self.log_path is None:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
            return self
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} not started"
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None:
            return "(output on the terminal)"
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll ``ready`` until true; fail fast if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartupError(f"{self.name} exited before {what}:\n{self.log_tail()}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.2)
        raise StartupError(f"{self.name}: no {what} within {timeout:.0f}s:\n{self.log_tail()}")

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after ``timeout``."""
        if self.proc is None:
            return
        self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
