"""grpo.data.sources: local files and Hub datasets with a column mapping, clear errors, stable splits."""
import json
from pathlib import Path

import pytest

from grpo.data import DataError, load_examples
from grpo.data.records import Example
from grpo.data.sources import last_boxed, load_file, load_hub, split_examples

FIXTURES = Path(__file__).parent / "data"
CUSTOM = FIXTURES / "custom_qa.jsonl"


def test_column_mapping_answer_extract_and_meta():
    ex = load_file(str(CUSTOM), columns={"prompt": "question", "answer": "final_answer", "level": "difficulty"},
                   task="qa", answer_extract="last_number")
    assert [e.prompt for e in ex] == ["What is 2 + 2?", "What is 10 - 3?", "What is 6 * 7?"]
    assert [e.answer for e in ex] == ["4", "7", "42"]
    assert [e.meta["level"] for e in ex] == ["easy", "easy", "medium"]
    assert {e.task for e in ex} == {"qa"}
    assert [e.id for e in ex] == ["custom_qa-00000", "custom_qa-00001", "custom_qa-00002"]


def test_default_columns_and_id_column():
    ex = load_file(str(CUSTOM), id_column="uid")
    assert ex[0].prompt == "What is 2 + 2?"      # 'question' picked as the prompt column
    assert ex[0].answer is None                   # no 'answer' column and none mapped
    assert [e.id for e in ex] == ["custom_qa-q1", "custom_qa-q2", "custom_qa-q3"]


def test_missing_column_error_names_column_file_and_suggestion():
    with pytest.raises(DataError) as err:
        load_file(str(CUSTOM), columns={"prompt": "question", "answer": "final_anser"})
    msg = str(err.value)
    assert "'final_anser'" in msg and "custom_qa.jsonl" in msg
    assert "Did you mean 'final_answer'?" in msg
    assert "uid" in msg and "difficulty" in msg    # the columns that do exist


def test_empty_missing_and_unsupported_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_file(str(empty))
    with pytest.raises(DataError, match="not found"):
        load_file(str(tmp_path / "nope.jsonl"))
    bad = tmp_path / "data.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_file(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(DataError, match="broken.jsonl:2"):
        load_file(str(broken))


def test_bad_options_are_data_errors():
    with pytest.raises(DataError, match="Did you mean 'boxed'"):
        load_file(str(CUSTOM), answer_extract="boxd")
    with pytest.raises(DataError, match="columns must map"):
        load_file(str(CUSTOM), columns=["question"])
    with pytest.raises(DataError, match="holdout"):
        load_file(str(CUSTOM), holdout={"fraction": 0.5, "parts": "eval"})
    with pytest.raises(DataError, match="file"):       # unknown keyword, through load_examples
        load_examples("file", path=str(CUSTOM), colums={"prompt": "question"})


def test_duplicate_ids_rejected(tmp_path):
    p = tmp_path / "dup.jsonl"
    p.write_text("\n".join(json.dumps({"k": 1, "prompt": f"q{i}"}) for i in range(2)))
    with pytest.raises(DataError, match="duplicate example id"):
        load_file(str(p), id_column="k")


