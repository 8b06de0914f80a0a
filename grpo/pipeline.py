"""Multi-stage recipes (the DeepSeek-R1 pipeline): stage order, handing outputs on, skipping finished
stages, summary.md. Stage internals live in their own modules (grpo.stages dispatches).

Recipe shape::

    output_dir: runs/r1            # stage NAME writes to <output_dir>/<NAME>
    vars: {gsm8k: data/gsm8k}      # free values, referenced as ${vars.gsm8k}; override with --set vars.gsm8k=...
    shared: {data: {template: r1_zero}}   # deep-merged into every stage (the stage's own keys win)
    stages:
      - {name: cold_start, stage: sft, model: {name: smollm2-135m-instruct}, ...}
      - {name: reasoning, stage: grpo, model: {name: "${stages.cold_start.model}"}, ...}

References inside any string: ``${vars.KEY}``, ``${stages.NAME.output}`` (that stage's directory) and
``${stages.NAME.model}`` (its final model: ``<dir>/model``), NAME being an earlier stage. All stages are
resolved and validated before the first one runs. A stage is finished when its directory holds
``DONE``; a re-run skips finished stages and continues an interrupted GRPO stage from its latest
checkpoint (``run.save_every`` > 0; other unfinished stages start over), ``--from-stage NAME`` re-runs NAME
and every later stage from scratch, ``--overwrite`` every stage. So a pipeline re-run is a resume by design,
and never appends to a stage's files: a stage that runs again starts in an emptied directory.
Under several processes only the main one deletes stage directories and writes DONE and summary.md.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from grpo.checkpoint import latest_checkpoint
from grpo.config import ConfigError, apply_override
from grpo.stages import build_stage, run_stage

log = logging.getLogger(__name__)
DONE = "DONE"
_REF = re.compile(r"\$\{([^}]+)\}")
_PIPELINE_KEYS = {"output_dir", "vars", "shared", "stages"}


def is_pipeline(tree: dict[str, Any]) -> bool:
    return "stages" in tree


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _substitute(value: Any, lookup) -> Any:
    if isinstance(value, str):
        full = _REF.fullmatch(value)
        if full:   # keep the type of a whole-string reference (e.g. a number in vars)
            return lookup(full.group(1))
        return _REF.sub(lambda m: str(lookup(m.group(1))), value)
    if isinstance(value, dict):
        return {k: _substitute(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, lookup) for v in value]
    return value


def apply_pipeline_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set stages.NAME.key=value` targets one stage; other keys (vars.x, shared.y, output_dir) the top."""
    tree = copy.deepcopy(tree)
    if isinstance(tree.get("stages"), list):  # each stage its own copy: YAML aliases (data: *data) share one dict,
        tree["stages"] = [copy.deepcopy(s) for s in tree["stages"]]  # which a one-stage --set would change for all
    by_name = {s.get("name"): s for s in tree.get("stages") or [] if isinstance(s, dict)}
    for ov in overrides:
        key = ov.split("=", 1)[0]
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) >= 3:
            if parts[1] not in by_name:
                raise ConfigError(f"--set {key}: no stage named '{parts[1]}' (stages: {', '.join(map(str, by_name))})")
            apply_override(by_name[parts[1]], ov.split(".", 2)[2])
        else:
            apply_override(tree, ov)
    return tree


def plan(tree: dict[str, Any], overrides: list[str] | None = None) -> tuple[Path, list[tuple[str, str, Any]]]:
    """Resolve references and validate every stage: (root dir, [(name, kind, cfg), ...])."""
    tree = apply_pipeline_overrides(tree, overrides or [])
    unknown = set(tree) - _PIPELINE_KEYS
    if unknown:
        raise ConfigError(f"unknown pipeline key(s) {sorted(unknown)}; valid: {sorted(_PIPELINE_KEYS)} "
                          "(stage settings go under stages[] or shared)")
    stages = tree.get("stages")
    if not isinstance(stages, list) or not stages:
        raise ConfigError("stages: expected a non-empty list of stages")
    root = Path(str(tree.get("output_dir", "runs/pipeline")))
    variables = tree.get("vars") or {}
    shared = tree.get("shared") or {}
    done: dict[str, Path] = {}
    out = []
    for i, raw in enumerate(stages):
        where = f"stages[{i}]"
        if not isinstance(raw, dict) or not raw.get("name") or not raw.get("stage"):
            raise ConfigError(f"{where}: each stage needs 'name' and 'stage' (one of sft, grpo, rejection_sampling, "
                              "distill, eval)")
        name, kind = str(raw["name"]), str(raw["stage"])
        if name in done:
            raise ConfigError(f"{where}: stage name '{name}' is used twice")
        if "run" in raw and "output_dir" in (raw["run"] or {}):
            raise ConfigError(f"{where}.run.output_dir: set by the pipeline (<output_dir>/{name})")

        def lookup(ref: str, where=where) -> Any:
            parts = ref.split(".")
            if parts[0] == "vars" and len(parts) == 2:
                if parts[1] not in variables:
                    raise ConfigError(f"{where}: ${{{ref}}}: no such var (vars: {', '.join(variables) or 'none'})")
                return variables[parts[1]]
            if parts[0] == "stages" and len(parts) == 3 and parts[2] in ("output", "model"):
                if parts[1] not in done:
                    raise ConfigError(f"{where}: ${{{ref}}} must name an earlier stage (earlier: {', '.join(done) or 'none'})")
                return str(done[parts[1]] / ("model" if parts[2] == "model" else ""))
            raise ConfigError(f"{where}: cannot resolve ${{{ref}}}; use ${{vars.KEY}}, ${{stages.NAME.output}} "
                              "or ${stages.NAME.model}")

        body = _substitute(_merge(shared, {k: v for k, v in raw.items() if k not in ("name", "stage")}), lookup)
        stage_dir = root / name
        body.setdefault("run", {})["output_dir"] = str(stage_dir)
        cfg = build_stage(kind, body, path=f"{where} ({name})")
        out.append((name, kind, cfg))
        done[name] = stage_dir
    return root, out


