"""Prompts of any length mix: the engine sizes its cache from each call (a long prompt late in a GRPO run is
served), and prompts past the model's context follow one policy in every stage that samples: an error before
the model loads naming the example, or left-truncation to `data.max_prompt_tokens` with a warning that counts
them."""
import json
import logging

import pytest

from grpo.cli import main
from grpo.config import ConfigError, load_config
from grpo.data import DataError
from grpo.data.records import Example
from grpo.rollout import check_prompt_lengths, encode_prompts
from grpo.stages import build_stage
from grpo.testing import tiny_model

CONTEXT = 512  # grpo.testing.tiny_model's max_position_embeddings


def _examples(n):
    return [Example(id=f"ex-{i}", task="t", prompt="p", answer="1") for i in range(n)]


def test_policy_unset_names_the_example_and_the_lengths():
    ids = [[1] * 10, [1] * 95, [1] * 97, [1] * 30]
    with pytest.raises(DataError) as e:
        check_prompt_lengths(ids, _examples(4), 8, 100, None, "data.train")
    msg = str(e.value)
    assert "data.train: example 'ex-1' has a prompt of 95 tokens" in msg and "= 103 > 100" in msg
    assert "2 of 4 prompts" in msg and "longest 97" in msg and "data.max_prompt_tokens" in msg
    check_prompt_lengths(ids, _examples(4), 3, 100, None, "data.train")      # 97 + 3 fits exactly
    check_prompt_lengths(ids, _examples(4), 500, None, None, "data.train")   # no context length known


def test_policy_set_truncates_on_the_left_and_counts(caplog, tok):
    ids = [[1] * 10, [1] * 95, [1] * 97]
    with caplog.at_level(logging.WARNING):
        check_prompt_lengths(ids, _examples(3), 8, 100, 90, "data.train")
    assert "data.train: 2 of 3 prompts are longer than data.max_prompt_tokens = 90 tokens" in caplog.text
    with pytest.raises(ConfigError, match=r"data.max_prompt_tokens \(95\) \+ max_new_tokens \(8\) = 103 > 100"):
        check_prompt_lengths(ids, _examples(3), 8, 100, 95, "data.train")
    ex = [Example(id="a", task="t", prompt="What is 1 + 2? " * 5, answer="3")]
    full = encode_prompts(tok, ex, "plain")[1][0]
    cut = encode_prompts(tok, ex, "plain", max_prompt_tokens=20)[1][0]
    assert len(full) > 20 and cut == full[-20:]   # the end (question, generation prompt) is kept


def test_max_prompt_tokens_is_a_validated_key():
    with pytest.raises(ConfigError, match="data.max_prompt_tokens"):
        load_config(base={"data": {"max_prompt_tokens": 0}})
    for kind, tree in [("eval", {}), ("rejection_sampling", {}), ("sft", {}), ("distill", {"student": {"from_teacher": {"keep_every": 2}}})]:
        with pytest.raises(ConfigError, match="data.max_prompt_tokens"):
            build_stage(kind, {**tree, "data": {"max_prompt_tokens": -3}})
        assert build_stage(kind, {**tree, "data": {"max_prompt_tokens": 64}}).data.max_prompt_tokens == 64
    with pytest.raises(ConfigError, match="max_prompt_tokens"):
        load_config(base={"data": {"max_prompt_tokens": "many"}})


def _long_prompts_file(tmp_path, n_short=64, n_long=2, long_len=300):
    rows = [{"question": f"{i}+1", "answer": str(i + 1)} for i in range(n_short)]
    rows += [{"question": "x" * long_len + f" {i}+2", "answer": str(i + 2)} for i in range(n_long)]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_long_prompt_after_the_first_64_does_not_stop_a_grpo_run(tmp_path, tok):
    """The old trainer sized the engine from the first 64 training prompts (2 x (longest + max_new_tokens)),
    so a longer prompt later stopped the run (`prompt + max_new_tokens = 2182 > max_seq_len = 176` on the GPU);
    one step here samples all 66 prompts, the two long ones (> 2 x the others) last."""
    path = _long_prompts_file(tmp_path, long_len=120)
    cfg = load_config(base={
        "data": {"train": {"source": "file", "options": {"path": str(path)}}, "template": "plain"},
        "rewards": ["accuracy"],
        "sampling": {"backend": "engine", "group_size": 2, "max_new_tokens": 5},
        "optim": {"steps": 1, "prompts_per_step": 66, "micro_batch_size": 44},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "mixed_precision": "no"}})
    from grpo.train import train

    assert train(cfg, model=tiny_model(tok), tokenizer=tok)["steps"] == 1


