"""Recipe validation: bad recipes fail fast with one clear message naming the key (before any model loads)."""
from pathlib import Path

import pytest
import yaml

from grpo.cli import main
from grpo.config import ConfigError, GRPOConfig, load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def run_cli(tmp_path, recipe: dict, capsys, *extra):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = main(["run", str(path), *extra])
    return code, capsys.readouterr().err


def test_defaults_validate():
    cfg = load_config(base={})
    assert isinstance(cfg, GRPOConfig) and cfg.sampling.group_size == 8


def test_overrides_are_typed():
    cfg = load_config(base={}, overrides=["optim.lr=3e-6", "sampling.group_size=4", "run.trackers=[tensorboard]"])
    assert cfg.optim.lr == 3e-6 and cfg.sampling.group_size == 4 and cfg.run.trackers == ["tensorboard"]


@pytest.mark.parametrize("recipe,needle", [
    ({"optim": {"lrr": 1e-5}}, "unknown key 'optim.lrr'; did you mean 'optim.lr'?"),
    ({"sampling": {"group_size": "eight"}}, "sampling.group_size: expected an integer"),
    ({"sampling": {"group_size": 1}}, "sampling.group_size: must be >= 2"),
    ({"algorithm": {"loss_type": "ppo"}}, "algorithm.loss_type: must be one of"),
    ({"rewards": ["acuracy"]}, "unknown reward 'acuracy'. Did you mean 'accuracy'?"),
    ({"data": {"train": {"source": "file", "options": {"path": "__missing__.jsonl"}}}}, "__missing__.jsonl"),
])
def test_bad_recipe_fails_fast(tmp_path, capsys, recipe, needle):
    recipe.setdefault("model", {"name": "/nonexistent/model/dir/never/loaded"})
    code, err = run_cli(tmp_path, recipe, capsys)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1  # one line
    assert "/nonexistent/model" not in err  # failed before the model was looked at


def test_missing_dataset_column(tmp_path, capsys):
    data = tmp_path / "qa.jsonl"
    data.write_text('{"question": "What is 1+1?", "final": "2"}\n')
    recipe = {"model": {"name": "/nonexistent/never/loaded"},
              "data": {"train": {"source": "file", "options": {"path": str(data),
                                                                "columns": {"prompt": "question", "answer": "answer"}}}}}
    code, err = run_cli(tmp_path, recipe, capsys)
    assert code == 2 and "'answer'" in err and "final" in err


def test_reward_needing_a_column_the_data_lacks(tmp_path, capsys):
    plug = tmp_path / "plug.py"
    plug.write_text("def needs_solution(completions, solution, **kw):\n    return [0.0] * len(completions)\n")
    recipe = {"model": {"name": "/nonexistent/never/loaded"}, "rewards": [f"{plug}:needs_solution"],
              "data": {"train": {"source": "arithmetic", "options": {"n": 8}}}}
    code, err = run_cli(tmp_path, recipe, capsys)
    assert code == 2 and "needs the dataset column 'solution'" in err


