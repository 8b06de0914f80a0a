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
