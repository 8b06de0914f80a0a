"""Registry: names, plug-ins by module and by file, TRL-style reward functions, errors, None handling."""
import logging
import math

import pytest

from grpo.rewards.registry import (RewardError, RewardSpec, RewardTable, as_text, available_rewards, load_rewards,
                                  register_reward, resolve_reward, score)

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


# ---------------------------------------------------------------- what a reward may return; NaN; on_error

def _one(fn, **spec):
    name = f"_test_{id(fn)}"
    register_reward(name)(fn)
    return load_rewards([RewardSpec(name, **spec)])


def test_arrays_tensors_and_numpy_scalars_are_converted():
    import numpy as np
    import torch

    outs = {"ndarray": np.array([1.0, 0.5]), "tensor": torch.tensor([1.0, 0.5]), "tuple": (1, 0.5),
            "np scalars": [np.float32(1.0), np.float64(0.5)], "0-dim tensors": [torch.tensor(1.0), torch.tensor(0.5)],
            "generator": (x for x in (True, 0.5)), "bfloat16 tensor": torch.tensor([1.0, 0.5], dtype=torch.bfloat16)}
    for what, out in outs.items():
        table = score(_one(lambda completions, _o=out, **kw: _o), ["p", "p"], ["a", "b"], None, {})
        assert table.values == [[1.0], [0.5]], what
        assert all(type(v) is float for row in table.values for v in row), what
    table = score(_one(lambda completions, **kw: np.array([3, 0])), ["p", "p"], ["a", "b"], None, {})
    assert table.values == [[3.0], [0.0]]


def test_unusable_outputs_name_the_reward():
    import numpy as np

    for out, msg in ((np.zeros((2, 1)), r"shape \(2, 1\)"), (None, "returned NoneType"), (0.5, "returned float"),
                     ([1.0, "x"], r"returned 'x' \(str\) for sample 1"), ([1.0], "returned 1 values for 2")):
        with pytest.raises(RewardError, match=msg):
            score(_one(lambda completions, _o=out, **kw: _o), ["p", "p"], ["a", "b"], None, {})


def test_nan_is_an_error_naming_reward_and_sample_unless_on_error_none(caplog):
    def flaky(completions, **kwargs):
        return [1.0, float("nan"), None]

    with pytest.raises(RewardError, match=r"reward 'flaky' returned NaN for sample 1 \(id 'q-1', completion 'bb'\)"):
        score(load_rewards([RewardSpec(register_and_name("flaky", flaky))]), ["p"] * 3, ["a", "bb", "c"], None,
              {"id": ["q-0", "q-1", "q-2"]})
    with caplog.at_level(logging.WARNING):
        table = score(load_rewards([RewardSpec("flaky", on_error="none")]), ["p"] * 3, ["a", "bb", "c"], None, {})
    assert table.values == [[1.0], [None], [None]] and table.errors == [1]   # the None it returned is no error
    assert "flaky" in caplog.text and "NaN" in caplog.text


def register_and_name(name, fn):
    register_reward(name)(fn)
    return name


def test_none_rows_are_unscored_and_have_no_total():
    reg = RewardTable(names=["a", "b"], weights=[1.0, 2.0], values=[[1.0, None], [None, None], [0.5, 1.0]])
    assert reg.scored() == [True, False, True]
    t = reg.totals()
    assert t[0] == 1.0 and math.isnan(t[1]) and t[2] == 2.5
    assert reg.constant_columns() == {}  # b has one scored value only
    assert RewardTable(["a"], [1.0], [[2.0], [None], [2.0]]).constant_columns() == {"a": 2.0}


# ---------------------------------------------------------------- async rewards, classes, instances

