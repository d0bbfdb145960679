"""The ``autoglm`` command: model tooling, the dev stack and diagnostics."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from autoglm.core.logging import configure_logging


def _init_demo(args: argparse.Namespace) -> int:
    from autoglm.models.demo import create_demo_model, demo_model_present

    target = Path(args.path)
    if demo_model_present(target) and not args.force:
        print(f"demo model already present at {target}")
        return 0
    print(f"creating demo GLM model at {target} (tokenizer training + weights, ~10 s)...")
    create_demo_model(target)
    print(f"demo model ready: {target} (model id demo-glm)")
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
    init_demo.add_argument("--path", default=".models/demo-glm")
    init_demo.add_argument("--force", action="store_true", help="recreate if present")
    init_demo.set_defaults(func=_init_demo)

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