def _eval_recipe(tmp_path, path, **data):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(json.dumps({
        "stage": "eval", "model": {"name": str(tmp_path / "model")},
        "data": {"eval": {"source": "file", "options": {"path": str(path)}}, "template": "plain", **data},
        "sampling": {"backend": "engine"}, "rewards": ["accuracy"],
        "eval": {"max_new_tokens": 9, "batch_size": 16},
        "run": {"output_dir": str(tmp_path / "out"), "progress": False}}))
    return recipe


@pytest.fixture
def model_dir(tmp_path, tok):
    tiny_model(tok).save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")


def test_prompt_past_the_context_fails_before_the_model_loads(tmp_path, tok, model_dir, capsys, monkeypatch):
    import grpo.models

    path = _long_prompts_file(tmp_path, n_short=3, n_long=1, long_len=CONTEXT)
    monkeypatch.setattr(grpo.models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["eval", str(_eval_recipe(tmp_path, path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: data.eval: example 'qa-00003' has a prompt of")
    assert f"> {CONTEXT}, the model's context length" in err


def test_max_prompt_tokens_left_truncates_in_the_eval_stage(tmp_path, tok, model_dir, caplog):
    path = _long_prompts_file(tmp_path, n_short=3, n_long=1, long_len=CONTEXT)
    with caplog.at_level(logging.WARNING):
        assert main(["eval", str(_eval_recipe(tmp_path, path, max_prompt_tokens=100))]) == 0
    assert "1 of 4 prompts are longer than data.max_prompt_tokens = 100 tokens" in caplog.text
    rows = (tmp_path / "out" / "eval_eval.jsonl").read_text().splitlines()
    assert len(rows) == 4


def test_rejection_and_distill_check_their_prompts_too(tmp_path, tok):
    from grpo.distill import run_distill
    from grpo.rejection import run_rejection

    path = _long_prompts_file(tmp_path, n_short=2, n_long=1, long_len=CONTEXT)
    data = {"train": {"source": "file", "options": {"path": str(path)}}, "template": "plain"}
    rs = build_stage("rejection_sampling", {"data": data, "rewards": ["accuracy"], "sampling": {"max_new_tokens": 4},
                                            "run": {"output_dir": str(tmp_path / "rs"), "progress": False}})
    with pytest.raises(DataError, match="data.train: example 'qa-00002'"):
        run_rejection(rs, model=tiny_model(tok), tokenizer=tok)
    dist = build_stage("distill", {"data": data, "student": {"from_teacher": {"keep_every": 2}},
                                   "sampling": {"max_new_tokens": 4},
                                   "run": {"output_dir": str(tmp_path / "d"), "progress": False}})
    with pytest.raises(DataError, match="data.train: example 'qa-00002'"):
        run_distill(dist, model=tiny_model(tok), tokenizer=tok)


def test_sft_rows_left_truncate_prompts_too(tok, caplog):
    from grpo.sft import rows_for

    ex = [Example(id="a", task="t", prompt="What is 1 + 2? " * 5, answer="3", meta={"completion": "3"}),
          Example(id="b", task="t", prompt="1+2?", answer="3", meta={"completion": "3"})]
    d = build_stage("sft", {"data": {"template": "plain", "max_prompt_tokens": 30}}).data
    with caplog.at_level(logging.WARNING):
        rows = rows_for(tok, ex, d)
    full = encode_prompts(tok, ex[:1], "plain")[1][0]
    target = tok("3", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert rows[0].input_ids == full[-30:] + target and rows[0].labels[:30] == [-100] * 30
    assert rows[1].prompt_cut == 0 and "1 of 2 prompts are longer than data.max_prompt_tokens = 30" in caplog.text
