"""Command line: `grpo run RECIPE.yaml [--set key=value ...] [--resume [CKPT] | --overwrite] [--from-stage NAME]`,
`grpo eval RECIPE.yaml [--overwrite]`, `grpo plot RUN_DIR`.

`grpo run` dispatches on the recipe: a `stages:` list is a pipeline (grpo.pipeline), a top-level `stage:`
key one stage (grpo.stages), anything else GRPO.

The same works as `accelerate launch -m grpo run RECIPE.yaml`. Errors in the recipe, the data or the
reward plug-ins are printed as one line naming the problem, with exit code 2, before any model loads.

An output directory that already holds a run is refused unless the run is resumed (`--resume`) or
started over (`--overwrite`, which deletes that run's files: grpo.tracking.RUN_FILES). A pipeline re-run
resumes by design (finished stages are skipped, an interrupted GRPO stage continues from its checkpoint);
`--overwrite` re-runs all its stages from scratch.
"""
from __future__ import annotations

import argparse
import logging
import sys

from grpo.config import ConfigError


def _user_errors() -> tuple[type[BaseException], ...]:
    from grpo.data import DataError
    from grpo.checkpoint import CheckpointError
    from grpo.models import ModelError
    from grpo.rewards.registry import RewardError

    return (ConfigError, DataError, RewardError, ModelError, CheckpointError)


def cmd_run(args: argparse.Namespace) -> int:
    from grpo.config import read_yaml
    from grpo.pipeline import is_pipeline, run_pipeline
    from grpo.stages import build_stage, run_stage

    tree = read_yaml(args.recipe)
    if is_pipeline(tree):
        if args.resume not in (None, "latest"):
            raise ConfigError("--resume CHECKPOINT needs a single-stage recipe; a pipeline resumes by itself "
                              "(finished stages are skipped, an interrupted GRPO stage continues)")
        run_pipeline(tree, args.set, from_stage=args.from_stage, overwrite=args.overwrite)
        return 0
    if args.from_stage:
        raise ConfigError("--from-stage needs a pipeline recipe (one with a stages: list)")
    kind = tree.get("stage", "grpo")
    run_stage(kind, build_stage(kind, tree, args.set), resume_from=args.resume, overwrite=args.overwrite)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from grpo.config import read_yaml
    from grpo.stages import build_stage, run_stage

    tree = read_yaml(args.recipe)
    if tree.get("stage", "eval") != "eval":
        raise ConfigError(f"grpo eval needs a recipe with stage: eval, got stage: {tree['stage']}")
    run_stage("eval", build_stage("eval", tree, args.set), overwrite=args.overwrite)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from grpo.plot import is_pipeline_dir, plot_run

    run = Path(args.run_dir)
    if not ((run / "metrics.jsonl").is_file() or is_pipeline_dir(run)):
        raise ConfigError(f"{run} has no metrics.jsonl and no finished stages (is it a run directory?)")
    paths = plot_run(run, args.out)
    for folder in dict.fromkeys(p.parent for p in paths):   # a pipeline: its own plots/ and each stage's
        names = [p.name for p in paths if p.parent == folder]
        print(f"{folder}/: {', '.join(names)}")
    for p in paths:
        if p.name in ("dashboard.png", "eval_accuracy.png") and p.parent.parent == run:
            print(f"{'all in one' if p.name == 'dashboard.png' else 'held-out accuracy'}: {p}")
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
    r.add_argument("--overwrite", action="store_true",
                   help="start over in an output directory that holds a run: its run files are deleted first "
                        "(pipelines: every stage re-runs)")
    r.add_argument("--from-stage", default=None, metavar="NAME",
                   help="pipeline recipes: re-run stage NAME and every later stage")
    r.set_defaults(func=cmd_run)
    e = sub.add_parser("eval", help="evaluate a model (recipe with stage: eval): pass@1 greedy, pass@k")
    e.add_argument("recipe")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    e.add_argument("--overwrite", action="store_true", help="replace the results of an earlier eval in output_dir")
    e.set_defaults(func=cmd_eval)
    pl = sub.add_parser("plot", help="write PNG curves, held-out accuracy and a dashboard of a run (or pipeline)")
    pl.add_argument("run_dir")
    pl.add_argument("--out", default=None, help="output folder (default RUN_DIR/plots)")
    pl.set_defaults(func=cmd_plot)
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
