"""The tiny R1 pipeline end to end on a tiny random Llama saved to disk (seconds on CPU)."""
import json
from pathlib import Path

import pytest

from grpo.cli import main
from grpo.config import ConfigError, read_yaml
from grpo.pipeline import plan

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from grpo.testing import char_tokenizer, tiny_model

    d = tmp_path_factory.mktemp("tiny") / "model"
    tok = char_tokenizer()
    tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def _run(tiny_dir, out, *extra):
    return main(["run", str(RECIPES / "tiny_r1.yaml"), "--set", f"vars.model={tiny_dir}",
                 "--set", f"output_dir={out}", *extra])


def test_tiny_pipeline_runs_skips_and_restarts(tiny_dir, tmp_path):
    out = tmp_path / "run"
    assert _run(tiny_dir, out) == 0
    names = ["cold_start", "reasoning", "rejection", "sft_mixed", "final_eval"]
    for n in names:
        assert (out / n / "DONE").is_file(), n
    # each stage consumed the previous one's output
    assert read_yaml(out / "reasoning" / "config.yaml")["model"]["name"] == str(out / "cold_start" / "model")
    assert (out / "reasoning" / "model" / "config.json").is_file()      # GRPO's final checkpoint exposed
    rs = [json.loads(x) for x in (out / "rejection" / "data.jsonl").read_text().splitlines()]
    assert rs and rs[0]["provenance"]["checkpoint"] == str(out / "reasoning" / "model")
    assert json.loads((out / "sft_mixed" / "summary.json").read_text())["examples"] == len(rs) + 4
    assert "pass@1" in (out / "summary.md").read_text()
    assert list((out / "cold_start" / "plots").glob("*.png"))
    assert (out / "plots" / "eval_accuracy.png").is_file()             # accuracy across the stages
    assert "plots/eval_accuracy.png" in (out / "summary.md").read_text()
    stamps = {n: (out / n / "DONE").stat().st_mtime_ns for n in names}
    assert _run(tiny_dir, out) == 0                                   # all finished: all skipped
    assert all((out / n / "DONE").stat().st_mtime_ns == stamps[n] for n in names)
    assert _run(tiny_dir, out, "--from-stage", "sft_mixed") == 0       # restart there
    after = {n: (out / n / "DONE").stat().st_mtime_ns for n in names}
    assert all(after[n] == stamps[n] for n in names[:3])
    assert all(after[n] != stamps[n] for n in names[3:])


def test_plan_rejects_bad_references_and_keys(tiny_dir, tmp_path):
    tree = read_yaml(RECIPES / "tiny_r1.yaml")
    tree["stages"][0]["model"]["name"] = "${stages.final_eval.model}"
    with pytest.raises(ConfigError, match="earlier stage"):
        plan(tree)
    tree = read_yaml(RECIPES / "tiny_r1.yaml")
    with pytest.raises(ConfigError, match="optim.lrr"):
        plan(tree, ["stages.cold_start.optim.lrr=1"])
    with pytest.raises(ConfigError, match="no stage named"):
        plan(tree, ["stages.nope.optim.lr=1"])


def test_set_on_one_stage_leaves_stages_sharing_a_yaml_alias_alone():
    tree = read_yaml(RECIPES / "distill_vs_sft_cpu.yaml")   # teacher, distilled and sft_only share `data: *data`
    _, stages = plan(tree, ["stages.teacher.data.max_seq_len=100"])
    lens = {name: cfg.data.max_seq_len for name, kind, cfg in stages if kind in ("sft", "distill")}
    assert lens == {"teacher": 100, "distilled": 384, "sft_only": 384}


def test_bad_model_dir_fails_before_work(tmp_path, capsys):
    (tmp_path / "notamodel").mkdir()
    rc = main(["run", str(RECIPES / "tiny_r1.yaml"), "--set", f"vars.model={tmp_path / 'notamodel'}",
               "--set", f"output_dir={tmp_path / 'run'}"])
    assert rc == 2 and "config.json" in capsys.readouterr().err
    assert not (tmp_path / "run" / "cold_start" / "DONE").exists()


@pytest.mark.parametrize("name", ["r1.yaml", "r1_zero.yaml", "distill.yaml", "tiny_r1.yaml"])
def test_recipes_validate(name):
    from grpo.config import load_config

    tree = read_yaml(RECIPES / name)
    if "stages" in tree:
        plan(tree)
    elif tree.get("stage", "grpo") == "grpo":
        load_config(RECIPES / name)
    else:
        from grpo.stages import build_stage

        build_stage(tree["stage"], tree)


def test_missing_matplotlib_does_not_fail_a_finished_stage(tmp_path, monkeypatch, caplog):
    import sys

    from grpo.pipeline import _plot

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import matplotlib -> ImportError
    _plot(tmp_path)
    assert "no plots" in caplog.text and not (tmp_path / "plots").exists()