def test_parquet_json_and_directory_splits(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rows = [{"problem": f"p{i}", "answer": i * 1.5, "tests": ["assert f() == 1"]} for i in range(4)]
    shard_dir = tmp_path / "ds" / "main"
    shard_dir.mkdir(parents=True)
    pd.DataFrame(rows[:2]).to_parquet(shard_dir / "train-00000-of-00002.parquet")
    pd.DataFrame(rows[2:]).to_parquet(shard_dir / "train-00001-of-00002.parquet")
    pd.DataFrame(rows).to_parquet(shard_dir / "test-00000-of-00001.parquet")
    ex = load_file(str(tmp_path / "ds"), split="train")
    assert [e.prompt for e in ex] == ["p0", "p1", "p2", "p3"]          # shards read in order
    assert [e.answer for e in ex] == ["0.0", "1.5", "3.0", "4.5"]
    assert ex[0].tests == {"asserts": ["assert f() == 1"]}
    assert ex[0].id == "train-00000"
    with pytest.raises(DataError, match="give a split"):
        load_file(str(tmp_path / "ds"))
    with pytest.raises(DataError, match="no 'validation' data file"):
        load_file(str(tmp_path / "ds"), split="validation")
    js = tmp_path / "rows.json"
    js.write_text(json.dumps({"data": [{"prompt": "a"}, {"prompt": "b"}]}))
    assert [e.prompt for e in load_file(str(js))] == ["a", "b"]


def test_load_hub_maps_columns(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load_dataset(name, config=None, split=None, **kw):
        calls.append((name, config, split))
        return datasets.Dataset.from_list([{"q": "x?", "a": "\\boxed{3}"}, {"q": "y?", "a": "\\boxed{4}"}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ex = load_examples("hub", name="org/qa", split="test", config="cfg", columns={"prompt": "q", "answer": "a"},
                       answer_extract="boxed", task="math")
    assert calls == [("org/qa", "cfg", "test")]
    assert [(e.id, e.prompt, e.answer, e.task) for e in ex] == [("qa-test-00000", "x?", "3", "math"),
                                                               ("qa-test-00001", "y?", "4", "math")]
    with pytest.raises(DataError, match="column 'question' not found in Hub dataset 'org/qa'"):
        load_hub("org/qa", columns={"prompt": "question"})


def test_load_hub_failure_is_a_data_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **kw):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load Hub dataset 'org/qa'.*no network"):
        load_hub("org/qa")


def _examples(n):
    return [Example(id=f"x-{i:04d}", task="t", prompt=f"p{i}") for i in range(n)]


def test_split_examples_is_stable_and_order_independent():
    exs = _examples(400)
    train, held = split_examples(exs, 0.1, seed=7)
    assert 20 <= len(held) <= 60 and len(train) + len(held) == 400           # about 10%
    assert {e.id for e in train}.isdisjoint({e.id for e in held})
    assert [e.id for e in held] == sorted(e.id for e in held)               # input order kept
    _, held_rev = split_examples(list(reversed(exs)), 0.1, seed=7)
    assert {e.id for e in held_rev} == {e.id for e in held}               # independent of input order
    _, held_sub = split_examples(exs[:100], 0.1, seed=7)
    assert {e.id for e in held_sub} == {e.id for e in held if e.id < "x-0100"}  # ... and of the other rows
    _, held_other = split_examples(exs, 0.1, seed=8)
    assert {e.id for e in held_other} != {e.id for e in held}
    assert split_examples(exs, 0.0)[1] == []
    with pytest.raises(DataError):
        split_examples(exs, 1.0)


def test_split_keeps_repeated_prompts_together():
    exs = [Example(id=f"d-{i}", task="t", prompt=f"p{i % 50}") for i in range(300)]   # each prompt 6 times
    train, held = split_examples(exs, 0.3, seed=0)
    assert held and train
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in held})


def test_holdout_option_selects_complementary_parts():
    opts = dict(path=str(FIXTURES / "gsm8k_train.jsonl"), columns={"prompt": "question", "answer": "answer"},
                answer_extract="gsm8k", dedup=False)
    train = load_examples("file", holdout={"fraction": 0.5, "seed": 1}, **opts)
    held = load_examples("file", holdout={"fraction": 0.5, "seed": 1, "part": "eval"}, **opts)
    assert sorted(e.id for e in train + held) == [e.id for e in load_examples("file", **opts)]
    assert train and held
    assert load_examples("file", holdout=0.5, **opts) == load_examples("file", holdout={"fraction": 0.5}, **opts)


def test_last_boxed():
    assert last_boxed(r"$\boxed{\frac{1}{2}}$") == r"\frac{1}{2}"
    assert last_boxed(r"\boxed{1} then \boxed{\{-1, 1\}}.") == r"\{-1, 1\}"
    assert last_boxed(r"is $\boxed 2$.") == "2"
    assert last_boxed(r"\fbox{7}") == "7"
    assert last_boxed("no box") is None
    assert last_boxed(r"\boxed{unclosed") is None