def test_malformed_yaml_and_missing_recipe(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lr: [1,\n")
    assert main(["run", str(bad)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "recipe not found" in capsys.readouterr().err


def test_bad_override(tmp_path, capsys):
    code, err = run_cli(tmp_path, {}, capsys, "--set", "optim.lr")
    assert code == 2 and "--set expects key=value" in err


def test_grpo_recipes_in_repo_validate():
    grpo_recipes = [p for p in RECIPES.glob("*.yaml") if not ({"stage", "stages"} & set(yaml.safe_load(p.read_text())))]
    assert grpo_recipes, "no GRPO recipe found"
    for p in grpo_recipes:
        load_config(p)


# ---------------------------------------------------------------- every key has its value check (issue #18)

# (config class, field) -> a value of the right type that the class's check must refuse. The walk below
# finds every field of every stage's config tree; a new field fails `test_every_field_has_a_bad_value_case`
# until it gets a check in grpo.config / grpo.stages and a row here (or a reason in FREE).
BAD_VALUES = {
    ("ModelConfig", "name"): "  ",
    ("ModelConfig", "adapter"): {"mla2": {}},
    ("DatasetConfig", "source"): "arithmetc",
    ("DatasetConfig", "options"): {"nn": 3},
    ("DatasetConfig", "limit"): 0,
    ("DataConfig", "template"): "r2",
    ("DataConfig", "max_prompt_tokens"): 0,
    ("RewardSpec", "name"): "acuracy",
    ("RewardSpec", "weight"): float("nan"),
    ("RewardSpec", "kwargs"): {"timeuot": 1},
    ("RewardSpec", "on_error"): "ignore",
    ("SamplingConfig", "backend"): "vllm",
    ("SamplingConfig", "group_size"): 1,
    ("SamplingConfig", "max_new_tokens"): 0,
    ("SamplingConfig", "temperature"): -0.5,
    ("SamplingConfig", "top_p"): 0.0,
    ("SamplingConfig", "top_k"): -1,
    ("SamplingConfig", "batch_size"): 0,
    ("AlgorithmConfig", "loss_type"): "ppo",
    ("AlgorithmConfig", "scale_rewards"): "std",
    ("AlgorithmConfig", "clip_eps_low"): 1.0,
    ("AlgorithmConfig", "clip_eps_high"): -0.1,
    ("AlgorithmConfig", "kl_coef"): -0.01,
    ("AlgorithmConfig", "num_iterations"): 0,
    ("AlgorithmConfig", "adv_eps"): 0.0,
    ("OptimConfig", "steps"): 0,
    ("OptimConfig", "prompts_per_step"): 0,
    ("OptimConfig", "micro_batch_size"): 0,
    ("OptimConfig", "micro_batch_tokens"): -1,
    ("OptimConfig", "optimizer"): "adam8bit",
    ("OptimConfig", "lr"): 0.0,
    ("OptimConfig", "weight_decay"): -0.1,
    ("OptimConfig", "betas"): [0.9, 1.0],
    ("OptimConfig", "warmup_steps"): -1,
    ("OptimConfig", "schedule"): "cosin",
    ("OptimConfig", "max_grad_norm"): 0.0,
    ("EvalConfig", "metric"): "acuracy",
    ("EvalConfig", "max_new_tokens"): 0,
    ("EvalConfig", "num_samples"): 0,
    ("EvalConfig", "temperature"): -1.0,
    ("EvalConfig", "batch_size"): 0,
    ("EvalConfig", "every"): -1,
    ("RunConfig", "output_dir"): "",
    ("RunConfig", "seed"): -1,
    ("RunConfig", "save_every"): -1,
    ("RunConfig", "keep_last"): 0,
    ("RunConfig", "trackers"): ["tensorbord"],
    ("RunConfig", "mixed_precision"): "fp16",
    ("RunConfig", "torch_threads"): -1,
    ("RunConfig", "no_signal_warn_steps"): -1,
    ("SFTDataConfig", "template"): "r2",
    ("SFTDataConfig", "max_prompt_tokens"): 0,
    ("SFTDataConfig", "completion_key"): "",
    ("SFTDataConfig", "max_seq_len"): 8,
    ("SFTOptimConfig", "epochs"): 0,
    ("SFTOptimConfig", "steps"): -1,
    ("SFTOptimConfig", "batch_size"): 12,          # not a multiple of micro_batch_size 8
    ("SFTOptimConfig", "micro_batch_size"): 0,
    ("SFTOptimConfig", "lr"): -1e-5,
    ("SFTOptimConfig", "weight_decay"): -1.0,
    ("SFTOptimConfig", "betas"): [0.9],
    ("SFTOptimConfig", "warmup_steps"): -5,
    ("SFTOptimConfig", "schedule"): "step",
    ("SFTOptimConfig", "max_grad_norm"): -1.0,
    ("SFTConfig", "eval_every"): -1,
    ("PromptDataConfig", "template"): "r2",
    ("PromptDataConfig", "max_prompt_tokens"): 0,
    ("RejectionConfig", "accept"): {"acuracy": 1.0},
    ("RejectionConfig", "max_per_prompt"): 0,
    ("DistillConfig", "mode"): "token",
    ("StudentConfig", "name"): "another-model",    # the base tree sets from_teacher: both is an error
    ("StudentConfig", "from_teacher"): {"keep_every": 0},
    ("DistillLossConfig", "kind"): "mse",
    ("DistillLossConfig", "beta"): 1.5,
    ("DistillLossConfig", "temperature"): 0.0,
    ("DistillConfig", "text"): "both",
    ("DistillConfig", "max_per_prompt"): 0,
    ("DistillConfig", "eval_every"): -1,
    ("EvalDataConfig", "template"): "r2",
    ("EvalDataConfig", "max_prompt_tokens"): 0,
    ("EvalSamplingConfig", "backend"): "vllm",
}
# fields every value of whose type is valid (besides booleans, which build() type-checks)
FREE = {
    ("DataConfig", "assistant_prefix"), ("SFTDataConfig", "assistant_prefix"), ("PromptDataConfig", "assistant_prefix"),
    ("EvalDataConfig", "assistant_prefix"),   # any text the assistant turn starts with
    ("DatasetConfig", "shuffle_seed"),        # random.Random takes any integer
}
STAGE_BASE = {"grpo": {}, "sft": {}, "rejection_sampling": {}, "eval": {},
              "distill": {"student": {"from_teacher": {"keep_every": 2}}}}


def _leaf_fields():
    """(class name, field, stage kind, key path) of every non-dataclass field in every stage's tree, once per
    (class, field), at the first place the walk meets it."""
    import dataclasses
    import types
    import typing

    from grpo.stages import _CLASSES

    found = {}

    def walk(cls, kind, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
                tp = args[0]
            item = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
            if dataclasses.is_dataclass(tp):
                walk(tp, kind, f"{prefix}{f.name}.")
            elif item is not None and dataclasses.is_dataclass(item):
                walk(item, kind, f"{prefix}{f.name}[0].")
            elif tp is not bool:
                found.setdefault((cls.__name__, f.name), (kind, prefix + f.name))

    for kind, cls in _CLASSES.items():
        walk(cls, kind, "")
    return found


def test_every_field_has_a_bad_value_case():
    fields = _leaf_fields()
    missing = sorted(set(fields) - set(BAD_VALUES) - FREE)
    assert not missing, f"config fields without a value check case (add one to BAD_VALUES): {missing}"
    assert not set(BAD_VALUES) - set(fields), "BAD_VALUES names fields that no longer exist"


def _set(tree: dict, path: str, value) -> None:
    import re

    node = tree
    parts = path.split(".")
    for p in parts[:-1]:
        m = re.fullmatch(r"(\w+)\[0\]", p)
        if m:
            node = node.setdefault(m.group(1), [{"name": "accuracy"}])[0]
        else:
            node = node.setdefault(p, {})
    node[parts[-1]] = value


@pytest.mark.parametrize("cls_field", sorted(_leaf_fields()), ids=lambda cf: ".".join(cf))
def test_each_field_refuses_its_bad_value(cls_field):
    """The value of the right type is refused by validation, naming the key, before anything loads."""
    import copy

    from grpo.stages import build_stage

    if cls_field in FREE:
        pytest.skip("every value of this type is valid")
    kind, path = _leaf_fields()[cls_field]
    tree = copy.deepcopy(STAGE_BASE[kind])
    _set(tree, path, BAD_VALUES[cls_field])
    with pytest.raises(ConfigError) as e:
        build_stage(kind, tree)
    key = path.rsplit(".", 1)[0] if cls_field == ("StudentConfig", "name") else path
    assert key in str(e.value), str(e.value)
    build_stage(kind, copy.deepcopy(STAGE_BASE[kind]))   # and the base tree itself is valid


def test_prompts_per_step_must_split_over_the_launchers_processes(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ConfigError, match=r"optim.prompts_per_step: 8 prompts cannot be split evenly over 3 processes"):
        load_config(base={})
    assert load_config(base={"optim": {"prompts_per_step": 9}}).optim.prompts_per_step == 9
    monkeypatch.setenv("WORLD_SIZE", "2")
    load_config(base={})


# ---------------------------------------------------------------- YAML

def test_duplicate_yaml_keys_are_errors_naming_key_and_line(tmp_path):
    from grpo.config import read_yaml

    p = tmp_path / "r.yaml"
    p.write_text("optim:\n  lr: 1.0e-5\n  steps: 3\n  lr: 2.0e-5\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'lr' at line 4 \(first at line 2\)"):
        read_yaml(p)
    p.write_text("run: {seed: 1}\nrewards: [accuracy]\nrun: {seed: 2}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'run' at line 3 \(first at line 1\)"):
        read_yaml(p)
    # the same key in different mappings, and a merge key overridden on purpose, are fine
    p.write_text("a: {x: 1}\nb: {x: 2}\nbase: &b {lr: 1, steps: 2}\noptim:\n  <<: *b\n  lr: 3\n")
    assert read_yaml(p)["optim"] == {"lr": 3, "steps": 2}
