"""Command line: `grpo run RECIPE.yaml [--set key=value ...] [--resume [CKPT]]`.

The same works as `accelerate launch -m grpo run RECIPE.yaml`. Errors in the recipe, the data or the
reward plug-ins are printed as one line naming the problem, with exit code 2, before any model loads.
"""
from __future__ import annotations

import argparse
import logging
import sys

from grpo.config import ConfigError


def _user_errors() -> tuple[type[BaseException], ...]:
    from data import DataError
    from grpo.checkpoint import CheckpointError
    from grpo.models import ModelError
    from rewards.registry import RewardError

    return (ConfigError, DataError, RewardError, ModelError, CheckpointError)


def cmd_run(args: argparse.Namespace) -> int:
    from grpo.config import load_config
    from grpo.train import train

    cfg = load_config(args.recipe, args.set)
    train(cfg, resume_from=args.resume)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="grpo", description="GRPO post-training for small language models")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a recipe (GRPO training)")
    r.add_argument("recipe", help="path to a recipe YAML file")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set optim.lr=1e-5 (repeatable)")
    r.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from the latest checkpoint in the run directory, or from a given checkpoint")
    r.set_defaults(func=cmd_run)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "transformers", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except _user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # NaN/inf during training: the message names the step and the cause
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
