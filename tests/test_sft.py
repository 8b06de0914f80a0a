import pytest
import torch

from grpo.data import DataError
from grpo.config import DatasetConfig
from grpo.sft import IGNORE, TokenRow, load_sft_examples, pack_rows, run_sft, tokenize
from grpo.stages import build_stage


def test_completion_only_labels_and_packing():
    from grpo.data import load_examples
    from grpo.testing import char_tokenizer

    tok = char_tokenizer()
    ex = load_examples("cold_start", dataset="arithmetic", n=1, seed=0, difficulty=[1])[0]
    row = tokenize(tok, ex, "r1_zero", "", "completion", 4096)
    n_prompt = sum(1 for x in row.labels if x == IGNORE)
    assert row.labels[n_prompt:] == row.input_ids[n_prompt:]
    assert tok.decode(row.input_ids[n_prompt:], skip_special_tokens=True) == ex.meta["completion"]
    assert row.input_ids[-1] == tok.eos_token_id
    packed = pack_rows([TokenRow([1] * 3, [1] * 3), TokenRow([2] * 4, [2] * 4), TokenRow([3] * 5, [3] * 5)], 8)
    assert [len(r.input_ids) for r in packed] == [7, 5]


def test_missing_completion_is_a_data_error():
    with pytest.raises(DataError, match="no 'completion' target"):
        load_sft_examples([DatasetConfig(source="arithmetic", options={"n": 3})])


def test_sft_loss_decreases_and_saves_loadable_model(tmp_path):
    from grpo.models import load_model
    from grpo.testing import char_tokenizer, tiny_model

    tok = char_tokenizer()
    cfg = build_stage("sft", {
        "data": {"train": {"source": "cold_start", "options": {"dataset": "arithmetic", "n": 4, "seed": 0,
                                                                "difficulty": [1]}},
                 "eval": {"source": "cold_start", "options": {"dataset": "arithmetic", "n": 2, "seed": 5,
                                                               "difficulty": [1]}},
                 "packing": True, "max_seq_len": 2048},
        "optim": {"steps": 12, "batch_size": 2, "micro_batch_size": 1, "lr": 3e-3, "schedule": "constant"},
        "run": {"output_dir": str(tmp_path), "progress": False, "mixed_precision": "no"}})
    s = run_sft(cfg, model=tiny_model(tok), tokenizer=tok)
    assert s["last_loss"] < 0.7 * s["first_loss"]
    assert s["eval_loss_after"] < s["eval_loss_before"]
    model = load_model(s["model"])
    assert model.config.num_hidden_layers == 2
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") >= 12


def test_tokenizer_eos_follows_the_models_generation_config(tmp_path):
    """A checkpoint whose tokenizer names <|im_start|> as eos/pad (SmolLM2's GGUF read by transformers 5.17)
    while the model stops at <|im_end|>: load_tokenizer uses <|im_end|>, so SFT targets end with it."""
    from grpo.data.records import Example
    from grpo.models import load_tokenizer
    from grpo.sft import tokenize
    from grpo.testing import char_tokenizer, tiny_model

    tok = char_tokenizer()
    tiny_model(tok).save_pretrained(tmp_path)          # generation_config: eos 2 (<|im_end|>), pad 0
    tok.eos_token = tok.pad_token = "<|im_start|>"
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(str(tmp_path))
    assert loaded.eos_token == "<|im_end|>" and loaded.pad_token_id == 0
    row = tokenize(loaded, Example("a", "x", "1+1", "2", meta={"completion": "2"}), "r1_zero", "", "completion", 512)
    assert row.input_ids[-1] == 2 and row.labels[-1] == 2
