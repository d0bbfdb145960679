"""Secrets of one local stack, generated when it starts and never committed.

``make run`` and the tests' stacks lock their sidecars and backing services the way a
cluster does (README, Security):

- every daprd requires ``DAPR_API_TOKEN`` on its HTTP and gRPC APIs, so a local process
  that does not hold the token cannot read state, secrets or publish through it;
- every app requires ``APP_API_TOKEN`` on every call from its daprd (the gateway's
  ``/dapr/*`` routes, the gRPC apps' methods and topic deliveries);
- both tokens are the app's own (derived per app id from the stack's two master
  tokens): on one host every daprd and app port is reachable by every local process,
  where in a cluster each daprd's API is reachable only inside its pod, so one app
  holding another's token would let it act as that app (a call from a daprd to its
  own app id bypasses the access lists);
- Redis requires a password, the dev Vault a root token; daprd reads both from its
  environment (the components' ``envRef``), never from a file in the repository.

Values live in the environment of the processes that need them and in one file
(``.data/secrets/dev.env`` for ``make run``) readable by its owner only (0600), so that
CLI commands (``autoglm token``) find the running stack's Vault. Nothing is passed on a
command line (``ps`` shows command lines to every user).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from autoglm.devstack.layout import DATA_DIR

#: Where ``make run`` keeps its stack's secrets (git-ignored, 0600).
RUN_SECRETS_FILE = DATA_DIR / "secrets" / "dev.env"
#: Environment variables daprd's components read the backing-service credentials from
#: (``envRef`` in components/*.yaml; daprd refuses ``DAPR_*`` names there).
REDIS_PASSWORD_ENV = "AUTOGLM_REDIS_PASSWORD"
VAULT_TOKEN_ENV = "AUTOGLM_VAULT_TOKEN"
DAPR_API_TOKEN_ENV = "DAPR_API_TOKEN"
APP_API_TOKEN_ENV = "APP_API_TOKEN"


def _token() -> str:
    # Hex, not urlsafe base64: a value that starts with "-" is read as an option by any
    # command line it is passed to (``autoglm token --vault-token ...``).
    return secrets.token_hex(32)


@dataclass(frozen=True)
class StackSecrets:
    """The credentials of one stack (one ``make run``, one test stack)."""

    dapr_api_token: str
    app_api_token: str
    redis_password: str
    vault_token: str

    @staticmethod
    def generate() -> StackSecrets:
        return StackSecrets(_token(), _token(), _token(), _token())

    def dapr_token(self, app_id: str) -> str:
        """The Dapr API token of ``app_id``'s daprd."""
        return _derive(self.dapr_api_token, app_id)

    def app_token(self, app_id: str) -> str:
        """The app API token ``app_id``'s daprd sends to the app."""
        return _derive(self.app_api_token, app_id)

    def daprd_env(self, app_id: str) -> dict[str, str]:
        """What ``app_id``'s daprd needs: both of the app's tokens (it requires the first,
        sends the second to its app) and the backing services' credentials."""
        return {
            DAPR_API_TOKEN_ENV: self.dapr_token(app_id),
            APP_API_TOKEN_ENV: self.app_token(app_id),
            REDIS_PASSWORD_ENV: self.redis_password,
            VAULT_TOKEN_ENV: self.vault_token,
        }

    def app_env(self, app_id: str) -> dict[str, str]:
        """What an app needs: the token it sends to its daprd and the one it requires
        from it. Never the Redis password or the Vault token."""
        return {
            DAPR_API_TOKEN_ENV: self.dapr_token(app_id),
            APP_API_TOKEN_ENV: self.app_token(app_id),
        }

    def dapr_headers(self, app_id: str) -> dict[str, str]:
        """Headers for a client of ``app_id``'s daprd HTTP API (tests, load generators)."""
        return {"dapr-api-token": self.dapr_token(app_id)}

    def save(self, path: Path = RUN_SECRETS_FILE) -> Path:
        """Write as ``KEY=value`` lines, created 0600 (never readable by others, not even
        for a moment), in a 0700 folder."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        lines = "".join(f"{name.upper()}={value}\n" for name, value in asdict(self).items())
        private_file(path.with_name(f".{path.name}.tmp"), lines).replace(path)
        return path

    @staticmethod
    def load(path: Path = RUN_SECRETS_FILE) -> StackSecrets | None:
        """The secrets saved by the running stack, or None if there are none."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        try:
            return StackSecrets(**{f.name: values[f.name.upper()] for f in fields(StackSecrets)})
        except KeyError:
            return None


def _derive(master: str, app_id: str) -> str:
    return hmac.new(master.encode(), app_id.encode(), hashlib.sha256).hexdigest()


def private_file(path: Path, text: str) -> Path:
    """Write ``text`` to a new file only its owner can read (0600 from creation)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    return path
