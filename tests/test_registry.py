"""Registry: names, plug-ins by module and by file, TRL-style reward functions, errors, None handling."""
import logging
import math

import pytest

from grpo.rewards.registry import (RewardError, RewardSpec, as_text, available_rewards, load_rewards, register_reward,
                              resolve_reward, score)

PLUGIN = '''
def length_reward(completions, **kwargs):
    """Written in the style of TRL's docs: plain-string completions, extra columns ignored."""
    return [-abs(20 - len(c)) for c in completions]


def chat_length_reward(completions, **kwargs):
    """TRL's conversational form: each completion is a list of messages."""
    return [float(len(c[0]["content"])) for c in completions]


def uses_answer(prompts, completions, answer, **kwargs):
    return [None if a is None else float(a in c) for c, a in zip(completions, answer)]


def broken(completions, **kwargs):
    raise KeyError("no such column")
'''


@pytest.fixture
def plugin_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(PLUGIN)
    return str(path)


def test_builtins_resolve_lazily():
    names = available_rewards()
    for name in ("accuracy", "format", "code", "tag_count", "cosine", "repetition_penalty", "soft_overlong",
                 "language_consistency", "reasoning_steps"):
        assert name in names
        assert callable(resolve_reward(name))


def test_unknown_name_suggests():
    with pytest.raises(RewardError, match="Did you mean 'accuracy'"):
        resolve_reward("acuracy")


def test_module_and_file_plugins(plugin_file):
    assert resolve_reward("grpo.rewards.format:format_reward").__name__ == "format_reward"
    with pytest.raises(RewardError, match="has no attribute"):
        resolve_reward("grpo.rewards.format:nope")
    with pytest.raises(RewardError, match="file not found"):
        resolve_reward("/no/such/file.py:f")
    assert resolve_reward(f"{plugin_file}:length_reward").__name__ == "length_reward"


def test_custom_file_reward_scored_under_its_name(plugin_file):
    loaded = load_rewards([RewardSpec("format", weight=0.5), RewardSpec(f"{plugin_file}:length_reward"),
                           RewardSpec(f"{plugin_file}:uses_answer", weight=2.0)])
    assert [r.label for r in loaded] == ["format", "length_reward", "uses_answer"]
    completions = ["<think>a</think><answer>4</answer>", "4"]
    table = score(loaded, ["q1", "q2"], completions, None, {"answer": ["4", None], "task": ["x", "x"]})
    assert table.column("length_reward") == [-abs(20 - len(completions[0])), -19.0]
    assert table.column("uses_answer") == [1.0, None]
    assert table.totals() == [0.5 + table.values[0][1] + 2.0, -19.0]  # None is left out of the total


def test_chat_completions_with_trl_style_function(plugin_file):
    loaded = load_rewards([RewardSpec(f"{plugin_file}:chat_length_reward"), RewardSpec("format")])
    chats = [[{"role": "assistant", "content": "<think>x</think><answer>1</answer>"}]]
    table = score(loaded, [[{"role": "user", "content": "q"}]], chats, None, {"answer": ["1"]})
    assert table.values == [[float(len(as_text(chats[0]))), 1.0]]


def test_raising_reward_names_function_and_sample(plugin_file, caplog):
    spec = RewardSpec(f"{plugin_file}:broken")
    with pytest.raises(RewardError, match=r"reward 'broken' raised KeyError.*first completion: 'abc'"):
        score(load_rewards([spec]), ["p"], ["abc"], None, {})
    spec.on_error = "none"
    with caplog.at_level(logging.WARNING):
        table = score(load_rewards([spec]), ["p"], ["abc"], None, {})
    assert table.values == [[None]] and "broken" in caplog.text


def test_bad_outputs_rejected():
    register_reward("_test_wrong_len")(lambda completions, **kw: [1.0])
    register_reward("_test_inf")(lambda completions, **kw: [math.inf] * len(completions))
    with pytest.raises(RewardError, match="returned 1 values for 2"):
        score(load_rewards([RewardSpec("_test_wrong_len")]), ["a", "b"], ["a", "b"], None, {})
    with pytest.raises(RewardError, match="finite"):
        score(load_rewards([RewardSpec("_test_inf")]), ["a"], ["a"], None, {})


def test_duplicate_reward_rejected():
    with pytest.raises(RewardError, match="twice"):
        load_rewards([RewardSpec("format"), RewardSpec("format")])


def test_rewards_do_not_import_torch_or_grpo():
    import subprocess
    import sys
    code = ("import sys, grpo.rewards.math, grpo.rewards.code, grpo.rewards.format, grpo.rewards.shaping, grpo.rewards.bench\n"
            "bad = [m for m in sys.modules if m == 'torch' or (m.startswith('grpo.') and not "
            "m.startswith(('grpo.rewards', 'grpo.data')))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_loading_the_accuracy_reward_prestarts_sympy_helpers_that_scoring_then_uses():
    """load_rewards calls a reward's warm_up: the math verifier starts PARALLEL_CHECKS helper processes
    while the model loads (once); symbolic checks reuse them, one batch's checks side by side, with the
    verdicts of one-by-one `verify` (fresh interpreter: a fresh helper pool)."""
    import subprocess
    import sys

    code = (
        "from grpo.rewards.registry import RewardSpec, load_rewards\n"
        "from grpo.rewards.math.bounded import POOL\n"
        "from grpo.rewards.math import PARALLEL_CHECKS, accuracy_reward, verify\n"
        "assert POOL.idle == [] and PARALLEL_CHECKS > 1\n"
        "load_rewards([RewardSpec('accuracy')])\n"
        "load_rewards([RewardSpec('accuracy')])\n"
        "assert len(POOL.idle) == PARALLEL_CHECKS, POOL.idle\n"
        "pids = {h.proc.pid for h in POOL.idle}\n"
        "assert verify('5', '3+2') and not verify('5', 'x+2')\n"
        "preds = ['3+2', 'x+2', '10/2', '2*3', '(1+1)*2+1', 'sqrt(25)', 'y', '4+1']\n"
        "comps = [[{'role': 'assistant', 'content': 'so \\\\boxed{' + p + '}'}] for p in preds]\n"
        "got = accuracy_reward(None, comps, answer=['5'] * len(preds))\n"
        "assert got == [1.0 if verify('5', p) else 0.0 for p in preds] == [1, 0, 1, 0, 1, 1, 0, 1], got\n"
        "assert {h.proc.pid for h in POOL.idle} == pids\n"
        "POOL.close()\n"
        "print('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok"
