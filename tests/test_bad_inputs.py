"""Every entry point rejects bad input with exit code 2 and one `error: ...` line naming what is wrong.

Each row is run in-process through `grpo.cli.main(["run", recipe, ...])`. Rows that get past the config
(model paths, checkpoints, rewards that misbehave only when called) use a tiny random model saved to a
directory, so the whole table runs in seconds. Rows from issue #18 (marked below) failed late, with a
traceback, or not at all before it: each was checked to fail on main 16c2812.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from grpo import checkpoint as ckpt
from grpo.cli import main
from grpo.testing import char_tokenizer, tiny_model

PLUGIN = '''
def wrong_length(completions, **kw):
    return [1.0]

def words(completions, **kw):
    return ["good"] * len(completions)

def infinite(completions, **kw):
    return [float("inf")] * len(completions)

def not_a_number(completions, **kw):
    return [0.0] + [float("nan")] * (len(completions) - 1)

def needs_solution(completions, solution, **kw):
    return [0.0] * len(completions)

def scalar(completions, **kw):
    return 1.0

def brevity(completions, target=40, **kwargs):
    return [-abs(len(c) - target) / target for c in completions]

not_a_function = 3
'''


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_inputs")
    tok = char_tokenizer()
    model_dir = root / "tiny"
    tiny_model(tok).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    no_weights = root / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((model_dir / "config.json").read_text())
    no_config = root / "no_config"
    no_config.mkdir()
    # a checkpoint written by a model of another shape
    other = root / "other_run"
    ckpt.save_checkpoint(other, 1, tiny_model(tok, hidden_size=32, intermediate_size=64, num_attention_heads=2),
                         tok, {"step": 1}, "x: 1\n")
    (root / "rewards_plugin.py").write_text(PLUGIN)
    (root / "broken_plugin.py").write_text("def f(:\n")
    (root / "empty.jsonl").write_text("")
    (root / "qa.jsonl").write_text("".join(json.dumps({"q": f"{i}+1?", "a": str(i + 1)}) + "\n" for i in range(4)))
    (root / "long.jsonl").write_text("".join(json.dumps({"q": f"{i}+1?" + "x" * 600 * (i == 2), "a": str(i + 1)}) + "\n"
                                             for i in range(4)))   # row 2 is longer than the model's 512 positions
    (root / "bad.yaml").write_text("optim: {steps: 2\n  lr: [\n")
    (root / "list.yaml").write_text("- a\n- b\n")
    # a later row lacks the prompt column / the answer column (row 0 has both)
    rows = [{"q": f"{i}+1?", "a": str(i + 1)} for i in range(4)]
    (root / "qa_no_prompt.jsonl").write_text("".join(json.dumps(r if i != 2 else {"a": "3"}) + "\n"
                                                     for i, r in enumerate(rows)))
    (root / "qa_no_answer.jsonl").write_text("".join(json.dumps(r if i != 1 else {"q": "1+1?"}) + "\n"
                                                     for i, r in enumerate(rows)))
    # the same recipe with its optim block given twice: plain YAML would keep only the second
    (root / "duplicate_key.yaml").write_text(yaml.safe_dump(base_recipe(root, "duplicate_key"))
                                             + "optim: {steps: 5}\n")
    (root / "a_file").write_text("not a directory\n")
    finished = root / "runs" / "finished"   # what a finished run leaves (its files stay untouched)
    finished.mkdir(parents=True)
    (finished / "metrics.jsonl").write_text('{"step": 1}\n')
    (finished / "config.yaml").write_text("x: 1\n")
    return root


def base_recipe(env: Path, run_name: str = "run") -> dict:
    return {
        "model": {"name": str(env / "tiny")},
        "data": {"train": {"source": "arithmetic", "options": {"n": 8, "seed": 0, "difficulty": [1]}}},
        "rewards": [{"name": "accuracy"}],
        "sampling": {"group_size": 2, "max_new_tokens": 4, "batch_size": 8},
        "optim": {"steps": 1, "prompts_per_step": 2, "micro_batch_size": 4, "lr": 1e-4},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": str(env / "runs" / run_name), "progress": False, "mixed_precision": "no",
                "save_completions": False},
    }


# (id, edit of the base recipe or None, extra CLI args, expected text in the error line)
# `edit` is a function (recipe dict, env) -> None, or a string naming a whole recipe file under env.
ROWS = [
    # recipe files
    ("missing recipe", "missing.yaml", [], "recipe not found"),
    ("malformed yaml", "bad.yaml", [], "is not valid YAML"),
    ("top level list", "list.yaml", [], "must be a mapping at the top level, got list"),
    ("unknown top key", lambda r, e: r.update(optimm={}), [], "unknown key 'optimm'; did you mean 'optim'?"),
    ("unknown nested key", lambda r, e: r["optim"].update(lrr=1), [], "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ("wrong type int", lambda r, e: r["optim"].update(steps="ten"), [], "optim.steps: expected an integer, got str 'ten'"),
    ("wrong type float", lambda r, e: r["sampling"].update(temperature="hot"), [], "sampling.temperature: expected a number"),
    ("wrong type bool", lambda r, e: r["run"].update(progress="maybe"), [], "run.progress: expected true/false"),
    ("wrong type section", lambda r, e: r.update(optim=5), [], "optim: expected a mapping, got int 5"),
    ("zero steps", lambda r, e: r["optim"].update(steps=0), [], "optim.steps: must be positive, got 0"),
    ("negative prompts", lambda r, e: r["optim"].update(prompts_per_step=-1), [], "optim.prompts_per_step: must be positive"),
    ("zero micro batch", lambda r, e: r["optim"].update(micro_batch_size=0), [], "optim.micro_batch_size: must be positive"),
    ("G = 1", lambda r, e: r["sampling"].update(group_size=1), [], "sampling.group_size: must be >= 2"),
    ("negative lr", lambda r, e: r["optim"].update(lr=-1e-5), [], "optim.lr: must be positive"),
    ("top_p > 1", lambda r, e: r["sampling"].update(top_p=1.5), [], "sampling.top_p: must be in (0, 1]"),
    ("zero max_new_tokens", lambda r, e: r["sampling"].update(max_new_tokens=0), [], "sampling.max_new_tokens: must be positive"),
    ("unknown loss type", lambda r, e: r.update(algorithm={"loss_type": "ppo"}), [], "algorithm.loss_type: must be one of"),
    ("keep_last 0", lambda r, e: r["run"].update(keep_last=0), [], "run.keep_last: must be >= 1"),
    ("unknown tracker", lambda r, e: r["run"].update(trackers=["tensorbord"]), [], "run.trackers: unknown tracker 'tensorbord'"),
    ("no rewards", lambda r, e: r.update(rewards=[]), [], "rewards: at least one reward is needed"),
    ("bad template", lambda r, e: r["data"].update(template="r2"), [], "data.template: must be one of"),
    # --set overrides
    ("--set without =", None, ["--set", "optim.lr"], "--set expects key=value, got 'optim.lr'"),
    ("--set bad yaml", None, ["--set", "optim.betas=[0.9,"], "--set optim.betas: value '[0.9,' is not valid YAML"),
    ("--set into a scalar", None, ["--set", "optim.steps.x=1"], "--set optim.steps.x: 'steps' is not a mapping"),
    ("--set unknown key", None, ["--set", "optim.setps=3"], "unknown key 'optim.setps'; did you mean 'optim.steps'?"),
    ("--set wrong type", None, ["--set", "optim.steps=1.5"], "optim.steps: expected an integer, got float 1.5"),
    # datasets
    ("unknown data source", lambda r, e: r["data"]["train"].update(source="arithmetc"), [],
     "unknown data source 'arithmetc'. Did you mean 'arithmetic'"),
    ("unknown data option", lambda r, e: r["data"]["train"]["options"].update(nn=3), [],
     "data source 'arithmetic': "),
    ("zero data limit", lambda r, e: r["data"]["train"].update(limit=0), [], "data.train.limit: must be positive, got 0"),
    ("missing data file", lambda r, e: r["data"].update(train={"source": "file", "options": {"path": str(e / "nope.jsonl")}}),
     [], "data file not found: "),
    ("empty dataset", lambda r, e: r["data"].update(train={"source": "file", "options": {"path": str(e / "empty.jsonl")}}),
     [], "dataset is empty"),
    ("missing dataset column", lambda r, e: r["data"].update(train={"source": "file", "options": {
        "path": str(e / "qa.jsonl"), "columns": {"prompt": "question", "answer": "a"}}}), [],
     "column 'question' not found"),
    ("prompt past the model's context", lambda r, e: r["data"].update(train={"source": "file", "options": {
        "path": str(e / "long.jsonl"), "columns": {"prompt": "q", "answer": "a"}}}), [],
     "data.train: example 'long-00002' has a prompt of"),
    ("zero max_prompt_tokens", lambda r, e: r["data"].update(max_prompt_tokens=0), [],
     "data.max_prompt_tokens: must be a positive number of tokens"),
    ("max_prompt_tokens past the context", lambda r, e: r["data"].update(max_prompt_tokens=510), [],
     "data.max_prompt_tokens (510) + max_new_tokens (4) = 514 > 512, the model's context length"),
    # reward plug-ins
    ("unknown reward name", lambda r, e: r.update(rewards=[{"name": "acuracy"}]), [],
     "unknown reward 'acuracy'. Did you mean 'accuracy'"),
    ("reward module does not import", lambda r, e: r.update(rewards=[{"name": "no_such_pkg.rewards:f"}]), [],
     "cannot import module 'no_such_pkg.rewards'"),
    ("reward file does not import", lambda r, e: r.update(rewards=[{"name": f"{e}/broken_plugin.py:f"}]), [],
     "broken_plugin.py failed: SyntaxError"),
    ("reward file missing", lambda r, e: r.update(rewards=[{"name": f"{e}/nope.py:f"}]), [], "file not found"),
    ("reward name missing in file", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:nothing"}]), [],
     "defines no 'nothing'"),
    ("reward not callable", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:not_a_function"}]), [],
     "'not_a_function' is not callable"),
    ("reward listed twice", lambda r, e: r.update(rewards=["accuracy", "accuracy"]), [], "rewards listed twice"),
    ("reward needs a missing column", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:needs_solution"}]),
     [], "needs the dataset column 'solution'"),
    ("reward wrong length", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:wrong_length"}]), [],
     "step 1: reward 'wrong_length' returned 1 values for 4 completions"),
    ("reward returns words", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:words"}]), [],
     "step 1: reward 'words' returned 'good' (str) for sample 0"),
    ("reward returns a scalar", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:scalar"}]), [],
     "step 1: reward 'scalar' returned float, expected a list"),
    ("reward returns inf", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:infinite"}]), [],
     "step 1: reward 'infinite' returned inf for sample 0 (id "),
    ("reward returns NaN", lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:not_a_number"}]), [],
     "step 1: reward 'not_a_number' returned NaN for sample 1 (id "),
    ("plug-in option typo vanishing into **kwargs",
     lambda r, e: r.update(rewards=[{"name": f"{e}/rewards_plugin.py:brevity", "kwargs": {"targt": 20}}]), [],
     "rewards[0].kwargs.targt: reward 'brevity' has no option 'targt'; did you mean 'target'? (its options: target;"),
    # model paths
    ("model path not found", lambda r, e: r["model"].update(name=str(e / "nope")), [], "model path not found"),
    ("model dir without weights", lambda r, e: r["model"].update(name=str(e / "no_weights")), [], "has a config.json but no weights"),
    ("model dir without config", lambda r, e: r["model"].update(name=str(e / "no_config")), [], "has no config.json"),
    ("gguf file missing", lambda r, e: r["model"].update(name=str(e / "m.gguf")), [], "GGUF file not found"),
    # checkpoints
    ("resume without checkpoints", None, ["--resume"], "--resume: no complete checkpoint under"),
    ("resume from an incomplete dir", None, ["--resume", "{env}/no_config"], "is not a complete checkpoint (no trainer_state.pt)"),
    ("resume from a different model", None, ["--resume", "{env}/other_run/checkpoints/step-1"], "is from a different model"),
    # ---- issue #18: the output directory
    ("re-run into a finished run", lambda r, e: r["run"].update(output_dir=str(e / "runs" / "finished")), [],
     "already holds a run (config.yaml, metrics.jsonl); resume it with --resume, start it over with --overwrite"),
    ("output_dir is a file", lambda r, e: r["run"].update(output_dir=str(e / "a_file")), [],
     "run.output_dir: " + "{env}/a_file is a file, not a directory"),
    ("output_dir inside a file", lambda r, e: r["run"].update(output_dir=str(e / "a_file" / "run")), [],
     "run.output_dir: cannot create {env}/a_file/run: {env}/a_file is a file"),
    ("output_dir not writable", lambda r, e: r["run"].update(output_dir="/proc/grpo-no-such-dir/run"), [],
     "run.output_dir: cannot write to /proc/grpo-no-such-dir/run (in /proc)"),
    ("--resume with --overwrite", None, ["--resume", "--overwrite"], "--resume and --overwrite contradict each other"),
    ("pipeline output_dir is a file", lambda r, e: _as_pipeline(r, e, str(e / "a_file")), [],
     "output_dir: {env}/a_file is a file, not a directory"),
    # ---- issue #18: reward names everywhere, before the model loads
    ("eval metric typo", lambda r, e: r["eval"].update(metric="acuracy"), [],
     "eval.metric: unknown reward 'acuracy'; did you mean 'accuracy'?"),
    ("reward typo in a later eval stage", lambda r, e: _as_pipeline(r, e, then={
        "name": "final_eval", "stage": "eval", "model": {"name": str(e / "tiny")}, "rewards": ["acuracy"],
        "data": {"eval": {"source": "arithmetic", "options": {"n": 4, "seed": 1}}}}), [],
     "stages[1] (final_eval): rewards[0].name: unknown reward 'acuracy'. Did you mean 'accuracy'"),
    ("metric typo in a later eval stage", lambda r, e: _as_pipeline(r, e, then={
        "name": "final_eval", "stage": "eval", "model": {"name": str(e / "tiny")}, "eval": {"metric": "acuracy"},
        "data": {"eval": {"source": "arithmetic", "options": {"n": 4, "seed": 1}}}}), [],
     "stages[1] (final_eval): eval.metric: unknown reward 'acuracy'; did you mean 'accuracy'?"),
    ("reward option typo", lambda r, e: r.update(rewards=[{"name": "format", "kwargs": {"prefx": "<think>"}}]), [],
     "rewards[0].kwargs.prefx: reward 'format' has no option 'prefx'; did you mean 'prefix'? (its options: prefix;"),
    ("reward option is a dataset column", lambda r, e: r.update(rewards=[{"name": "accuracy", "kwargs": {"answer": "1"}}]),
     [], "rewards[0].kwargs.answer: 'answer' is passed to every reward by the trainer"),
    # ---- issue #18: model.adapter
    ("unknown adapter", lambda r, e: r["model"].update(adapter={"mla2": {}}), [],
     "unknown key 'model.adapter.mla2'; did you mean 'model.adapter.mla'?"),
    ("unknown adapter key", lambda r, e: r["model"].update(adapter={"mla": {"rnak": 8}}), [],
     "unknown key 'model.adapter.mla.rnak'; did you mean 'model.adapter.mla.rank'?"),
    ("adapter value", lambda r, e: r["model"].update(adapter={"moe": {"num_experts": 4, "top_k": 5}}), [],
     "model.adapter.moe: moe.top_k must be in [1, num_experts=4], got 5"),
    ("adapter wrong type", lambda r, e: r["model"].update(adapter={"mla": {"rank": "big"}}), [],
     "model.adapter.mla.rank: expected an integer, got str 'big'"),
    # ---- issue #18: processes, data rows, YAML, limits
    ("prompts not divisible by processes", lambda r, e: r["optim"].update(prompts_per_step=3), [],
     "optim.prompts_per_step: 3 prompts cannot be split evenly over 2 processes"),
    ("later row lacks the prompt column", lambda r, e: r["data"].update(train={"source": "file", "options": {
        "path": str(e / "qa_no_prompt.jsonl"), "columns": {"prompt": "q", "answer": "a"}}}), [],
     "qa_no_prompt.jsonl: row 2 has no column 'q' (row 0 has it)"),
    ("later row lacks the answer column", lambda r, e: r["data"].update(train={"source": "file", "options": {
        "path": str(e / "qa_no_answer.jsonl"), "columns": {"prompt": "q", "answer": "a"}}}), [],
     "qa_no_answer.jsonl: row 1 has no column 'a' (row 0 has it)"),
    ("duplicate yaml key", "duplicate_key.yaml", [], "duplicate key 'optim' at line 30 (first at line 14)"),
    ("duplicate key in --set", None, ["--set", "optim={lr: 1, lr: 2}"], "duplicate key 'lr'"),
    ("eval limit 0", lambda r, e: r["data"].update(eval={"source": "arithmetic", "options": {"n": 4, "seed": 1},
                                                         "limit": 0}), [], "data.eval.limit: must be positive, got 0"),
    ("eval limit negative", lambda r, e: r["data"].update(eval={"source": "arithmetic", "options": {"n": 4, "seed": 1},
                                                                "limit": -1}), [], "data.eval.limit: must be positive, got -1"),
    ("limit among the source's options", lambda r, e: r["data"]["train"]["options"].update(limit=3), [],
     "data.train.options.limit: set it next to source (data.train.limit)"),
    # ---- found walking every config field (tests/test_config.py checks each has a bad value)
    ("negative seed", lambda r, e: r["run"].update(seed=-1), [], "run.seed: must be in [0, 2**32), got -1"),
    ("adv_eps 0", lambda r, e: r.update(algorithm={"adv_eps": 0.0}), [], "algorithm.adv_eps: must be positive, got 0.0"),
    ("negative weight decay", lambda r, e: r["optim"].update(weight_decay=-0.1), [], "optim.weight_decay: must be >= 0"),
    ("infinite lr", lambda r, e: r["optim"].update(lr=float("inf")), [], "optim.lr: must be positive, got inf"),
    ("sft betas", lambda r, e: _as_sft(r, e, optim={"betas": [0.9]}), [], "optim.betas: must be two numbers in [0, 1)"),
    ("sft negative warmup", lambda r, e: _as_sft(r, e, optim={"warmup_steps": -2}), [], "optim.warmup_steps: must be >= 0"),
    ("adapter in an sft stage", lambda r, e: _as_sft(r, e, model={"adapter": {"mla": {}}}), [],
     "model.adapter: the sft stage does not convert models"),
]

# rows that need the launcher's environment
ROW_ENV = {"prompts not divisible by processes": {"WORLD_SIZE": "2", "RANK": "0"}}


def _as_pipeline(r: dict, env: Path, output_dir: str | None = None, then: dict | None = None) -> None:
    """Turn the GRPO recipe `r` into a pipeline: that GRPO stage, then `then` (when given)."""
    grpo = {k: v for k, v in r.items()}
    grpo["run"] = {k: v for k, v in r["run"].items() if k != "output_dir"}
    out = output_dir or r["run"]["output_dir"]
    r.clear()
    r.update(output_dir=out, stages=[{"name": "train", "stage": "grpo", **grpo}] + ([then] if then else []))


def _as_sft(r: dict, env: Path, optim: dict | None = None, model: dict | None = None) -> None:
    """Turn `r` into an SFT stage recipe (cold-start targets for the same arithmetic prompts)."""
    run, name = r["run"], r["model"]["name"]
    r.clear()
    r.update(stage="sft", model={"name": name, **(model or {})}, run=run,
             data={"train": {"source": "cold_start", "options": {"dataset": "arithmetic", "n": 4}}},
             optim={"steps": 1, "batch_size": 2, "micro_batch_size": 2, **(optim or {})})


@pytest.mark.parametrize("name,edit,args,expected", ROWS, ids=[r[0] for r in ROWS])
def test_bad_input_exits_2_with_one_clear_message(env, capsys, monkeypatch, name, edit, args, expected):
    for k, v in ROW_ENV.get(name, {}).items():
        monkeypatch.setenv(k, v)
    expected = expected.replace("{env}", str(env))
    if isinstance(edit, str):
        recipe = env / edit
    else:
        tree = base_recipe(env, run_name=name.replace(" ", "_"))
        if edit is not None:
            edit(tree, env)
        recipe = env / f"{name.replace(' ', '_')}.yaml"
        recipe.write_text(yaml.safe_dump(tree))
    argv = ["run", str(recipe)] + [a.replace("{env}", str(env)) for a in args]
    code = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert code == 2, err
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_table_is_big_enough():
    assert len(ROWS) >= 25


def test_good_recipe_passes(env, capsys):
    """The base recipe itself is valid: the rows fail because of their one edit, not the base."""
    recipe = env / "good.yaml"
    recipe.write_text(yaml.safe_dump(base_recipe(env, "good")))
    assert main(["run", str(recipe)]) == 0
    assert (env / "runs" / "good" / "checkpoints" / "step-1" / ckpt.STATE_FILE).is_file()
