"""Every recipe in recipes/ run end to end, as users run it (`grpo run RECIPE --set ...`), on a tiny random
Llama with the char tokenizer, with the rollout engine serving every stage that samples.

The recipe files stay as users read them; the test shrinks them with `--set` overrides only, found by walking
each stage by its kind: the model becomes the tiny checkpoint, data sets a handful of generated arithmetic
or GSM8K-like rows (tests/data/gsm8k), steps, batches and token budgets a few units. Where a recipe reads a
value from `vars` (`${vars.x}`), the override goes to that var, the recipe's own knob. Sizes are odd on
purpose (groups of 3, 11 new tokens, 7-row sampling batches) and the prompts' lengths fall between bucket
multiples (asserted below), so the engine's cache sizing meets the shapes that broke r1.yaml on the GPU
(`prompt + max_new_tokens = 512 > max_seq_len = 511` in its first eval stage). A recipe whose data source has
no tiny stand-in here fails with a message saying what to add.

    python -m pytest -q tests/test_recipes.py       (make test-recipes)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from grpo.cli import main
from grpo.config import read_yaml
from grpo.stages import STAGE_KINDS

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))   # recipes/accelerate/*.yaml are launch configs, not recipes
GSM8K = ROOT / "tests" / "data" / "gsm8k"              # train.jsonl / test.jsonl, GSM8K's format
SAMPLING_KINDS = ("grpo", "rejection_sampling", "distill", "eval")
_VAR = re.compile(r"^\$\{vars\.(\w+)\}$")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from grpo.testing import char_tokenizer, tiny_model

    d = tmp_path_factory.mktemp("recipes") / "tiny-model"
    tok = char_tokenizer()
    tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(autouse=True)
def fresh_process_state():
    """Each recipe as in its own `grpo run` process: accelerate keeps one state per process and refuses another
    mixed_precision in it (recipes differ: "auto" is bf16 on AMX CPUs, tiny_r1 says "no"), and a recipe's
    run.torch_threads would outlive it."""
    import torch
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.set_num_threads(threads)


def _get(tree: dict, path: str):
    for p in path.split("."):
        if not isinstance(tree, dict) or p not in tree:
            return None
        tree = tree[p]
    return tree


def _tiny_dataset(ds: dict) -> dict[str, object]:
    """Overrides (relative to the data set's block) that make it a handful of rows."""
    source, opts = ds.get("source", "arithmetic"), ds.get("options") or {}
    inner = opts.get("dataset", "arithmetic") if source == "cold_start" else source
    out: dict[str, object] = {"limit": 6}
    if source == "file":
        return out  # an earlier stage's output (rejection sampling's data.jsonl)
    if inner in ("arithmetic", "countdown"):
        out["options.n"] = 12
    elif inner == "gsm8k":
        out["options.path"] = str(GSM8K)
    else:
        raise NotImplementedError(f"no tiny stand-in for data source {source!r} ({inner!r}): add a fixture and a "
                                  "branch in tests/test_recipes.py::_tiny_dataset")
    return out


def _stage_sizes(kind: str, body: dict, model: str) -> dict[str, object]:
    """Key -> value overrides that shrink one stage of `kind` (`body`: its keys, shared ones merged in)."""
    # one torch thread, as the rest of the suite (conftest): CI shares its two cores
    out: dict[str, object] = {"run.progress": False, "run.torch_threads": 1}
    for key in {"distill": ("teacher.name", "student.name")}.get(kind, ("model.name",)):
        name = _get(body, key)
        if key == "model.name" or name is not None:
            if not (isinstance(name, str) and "${stages." in name):  # a stage output stays as it is
                out[key] = model
    data = body.get("data") or {}
    for part in ("train", "eval"):
        if isinstance(data.get(part), dict):
            out.update({f"data.{part}.{k}": v for k, v in _tiny_dataset(data[part]).items()})
    if data.get("mix"):
        mixed = []
        for ds in data["mix"]:
            ds = json.loads(json.dumps(ds))
            for k, v in _tiny_dataset(ds).items():
                node = ds
                *parents, last = k.split(".")
                for p in parents:
                    node = node.setdefault(p, {})
                node[last] = v
            mixed.append(ds)
        out["data.mix"] = json.dumps(mixed)
    if kind in SAMPLING_KINDS:
        out["sampling.backend"] = "engine"
    if kind in ("grpo", "rejection_sampling", "distill"):
        out.update({"sampling.max_new_tokens": 11, "sampling.batch_size": 7})
    if kind in ("grpo", "rejection_sampling"):
        out["sampling.group_size"] = 3
    if kind in ("grpo", "eval"):
        out.update({"eval.max_new_tokens": 9, "eval.batch_size": 5})
        if (_get(body, "eval.num_samples") or 1) > 1:
            out["eval.num_samples"] = 3
    if kind == "grpo":
        out.update({"optim.steps": 2, "optim.prompts_per_step": 3, "optim.micro_batch_size": 4})
        if _get(body, "run.save_every"):
            out["run.save_every"] = 1
    if kind in ("sft", "distill"):
        out.update({"optim.steps": 2, "optim.batch_size": 4, "optim.micro_batch_size": 2})
    if kind == "rejection_sampling":  # a random model is never right: accept what it says, so later stages get data
        names = [r if isinstance(r, str) else r["name"] for r in body.get("rewards") or ["accuracy", "format"]]
        out.update({f"accept.{n}": 0.0 for n in names})
        out["keep_truncated"] = True
    return out


def shrink(tree: dict, model: Path, out_dir: Path) -> list[str]:
    """`--set` overrides that run the recipe `tree` on the tiny model in `out_dir`."""
    sets: dict[str, object] = {}
    variables = tree.get("vars") or {}

    def put(raw_stage: dict, prefix: str, key: str, value) -> None:
        ref = _VAR.match(str(_get(raw_stage, key) or ""))
        if ref and ref.group(1) in variables and sets.get(f"vars.{ref.group(1)}", value) == value:
            sets[f"vars.{ref.group(1)}"] = value   # the recipe's own knob
        else:
            sets[prefix + key] = value

    if "stages" in tree:
        from grpo.pipeline import _merge

        sets["output_dir"] = str(out_dir)
        for raw in tree["stages"]:
            body = _merge(tree.get("shared") or {}, raw)
            for key, value in _stage_sizes(raw["stage"], body, str(model)).items():
                put(raw, f"stages.{raw['name']}.", key, value)
    else:
        sets["run.output_dir"] = str(out_dir)
        for key, value in _stage_sizes(tree.get("stage", "grpo"), tree, str(model)).items():
            put(tree, "", key, value)
    return [f"{k}={v}" for k, v in sets.items()]


def test_every_stage_kind_is_in_some_recipe():
    kinds = set()
    for path in RECIPES:
        tree = read_yaml(path)
        kinds |= {s["stage"] for s in tree["stages"]} if "stages" in tree else {tree.get("stage", "grpo")}
    assert kinds == set(STAGE_KINDS)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_runs_end_to_end_on_a_tiny_model(recipe, tiny_dir, tmp_path, monkeypatch):
    import grpo.pipeline
    import grpo.stages
    from grpo.engine import EngineSampler
    from grpo.config import load_config
    from grpo.pipeline import plan
    from grpo.rollout import HFSampler
    from grpo.stages import build_stage

    tree = read_yaml(recipe)
    out = tmp_path / "run"
    sets = shrink(tree, tiny_dir, out)
    args = [x for s in sets for x in ("--set", s)]
    if "stages" in tree:
        stages = plan(tree, sets)[1]
    else:
        kind = tree.get("stage", "grpo")
        stages = [(None, kind, load_config(recipe, sets) if kind == "grpo" else build_stage(kind, tree, sets))]

    current = {"kind": stages[0][1]}
    calls: list[tuple[str, int, int]] = []   # (stage kind, longest prompt, max_new_tokens) per engine call
    real_run_stage, real_generate = grpo.stages.run_stage, EngineSampler.generate

    def run_stage(kind, cfg, **kw):
        current["kind"] = kind
        return real_run_stage(kind, cfg, **kw)

    def generate(self, prompt_ids, group_size, params):
        calls.append((current["kind"], max(map(len, prompt_ids)), params.max_new_tokens))
        return real_generate(self, prompt_ids, group_size, params)

    def hf_generate(self, *a, **k):
        raise AssertionError("a stage sampled with the HF sampler: sampling.backend engine was not applied")

    monkeypatch.setattr(grpo.stages, "run_stage", run_stage)
    monkeypatch.setattr(grpo.pipeline, "run_stage", run_stage)
    monkeypatch.setattr(EngineSampler, "generate", generate)
    monkeypatch.setattr(HFSampler, "generate", hf_generate)

    assert main(["run", str(recipe), *args]) == 0
    if "stages" in tree:
        assert all((out / name / "DONE").is_file() for name, _, _ in stages)
        assert (out / "summary.md").is_file()
    else:
        assert (out / "summary.json").is_file()

    sampling = {kind for _, kind, cfg in stages if kind in SAMPLING_KINDS
                and not (kind == "distill" and cfg.mode == "logit" and cfg.text == "data")}
    assert {k for k, _, _ in calls} == sampling, "every stage that samples went through the engine"
    for kind in sampling:  # prompt lengths between the prefill buckets: the padding rounding really happens
        assert any(longest % 8 for k, longest, _ in calls if k == kind), (kind, calls)
