"""The library cannot be shadowed from the working directory: `python -m grpo` (and so `accelerate launch -m
grpo`) run from a project folder that has its own `data/`, `rewards.py` or `rewards/` package, and a user's
`rewards:fn` plug-in there means the user's module, not ours."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from grpo.testing import char_tokenizer, tiny_model

USER_REWARD = "def brevity(completions, **kwargs):\n    return [-len(str(c)) / 100 for c in completions]\n"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny_model")
    tok = char_tokenizer()
    tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _recipe(project: Path, model: Path, reward: str) -> Path:
    tree = {
        "model": {"name": str(model)},
        "data": {"train": {"source": "file", "options": {"path": "data/my_qa.jsonl",
                                                          "columns": {"prompt": "q", "answer": "a"}}}},
        "rewards": [{"name": "accuracy"}, {"name": reward}],
        "sampling": {"group_size": 2, "max_new_tokens": 4, "batch_size": 8},
        "optim": {"steps": 1, "prompts_per_step": 2, "micro_batch_size": 4, "lr": 1e-4},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": "runs/shadow", "progress": False, "mixed_precision": "no"},
    }
    path = project / "recipe.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def _project(root: Path, layout: str) -> Path:
    root.mkdir()
    (root / "data").mkdir()
    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(4)]
    (root / "data" / "my_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if layout == "module":  # rewards.py next to a data/ folder (the README's layout)
        (root / "rewards.py").write_text(USER_REWARD)
    else:                   # a rewards/ package, and a data.py module beside the data/ folder
        (root / "rewards").mkdir()
        (root / "rewards" / "__init__.py").write_text(USER_REWARD)
        (root / "data.py").write_text("ROWS = 4\n")
    return root


def test_help_from_a_folder_with_data_and_rewards(tmp_path):
    project = _project(tmp_path / "p", "module")
    out = subprocess.run([sys.executable, "-m", "grpo", "--help"], cwd=project, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage: grpo" in out.stdout


@pytest.mark.parametrize("layout", ["module", "package"])
def test_run_from_a_folder_with_data_and_rewards(tmp_path, tiny_dir, layout):
    project = _project(tmp_path / layout, layout)
    recipe = _recipe(project, tiny_dir, "rewards:brevity")
    out = subprocess.run([sys.executable, "-m", "grpo", "run", str(recipe)], cwd=project, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(x) for x in (project / "runs" / "shadow" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and "reward/brevity" in rows[0], rows  # the user's reward ran, beside ours
