"""A real Kubernetes API server for the k8s tests: etcd + kube-apiserver + kubectl.

All three are built from their Go modules by `tools/build.sh kube` (pinned in
tools/versions.env). The server runs on 127.0.0.1 with static-token authentication,
RBAC authorization, the default admission plugins (PodSecurity, ServiceAccount,
LimitRanger, ResourceQuota, ...) and its own temporary etcd and service-account keys.
No controller-manager, scheduler or nodes: objects are validated, admitted and stored,
nothing runs. The CRDs that `tools/build.sh crds` collects are installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from autoglm.devstack.processes import ManagedProcess, free_port
from tests.k8s.manifests import CRDS_DIR, TOOLS_BIN, Doc

#: Seconds for etcd / the API server to become ready (first start on a busy 2-core box).
START_TIMEOUT_S = 120.0


def label_selector(selector: Doc) -> str:
    """A LabelSelector (matchLabels / matchExpressions) as a query string selector."""
    terms = [f"{k}={v}" for k, v in sorted(selector.get("matchLabels", {}).items())]
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In":
            terms.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            terms.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            terms.append(key)
        elif op == "DoesNotExist":
            terms.append(f"!{key}")
        else:
            raise AssertionError(f"unknown selector operator {op}")
    return ",".join(terms)


@dataclass
class KubectlResult:
    returncode: int
    stdout: str
    stderr: str


class APIServer:
    """etcd and kube-apiserver as process groups under ``workdir``; a kubectl for them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.token = secrets.token_hex(16)
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.kubeconfig = workdir / "kubeconfig"
        self.processes: list[ManagedProcess] = []
        self._ssl = ssl.create_default_context()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> APIServer:
        try:
            self._start_etcd()
            self._start_apiserver()
            self._install_crds()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """API server first (it holds etcd connections), each with a bounded wait."""
        for proc in reversed(self.processes):
            proc.stop(timeout=10.0)
        self.processes.clear()

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.log_tail(30)}" for p in self.processes)

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self.etcd_port}"
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        etcd = ManagedProcess(
            "etcd",
            [
                str(TOOLS_BIN / "etcd"),
                "--name=test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=test={peer}",
                "--listen-metrics-urls=",
                "--log-level=warn",
                # Throwaway data: no fsync, so a loaded CI box is not slowed down by disk.
                "--unsafe-no-fsync",
            ],
            self.workdir / "etcd.log",
        ).start()
        self.processes.append(etcd)
        etcd.wait_until(lambda: _http_ok(f"{client}/health"), START_TIMEOUT_S, "/health")

    def _start_apiserver(self) -> None:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        (pki / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # token,user,uid,"groups": the only identity the tests use is a cluster admin.
        (pki / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        os.chmod(pki / "tokens.csv", 0o600)
        apiserver = ManagedProcess(
            "kube-apiserver",
            [
                str(TOOLS_BIN / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=false",
                "--profiling=false",
                "--v=0",
            ],
            self.workdir / "kube-apiserver.log",
        ).start()
        self.processes.append(apiserver)
        # The self-signed serving certificate is written before the port opens.
        apiserver.wait_until(
            lambda: (pki / "apiserver.crt").is_file() and self._readyz(pki / "apiserver.crt"),
            START_TIMEOUT_S,
            "/readyz",
        )
        self.kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "test",
                            "cluster": {
                                "server": self.url,
                                "certificate-authority": str(pki / "apiserver.crt"),
                            },
                        }
                    ],
                    "users": [{"name": "admin", "user": {"token": self.token}}],
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
                    "current-context": "test",
                }
            )
        )
        os.chmod(self.kubeconfig, 0o600)

    def _readyz(self, ca: Path) -> bool:
        self._ssl = ssl.create_default_context(cafile=str(ca))
        with contextlib.suppress(urllib.error.URLError, OSError):
            return self.get("/readyz", raw=True) == "ok"
        return False

    def _install_crds(self) -> None:
        files = sorted(CRDS_DIR.glob("*.yaml"))
        assert files, f"no CRDs under {CRDS_DIR}; run tools/build.sh crds"
        args = ["apply", "--server-side", "--field-manager=autoglm-tests"]
        for path in files:
            args += ["-f", str(path)]
        self.kubectl(*args, check=True)
        self.kubectl(
            "wait", "--for=condition=Established", "crd", "--all", "--timeout=120s", check=True
        )

    # -- clients ---------------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = False) -> KubectlResult:
        proc = subprocess.run(
            [str(TOOLS_BIN / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        result = KubectlResult(proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed:\n{proc.stderr}")
        return result

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        url = self.url + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            with urllib.request.urlopen(req, context=self._ssl, timeout=30) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')}"
            ) from None
        return json.loads(text) if text else None

    def get(self, path: str, raw: bool = False, **query: str) -> Any:
        if not raw:
            return self.request("GET", path, query=query or None)
        req = urllib.request.Request(self.url + path)
        req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, context=self._ssl, timeout=5) as resp:
            return resp.read().decode()

    def post(self, path: str, body: Any, **query: str) -> Any:
        return self.request("POST", path, body, query=query or None)

    def pods(self, namespace: str, selector: Doc | str) -> set[str]:
        """Names of the pods a label selector matches, evaluated by the API server."""
        sel = selector if isinstance(selector, str) else label_selector(selector)
        found = self.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=sel)
        return {p["metadata"]["name"] for p in found["items"]}


def _http_ok(url: str) -> bool:
    with (
        contextlib.suppress(urllib.error.URLError, OSError),
        urllib.request.urlopen(url, timeout=2) as resp,
    ):
        return bool(resp.status == 200)
    return False


@contextlib.contextmanager
def running_apiserver(workdir: Path) -> Iterator[APIServer]:
    server = APIServer(workdir).start()
    try:
        yield server
    finally:
        server.stop()