ASYNC_PLUGIN = '''
import asyncio

LOOPS = []
GATE = {}


async def async_reward_func(prompts, completions, **kwargs):
    """TRL's documented async example."""
    await asyncio.sleep(0.01)
    LOOPS.append(asyncio.get_running_loop())
    return [1.0 if completion else 0.0 for completion in completions]


async def waits(completions, **kwargs):
    # finishes only if `opens` runs while it waits: the two are awaited together, not one after the other
    GATE.setdefault("event", asyncio.Event())
    await asyncio.wait_for(GATE["event"].wait(), 10)
    return [1.0] * len(completions)


async def opens(completions, **kwargs):
    GATE.setdefault("event", asyncio.Event()).set()
    return [2.0] * len(completions)


async def broken_async(completions, **kwargs):
    raise ConnectionError("judge unreachable")


class LengthJudge:
    def __init__(self, target=3, scale=1.0):
        self.target, self.scale = target, scale

    def __call__(self, completions, **kwargs):
        return [-self.scale * abs(self.target - len(c)) for c in completions]


class Client:
    def __init__(self, **options):  # e.g. passed on to an HTTP client
        self.options = options

    def __call__(self, completions, **kwargs):
        return [float(self.options["base"])] * len(completions)


class AsyncJudge:
    async def __call__(self, prompts, completions, **kwargs):
        await asyncio.sleep(0)
        return [float(len(c)) for c in completions]


judge = LengthJudge(target=1)
async_judge = AsyncJudge()
'''


@pytest.fixture
def async_plugin(tmp_path):
    path = tmp_path / "async_rewards.py"
    path.write_text(ASYNC_PLUGIN)
    return str(path)


def test_async_rewards_are_awaited_together_on_one_lasting_loop(async_plugin):
    loaded = load_rewards([RewardSpec(f"{async_plugin}:async_reward_func"), RewardSpec(f"{async_plugin}:waits"),
                           RewardSpec(f"{async_plugin}:opens"), RewardSpec("format")])
    table = score(loaded, ["p", "p"], ["x", ""], None, {})
    assert table.values == [[1.0, 1.0, 2.0, 0.0], [0.0, 1.0, 2.0, 0.0]]
    score(loaded[:1], ["p"], ["x"], None, {})
    import sys
    loops = next(m for m in sys.modules.values() if getattr(m, "__file__", None) == async_plugin).LOOPS
    assert len(loops) == 2 and loops[0] is loops[1] and loops[0].is_running()  # clients may stay bound to it


def test_async_rewards_work_when_the_caller_runs_an_event_loop(async_plugin):
    import asyncio

    loaded = load_rewards([RewardSpec(f"{async_plugin}:async_reward_func")])

    async def main():
        return score(loaded, ["p"], ["x"], None, {})

    assert asyncio.run(main()).values == [[1.0]]


def test_async_errors_are_named_or_scored_none(async_plugin, caplog):
    with pytest.raises(RewardError, match="reward 'broken_async' raised ConnectionError: judge unreachable"):
        score(load_rewards([RewardSpec(f"{async_plugin}:broken_async")]), ["p"], ["x"], None, {})
    with caplog.at_level(logging.WARNING):
        table = score(load_rewards([RewardSpec(f"{async_plugin}:broken_async", on_error="none")]), ["p"], ["x"],
                      None, {})
    assert table.values == [[None]] and table.errors == [1] and "judge unreachable" in caplog.text


def test_callable_instances_and_classes(async_plugin):
    loaded = load_rewards([RewardSpec(f"{async_plugin}:judge"), RewardSpec(f"{async_plugin}:async_judge"),
                           RewardSpec(f"{async_plugin}:LengthJudge", kwargs={"target": 5, "scale": 2.0})])
    assert [r.label for r in loaded] == ["judge", "async_judge", "LengthJudge"]
    assert loaded[2].call_kwargs == {}  # the class's kwargs went to its constructor, once
    table = score(loaded, ["p", "p"], ["abc", "a"], None, {"answer": ["1", "2"]})
    assert table.values == [[-2.0, 3.0, -4.0], [0.0, 1.0, -8.0]]
    with pytest.raises(RewardError, match=r"kwargs.targt: reward 'LengthJudge' has no option 'targt'; did you mean 'target'"):
        load_rewards([RewardSpec(f"{async_plugin}:LengthJudge", kwargs={"targt": 5})])
    client = load_rewards([RewardSpec(f"{async_plugin}:Client", kwargs={"base": 2, "timeout_s": 3})])
    assert client[0].fn.options == {"base": 2, "timeout_s": 3}  # a constructor's **kwargs takes any key
    assert score(client, ["p"], ["x"], None, {}).values == [[2.0]]