def test_eval_stage_engine_backend_matches_hf_greedy(tmp_path):
    from grpo.pipeline import run_eval_stage
    from grpo.stages import build_stage
    from grpo.testing import char_tokenizer, tiny_model

    tok = char_tokenizer()
    model = tiny_model(tok)
    rows = {}
    for backend in ("hf", "engine"):
        cfg = build_stage("eval", {"data": {"eval": {"source": "arithmetic", "options": {"n": 5, "seed": 4}}},
                                   "sampling": {"backend": backend}, "eval": {"max_new_tokens": 6, "batch_size": 2},
                                   "run": {"output_dir": str(tmp_path / backend), "progress": False}})
        run_eval_stage(cfg, model=model, tokenizer=tok)
        rows[backend] = [json.loads(x)["completion"] for x in (tmp_path / backend / "eval_eval.jsonl").read_text().splitlines()]
    assert len(rows["hf"]) == 5 and rows["engine"] == rows["hf"]
    with pytest.raises(ConfigError, match="sampling.backend"):
        build_stage("eval", {"sampling": {"backend": "vllm"}})


def test_interrupted_grpo_stage_resumes_from_its_checkpoint(tiny_dir, tmp_path, monkeypatch):
    import grpo.train as train

    out = tmp_path / "run"
    real = train.train_step
    calls = {"n": 0}

    def dies_at_step_3(state, examples):
        calls["n"] += 1
        if state.step == 2:
            raise KeyboardInterrupt  # the process is stopped in the middle of the stage
        return real(state, examples)

    monkeypatch.setattr(train, "train_step", dies_at_step_3)
    grpo_steps = ["--set", "stages.reasoning.optim.steps=4", "--set", "stages.reasoning.run.save_every=1"]
    with pytest.raises(KeyboardInterrupt):
        _run(tiny_dir, out, *grpo_steps)
    assert (out / "cold_start" / "DONE").is_file() and not (out / "reasoning" / "DONE").is_file()
    assert (out / "reasoning" / "checkpoints" / "step-2").is_dir()
    monkeypatch.setattr(train, "train_step", real)
    calls["n"] = 0
    assert _run(tiny_dir, out, *grpo_steps) == 0
    steps = [json.loads(x)["step"] for x in (out / "reasoning" / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s] == [1, 2, 3, 4]           # steps 1-2 kept, 3-4 run after the resume
    assert (out / "final_eval" / "DONE").is_file()


def _two_stages(tiny_dir, out, eval_rewards=("accuracy",)):
    return {"output_dir": str(out), "shared": {"run": {"progress": False, "mixed_precision": "no"}},
            "stages": [
                {"name": "train", "stage": "grpo", "model": {"name": str(tiny_dir)}, "rewards": ["accuracy"],
                 "data": {"train": {"source": "arithmetic", "options": {"n": 8, "seed": 0, "difficulty": [1]}}},
                 "sampling": {"group_size": 2, "max_new_tokens": 4, "batch_size": 8},
                 "optim": {"steps": 1, "prompts_per_step": 2, "micro_batch_size": 4, "lr": 1e-4},
                 "eval": {"before": False, "after": False}},
                {"name": "check", "stage": "eval", "model": {"name": "${stages.train.model}"},
                 "rewards": list(eval_rewards), "eval": {"max_new_tokens": 4},
                 "data": {"eval": {"source": "arithmetic", "options": {"n": 2, "seed": 5}}}}]}


def test_pipeline_rerun_resumes_and_overwrite_reruns_every_stage(tiny_dir, tmp_path, capsys):
    """A pipeline re-run is a resume by design (no --resume/--overwrite needed); --overwrite starts over."""
    import yaml

    out = tmp_path / "p"
    recipe = tmp_path / "p.yaml"
    recipe.write_text(yaml.safe_dump(_two_stages(tiny_dir, out)))
    assert main(["run", str(recipe)]) == 0
    stamps = {n: (out / n / "DONE").stat().st_mtime_ns for n in ("train", "check")}
    assert main(["run", str(recipe)]) == 0 and main(["run", str(recipe), "--resume"]) == 0
    assert {n: (out / n / "DONE").stat().st_mtime_ns for n in stamps} == stamps
    assert main(["run", str(recipe), "--overwrite"]) == 0
    assert all((out / n / "DONE").stat().st_mtime_ns != stamps[n] for n in stamps)
    assert len((out / "check" / "eval_eval.jsonl").read_text().splitlines()) == 2   # replaced, not appended
    capsys.readouterr()
    assert main(["run", str(recipe), "--overwrite", "--from-stage", "check"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_a_typo_in_a_later_stage_fails_before_the_first_stage_runs(tiny_dir, tmp_path, capsys):
    import yaml

    out = tmp_path / "p"
    recipe = tmp_path / "p.yaml"
    recipe.write_text(yaml.safe_dump(_two_stages(tiny_dir, out, eval_rewards=("accuracy", "fromat"))))
    assert main(["run", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert "stages[1] (check): rewards[1].name: unknown reward 'fromat'" in err
    assert not out.exists()                              # no stage ran, nothing was written
