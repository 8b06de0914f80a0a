"""Tools that print results: they run to the end on a tiny model (CPU)."""
import json
import runpy
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "tools"


def test_engine_kv_bytes_decode_prints_json(tiny_model_dir, capsys, monkeypatch):
    """--decode puts the engine's decoded texts in the result, which json.dumps could not write (LazyTexts)."""
    monkeypatch.setattr(sys, "argv", ["engine_kv_bytes.py", "--model", str(tiny_model_dir), "--decode",
                                      "--max-new-tokens", "4", "--rank", "16", "--rope-dims", "4"])
    runpy.run_path(str(SCRIPTS / "engine_kv_bytes.py"), run_name="__main__")
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{"):])
    assert len(res["texts_fp32"]) == 3 and all(isinstance(t, str) for t in res["texts_fp32"] + res["texts_bf16"])
    assert res["mla_kv_bytes_per_token"] < res["original_kv_bytes_per_token"]