# ---------------------------------------------------------------- recipe kwargs

def test_misspelled_kwargs_fail_at_load_with_a_suggestion(plugin_file):
    with pytest.raises(RewardError, match=r"kwargs.fallbak: reward 'accuracy' has no option 'fallbak'; "
                                          r"did you mean 'fallback'\? \(its options: fallback, timeout;"):
        load_rewards([RewardSpec("accuracy", kwargs={"fallbak": None})])
    with pytest.raises(RewardError, match=r"'prefx'; did you mean 'prefix'"):
        load_rewards([RewardSpec("format", kwargs={"prefx": "<think>"})])
    # a plug-in with **kwargs: the recipe key must still be a declared parameter
    with pytest.raises(RewardError, match="reward 'length_reward' has no option 'target' \\(its options: none"):
        load_rewards([RewardSpec(f"{plugin_file}:length_reward", kwargs={"target": 3})])
    for column in ("completions", "answer"):
        with pytest.raises(RewardError, match=f"kwargs.{column}: '{column}' is passed to every reward by the trainer"):
            load_rewards([RewardSpec("format", kwargs={column: []})])
    assert load_rewards([RewardSpec("accuracy", kwargs={"fallback": None})])[0].call_kwargs == {"fallback": None}
    # cosine passes the verifier's options on: they are its declared parameters
    assert load_rewards([RewardSpec("cosine", kwargs={"timeout": 2.0, "fallback": None})])


def test_recipe_kwargs_reach_the_call_and_win_over_a_column():
    def scaled(completions, answer, scale=1.0, **kwargs):
        return [scale * float(a) for a in answer]

    loaded = load_rewards([RewardSpec(register_and_name("scaled", scaled), kwargs={"scale": 3.0})])
    assert score(loaded, ["p"], ["x"], None, {"answer": ["2"], "scale": [9.0]}).values == [[6.0]]


def test_a_function_without_kwargs_gets_only_what_it_declares():
    def bare(completions, answer):
        return [float(c == a) for c, a in zip(completions, answer)]

    loaded = load_rewards([RewardSpec(register_and_name("bare", bare))])
    assert score(loaded, ["p", "p"], ["4", "5"], [[1], [2]], {"answer": ["4", "4"], "task": ["x", "x"]}).values \
        == [[1.0], [0.0]]


def test_builtin_rewards_give_the_same_scores_for_strings_and_chat_messages():
    """The built-ins read completions through as_text: TRL's standard form (strings, data.template plain)
    and its conversational form (one assistant message) score alike."""
    texts = ["<think>Step 1. add</think><answer>4</answer>", "the answer is 5 5 5 5 5 5", ""]
    chats = [[{"role": "assistant", "content": t}] for t in texts]
    cols = {"answer": ["4", "4", None], "task": ["math", "math", "math"], "tests": [None] * 3}
    from grpo.rewards.registry import BUILTIN_REWARDS

    loaded = load_rewards([RewardSpec(n) for n in BUILTIN_REWARDS])
    as_strings = score(loaded, ["q"] * 3, texts, None, cols)
    as_chats = score(loaded, [[{"role": "user", "content": "q"}]] * 3, chats, None, cols)
    assert as_strings.values == as_chats.values
    assert as_strings.column("accuracy") == [1.0, 0.0, None] and as_strings.column("format") == [1.0, 0.0, 0.0]
