"""The ``autoglm`` command: model tooling, the dev stack and diagnostics."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autoglm.core.logging import configure_logging


def _init_demo(args: argparse.Namespace) -> int:
    from autoglm.models.demo import init_demo_models

    models_dir = Path(args.dir)
    print(f"preparing demo models in {models_dir} (first run trains a tokenizer, ~10 s)...")
    init_demo_models(models_dir, force=args.force)
    print(f"signed demo models ready: {models_dir}/demo-glm, {models_dir}/all-MiniLM-L6-v2")
    print(f"dev signing key: {models_dir}/.signing/ (public half goes to Vault on 'make run')")
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


def _dev_up(_args: argparse.Namespace) -> int:
    from autoglm.devstack.run import run_dev_stack

    return run_dev_stack()


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
    dev.add_parser("up", help="Redis + Vault + the three apps via `dapr run -f`").set_defaults(
        func=_dev_up
    )
    sub.add_parser("doctor", help="what is running, what is missing").set_defaults(func=_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    configure_logging("cli", "WARNING")
    logging.getLogger("autoglm").setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