def _link_final_model(stage_dir: Path, summary: dict[str, Any]) -> None:
    """GRPO saves checkpoints/step-N/model; expose it as <stage>/model like the other stages."""
    final = summary.get("final_checkpoint")
    link = stage_dir / "model"
    if final and not link.exists():
        os.symlink(os.path.relpath(Path(final) / "model", stage_dir), link)


def run_pipeline(tree: dict[str, Any], overrides: list[str] | None = None, from_stage: str | None = None,
                 plots: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Run the stages in order. A re-run resumes by design: a finished stage (DONE) is skipped, an
    interrupted GRPO stage continues from its latest checkpoint, any other unfinished stage starts over.
    `from_stage` re-runs that stage and every later one from scratch; `overwrite` re-runs all of them.
    What happens to each stage is decided before the first one runs, from the directories as they are."""
    from grpo.config import launch_processes
    from grpo.tracking import check_writable_dir

    root, stages = plan(tree, overrides)
    names = [n for n, _, _ in stages]
    if from_stage is not None and from_stage not in names:
        raise ConfigError(f"--from-stage: no stage named '{from_stage}' (stages: {', '.join(names)})")
    if from_stage is not None and overwrite:
        raise ConfigError("--from-stage and --overwrite contradict each other: --overwrite re-runs every stage")
    check_writable_dir(root, "output_dir")
    restart = 0 if overwrite else names.index(from_stage) if from_stage else len(names)
    actions = [_action(root / name, kind, i >= restart) for i, (name, kind, _) in enumerate(stages)]
    main = launch_processes()[0] == 0   # only the main process deletes and marks stages
    if main:
        root.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, Any]] = {}
    for i, ((name, kind, cfg), action) in enumerate(zip(stages, actions)):
        stage_dir = root / name
        if action == "skip":
            log.info("stage %s (%s): finished earlier, skipped", name, kind)
            results[name] = {"kind": kind, "status": "skipped", **json.loads((stage_dir / DONE).read_text())}
            continue
        if action == "fresh" and main:
            shutil.rmtree(stage_dir, ignore_errors=True)   # unfinished or restarted: start it clean
        log.info("stage %d/%d: %s (%s) -> %s", i + 1, len(stages), name, kind, stage_dir)
        t0 = time.perf_counter()
        if action == "resume":
            log.info("stage %s: resuming from %s", name, latest_checkpoint(stage_dir))
        summary = run_stage(kind, cfg, resume_from="latest" if action == "resume" else None)
        if not main:
            continue
        if kind == "grpo":
            _link_final_model(stage_dir, summary)
        if plots:
            _plot(stage_dir)
        record = {"stage": kind, "seconds": time.perf_counter() - t0, "summary": _jsonable(summary)}
        (stage_dir / DONE).write_text(json.dumps(record, indent=2) + "\n")
        results[name] = {"kind": kind, "status": "ran", **record}
        if plots:
            _plot(root, pipeline=True)   # held-out accuracy after each stage so far
        write_summary_md(root, stages, results)
    if main:
        write_summary_md(root, stages, results)
    return results


def _action(stage_dir: Path, kind: str, restart: bool) -> str:
    """skip (finished: DONE), resume (an interrupted GRPO stage with a checkpoint) or fresh."""
    if restart:
        return "fresh"
    if (stage_dir / DONE).is_file():
        return "skip"
    if kind == "grpo" and latest_checkpoint(stage_dir):
        return "resume"   # an interrupted GRPO stage goes on from its last checkpoint (run.save_every)
    return "fresh"


def _plot(stage_dir: Path, pipeline: bool = False) -> None:
    """Training curves of a finished stage (or, `pipeline`, the accuracy across stages); without matplotlib
    (GPU images may lack it) a warning, not a failed stage: the stage's work is done and must still get
    its DONE marker."""
    try:
        from grpo.plot import plot_pipeline, plot_run

        plot_pipeline(stage_dir, stages=False) if pipeline else plot_run(stage_dir)
    except ImportError as e:
        log.warning("%s: no plots (%s)", stage_dir.name, e)


def _jsonable(x: Any) -> Any:
    return json.loads(json.dumps(x, default=str))


def _headline(kind: str, summary: dict[str, Any]) -> str:
    if kind == "grpo":
        a, b = summary.get("eval_after") or {}, summary.get("eval_before") or {}
        s = f"steps {summary.get('steps')}"
        if a:
            s += f", held-out pass@1 {b.get('pass1', float('nan')):.3f} -> {a['pass1']:.3f}" if b else f", pass@1 {a['pass1']:.3f}"
        return s
    if kind == "eval":
        s = f"pass@1 (greedy) {summary.get('pass1', 0):.3f} on {summary.get('num_examples')} prompts"
        return s + "".join(f", {k} {v:.3f}" for k, v in (summary.get("pass_at_k") or {}).items())
    if kind == "rejection_sampling":
        return f"kept {summary.get('kept')} samples, acceptance {summary.get('acceptance_rate', 0):.3f}"
    if kind in ("sft", "distill"):
        s = f"steps {summary.get('steps')}, loss {summary.get('first_loss', float('nan')):.3f} -> {summary.get('last_loss', float('nan')):.3f}"
        if "eval_loss_after" in summary:
            s += f", eval loss {summary.get('eval_loss_before', float('nan')):.3f} -> {summary['eval_loss_after']:.3f}"
        return s
    return ""


def write_summary_md(root: Path, stages, results: dict[str, dict[str, Any]]) -> Path:
    lines = ["# Pipeline summary", "", "| # | stage | kind | status | seconds | result |", "|---|---|---|---|---|---|"]
    for i, (name, kind, _) in enumerate(stages):
        r = results.get(name)
        if r is None:
            lines.append(f"| {i + 1} | {name} | {kind} | pending | | |")
            continue
        lines.append(f"| {i + 1} | {name} | {kind} | {r['status']} | {r.get('seconds', 0):.0f} | "
                     f"{_headline(kind, r.get('summary') or {})} |")
    pngs = sorted(root.glob("plots/*.png")) + sorted(root.glob("*/plots/dashboard.png"))   # a stage: all in one
    if pngs:
        lines += ["", "## Plots", ""] + [f"![{p.parent.parent.name}/{p.stem}]({p.relative_to(root)})" for p in pngs]
    path = root / "summary.md"
    path.write_text("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------- the eval stage

def run_eval_stage(cfg, model=None, tokenizer=None) -> dict[str, Any]:
    """The `eval` stage: greedy pass@1 (+ sampled pass@k) with per-sample outputs (eval_<tag>.jsonl)."""
    import torch

    from grpo.evaluate import evaluate
    from grpo.models import load_for_inference, load_tokenizer
    from grpo.rollout import check_prompts, make_sampler
    from grpo.tracking import RunWriter
    from grpo.rewards.registry import load_rewards

    rewards = load_rewards(cfg.rewards)
    d = cfg.data
    examples = d.eval.load()
    torch.manual_seed(cfg.run.seed)
    tokenizer = tokenizer or load_tokenizer(cfg.model.name)
    check_prompts(cfg.model, model, tokenizer, examples, d, cfg.eval.max_new_tokens, "data.eval")
    model, tokenizer = load_for_inference(cfg.model, model, tokenizer)
    writer = RunWriter(cfg.run.output_dir)
    sampler = make_sampler(cfg.sampling.backend, model, tokenizer, cfg.eval.batch_size)
    res = evaluate(model, tokenizer, sampler, examples, rewards, cfg.eval, d.template, d.assistant_prefix, tag="eval",
                   writer=writer, progress=cfg.run.progress, max_prompt_tokens=d.max_prompt_tokens)
    summary = {**asdict(res), "model": cfg.model.name}
    writer.write_json("summary.json", summary)
    print(f"[eval] pass@1 (greedy) = {res.pass1:.3f} on {res.num_examples} prompts"
          + "".join(f", {k} = {v:.3f}" for k, v in res.pass_at_k.items()))
    return summary
