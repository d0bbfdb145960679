"""The ``autoglm`` command: model tooling, the dev stack and diagnostics."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from autoglm.core.logging import configure_logging


def _init_demo(args: argparse.Namespace) -> int:
    import hvac.exceptions
    import requests

    from autoglm.devstack.backing import SigningKeyConflictError, store_signing_key
    from autoglm.devstack.processes import port_open
    from autoglm.devstack.run import VAULT_PORT
    from autoglm.devstack.secrets import RUN_SECRETS_FILE, StackSecrets
    from autoglm.models.demo import init_demo_models

    models_dir = Path(args.dir)
    print(f"preparing demo models in {models_dir} (first run trains a tokenizer, ~10 s)...")
    public_key = init_demo_models(models_dir, force=args.force)
    print(f"signed demo models ready: {models_dir}/demo-glm, {models_dir}/all-MiniLM-L6-v2")
    later = f"dev signing key: {models_dir}/.signing/ (public half goes to Vault on 'make run')"
    saved = StackSecrets.load()
    if not port_open(VAULT_PORT):
        print(later)
    elif saved is None:
        # Another checkout's stack: its Vault token is not ours, and its key is its own.
        print(
            f"a dev Vault is running on {VAULT_PORT}, but not this checkout's "
            f"({RUN_SECRETS_FILE} missing): its signing key was left alone\n{later}"
        )
    else:
        # This checkout's `make run` is up: inference verifies against this key from now on
        # (unless the stack already holds another one, which stays).
        try:
            store_signing_key(
                f"http://127.0.0.1:{VAULT_PORT}", public_key, saved.vault_token, replace=args.force
            )
        except SigningKeyConflictError as exc:
            print(f"{exc}\nrerun with --force to replace it\n{later}")
            return 0
        except (hvac.exceptions.VaultError, requests.RequestException) as exc:
            print(f"the dev Vault on {VAULT_PORT} did not take the key ({exc})\n{later}")
            return 0
        print(f"dev signing key: {models_dir}/.signing/; public half stored in the dev Vault")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from autoglm.models.signing import sign_model

    manifest = sign_model(Path(args.model_dir), Path(args.key).read_bytes())
    print(f"signed: {manifest}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from autoglm.models.signing import generate_keypair

    private_pem, public_pem = generate_keypair()
    out = Path(args.out)
    out.write_bytes(private_pem)
    out.chmod(0o600)
    Path(f"{out}.pub").write_bytes(public_pem)
    print(f"private key: {out} (keep it secret)\npublic key: {out}.pub (store in Vault)")
    return 0


def _dev_up(args: argparse.Namespace) -> int:
    from autoglm.devstack.run import run_dev_stack

    return run_dev_stack(args.replicas)


def _dev_ps(args: argparse.Namespace) -> int:
    import json

    from autoglm.devstack.stackfile import format_ps, ps_rows, read_stack

    stack = read_stack()
    if stack is None:
        print("no dev stack recorded (start one with `make run`)", file=sys.stderr)
        return 1
    rows = ps_rows(stack)
    if args.json:
        print(
            json.dumps(
                {
                    "launcher": {"pid": stack.launcher_pid, "alive": stack.launcher_alive()},
                    **stack.extra,
                    "processes": rows,
                },
                indent=2,
            )
        )
    else:
        print(format_ps(stack, rows))
    return 0 if stack.launcher_alive() else 1


def _dev_down(_args: argparse.Namespace) -> int:
    from autoglm.devstack.stackfile import STACK_FILE, read_stack, stop_stack

    stack = read_stack()
    if stack is None:
        print("no dev stack recorded; nothing to stop")
        return 0
    signalled = stop_stack(stack)
    STACK_FILE.unlink(missing_ok=True)
    print(f"stopped the dev stack ({len(signalled)} process(es) signalled)")
    return 0


def _tenant(value: str) -> str:
    from autoglm.gateway.security.principal import is_tenant

    if not is_tenant(value):
        raise argparse.ArgumentTypeError("letters, digits, '_', '.', '-' only, at most 64")
    return value


def _token(args: argparse.Namespace) -> int:
    import hvac
    import hvac.exceptions
    import requests

    from autoglm.devstack.backing import VAULT_MOUNT, VAULT_PREFIX
    from autoglm.devstack.secrets import StackSecrets
    from autoglm.gateway.security.tokens import mint_token

    saved = StackSecrets.load()
    vault_token = args.vault_token or (saved.vault_token if saved else None)
    client = hvac.Client(url=args.vault_addr, token=vault_token)
    try:
        secret = client.secrets.kv.v2.read_secret_version(
            path=f"{VAULT_PREFIX}/jwt", mount_point=VAULT_MOUNT, raise_on_deleted_version=True
        )["data"]["data"]
    except (hvac.exceptions.VaultError, requests.RequestException) as exc:
        print(f"cannot read the jwt secret from Vault at {args.vault_addr}: {exc}", file=sys.stderr)
        print("is the dev stack running? start it with `make run`", file=sys.stderr)
        return 1
    token = mint_token(
        secret, tenant=args.tenant, role=args.role, subject=args.subject, ttl_s=args.ttl
    )
    print(f"token for tenant {args.tenant!r}, role {args.role!r}, valid {args.ttl}s:")
    print(token)  # alone on the last line, for $(autoglm token ... | tail -n1)
    return 0


def _doctor(_args: argparse.Namespace) -> int:
    from autoglm.devstack.doctor import run_doctor

    return run_doctor()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoglm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    models = sub.add_parser("models", help="model tooling").add_subparsers(
        dest="models_command", required=True
    )
    init_demo = models.add_parser("init-demo", help="create the tiny GLM demo model")
    init_demo.add_argument("--dir", default=".models")
    init_demo.add_argument("--force", action="store_true", help="recreate if present")
    init_demo.set_defaults(func=_init_demo)
    sign = models.add_parser("sign", help="write a SHA-256 manifest and Ed25519 signature")
    sign.add_argument("model_dir")
    sign.add_argument("--key", required=True, help="Ed25519 private key (PEM)")
    sign.set_defaults(func=_sign)
    keygen = models.add_parser("keygen", help="create an Ed25519 signing key pair")
    keygen.add_argument("--out", required=True, help="private key path; public is <out>.pub")
    keygen.set_defaults(func=_keygen)

    dev = sub.add_parser("dev", help="local stack").add_subparsers(
        dest="dev_command", required=True
    )
    up = dev.add_parser("up", help="Redis + Vault + the three apps via `dapr run -f`")
    up.add_argument(
        "--replicas",
        default=os.environ.get("AUTOGLM_REPLICAS"),
        help="N (every stateless app) or gateway=N,inference=M; the archiver runs one",
    )
    up.set_defaults(func=_dev_up)
    ps = dev.add_parser("ps", help="every process of the running dev stack")
    ps.add_argument("--json", action="store_true")
    ps.set_defaults(func=_dev_ps)
    dev.add_parser("down", help="stop the dev stack of this checkout").set_defaults(func=_dev_down)
    token = sub.add_parser("token", help="mint a dev JWT from the dev Vault (last line)")
    token.add_argument("--tenant", required=True, type=_tenant)
    token.add_argument("--role", choices=["admin", "user", "service"], default="user")
    token.add_argument("--subject", help="the token's sub claim (default: ROLE@TENANT)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    token.add_argument(
        "--vault-addr", default=os.environ.get("AUTOGLM_VAULT_ADDR", "http://127.0.0.1:8200")
    )
    token.add_argument(
        "--vault-token",
        default=os.environ.get("VAULT_TOKEN"),
        help="default: VAULT_TOKEN, else the one `make run` saved in .data/secrets/dev.env",
    )
    token.set_defaults(func=_token)
    sub.add_parser("doctor", help="what is running, what is missing").set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging("cli", "WARNING")
    logging.getLogger("autoglm").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
