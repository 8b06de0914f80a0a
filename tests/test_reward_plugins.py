"""Reward plug-ins written for TRL and open-r1 train unchanged (a real GRPO step on a tiny random model), rows
no reward scores leave the loss, and a run whose rewards carry no signal says so."""
import json
import logging

import pytest
import torch

from grpo.config import load_config
from grpo.scoring import reward_inputs
from grpo.testing import tiny_model
from grpo.train import next_prompts, policy_update, sample, setup, train

# Copied from TRL's GRPOTrainer documentation and quickstart (standard = plain-text prompts).
TRL_STANDARD = '''
def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion)) for completion in completions]


def reward_func(completion_ids, **kwargs):
    """Reward function that assigns higher scores to longer completions (in terms of token count)."""
    return [float(len(ids)) for ids in completion_ids]


def form(prompts, completions, **kwargs):  # not TRL's: checks what TRL would pass for a standard dataset
    assert all(isinstance(p, str) for p in prompts) and all(isinstance(c, str) for c in completions)
    return [None] * len(completions)
'''

# TRL's documented conversational examples: completions are lists of messages.
TRL_CONVERSATIONAL = '''
import re


def format_reward_func(completions, **kwargs):
    """Reward function that checks if the completion has a specific format."""
    pattern = r"^<think>.*?</think><answer>.*?</answer>$"
    completion_contents = [completion[0]["content"] for completion in completions]
    matches = [re.match(pattern, content) for content in completion_contents]
    return [1.0 if match else 0.0 for match in matches]


def reward_len(completions, **kwargs):
    return [-abs(20 - len(completion[0]["content"])) for completion in completions]


def form(prompts, completions, **kwargs):
    assert all(p[-1]["role"] == "user" for p in prompts)
    assert all(len(c) == 1 and c[0]["role"] == "assistant" for c in completions)
    return [None] * len(completions)
'''

# open-r1's accuracy_reward (src/open_r1/rewards.py): its signature and contract, with math_verify replaced
# by a \\boxed{} comparison so the test needs no open-r1 install. None where the gold solution cannot be parsed.
OPEN_R1 = r'''
import re


def accuracy_reward(completions: list[list[dict[str, str]]], solution: list[str], **kwargs) -> list[float | None]:
    contents = [completion[0]["content"] for completion in completions]
    rewards = []
    for content, sol in zip(contents, solution):
        gold = re.search(r"\\boxed\{(.*?)\}", sol)
        if gold is None:
            rewards.append(None)  # "Failed to parse gold solution": skipped
            continue
        answer = re.search(r"\\boxed\{(.*?)\}", content)
        rewards.append(float(answer is not None and answer.group(1) == gold.group(1)))
    return rewards
'''

ASYNC_AND_CLASSES = '''
import asyncio


async def async_reward_func(prompts, completions, **kwargs):
    """TRL's documented async example."""
    await asyncio.sleep(0.01)
    return [1.0 if completion else 0.0 for completion in completions]


async def async_len(prompts, completions, **kwargs):
    await asyncio.sleep(0.01)
    return [float(len(c)) for c in completions]


class CountChar:
    def __init__(self, char="a"):
        self.char = char

    def __call__(self, completions, **kwargs):
        return [float(c.count(self.char)) for c in completions]


count_b = CountChar("b")


def constant(completions, **kwargs):
    return [1.0] * len(completions)


def odd_nan(completions, **kwargs):
    return [float("nan") if i % 2 else 0.5 for i in range(len(completions))]
'''


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def run_cfg(tmp_path, rewards, template="plain", steps=1, data=None, **run):
    return load_config(base={
        "data": {"train": data or {"source": "arithmetic", "options": {"n": 16, "seed": 0, "difficulty": [1]}},
                 "template": template},
        "rewards": rewards,
        "sampling": {"group_size": 4, "max_new_tokens": 24},
        "optim": {"steps": steps, "prompts_per_step": 3, "micro_batch_size": 12, "lr": 1e-3},
        "eval": {"before": False, "after": False},
        "run": {"output_dir": str(tmp_path / "run"), "progress": False, "mixed_precision": "no", **run},
    })


def completions(tmp_path):
    return [json.loads(line) for line in open(tmp_path / "run" / "completions.jsonl")]


def groups(rows):
    out = {}
    for r in rows:
        out.setdefault((r["step"], r["id"]), []).append(r)
    return list(out.values())


def test_reward_inputs_take_the_form_trl_passes_for_the_template():
    from grpo.data.records import Example
    from grpo.data.templates import to_messages

    ex = [Example(id="a", task="t", prompt="1+1?"), Example(id="b", task="t", prompt="2+2?")]
    chats = [to_messages(e, "r1_zero") for e in ex]
    prompts, comps = reward_inputs(ex, chats, [0, 1], ["x", "y"], "plain", "<think>")
    assert prompts == ["1+1?", "2+2?"] and comps == ["<think>x", "<think>y"]
    prompts, comps = reward_inputs(ex, chats, [1, 1], ["x", "y"], "r1_zero", "<think>")
    assert prompts == [chats[1], chats[1]]
    assert comps == [[{"role": "assistant", "content": "<think>x"}], [{"role": "assistant", "content": "<think>y"}]]


def test_trl_standard_rewards_train_unchanged_on_plain_prompts(tmp_path, tok):
    """TRL's quickstart reward measures len(completion): with data.template plain it must see strings (it saw
    one-message lists before, scored -19 everywhere, and the loss was 0)."""
    f = write(tmp_path, "trl_rewards.py", TRL_STANDARD)
    cfg = run_cfg(tmp_path, [f"{f}:reward_len", f"{f}:reward_func", f"{f}:form"], steps=2)
    model = tiny_model(tok)
    before = [p.detach().clone() for p in model.parameters()]
    train(cfg, model=model, tokenizer=tok)
    rows = completions(tmp_path)
    assert rows and all(r["rewards"]["reward_len"] == -abs(20 - len(r["completion"])) for r in rows)
    assert all(r["rewards"]["reward_func"] >= len(r["completion"]) for r in rows)  # tokens incl. EOS >= chars
    assert any(len({r["rewards"]["reward_len"] for r in g}) > 1 for g in groups(rows))
    assert any(r["advantage"] != 0 for r in rows)
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))


def test_trl_conversational_rewards_train_unchanged_on_chat_prompts(tmp_path, tok):
    f = write(tmp_path, "trl_chat_rewards.py", TRL_CONVERSATIONAL)
    cfg = run_cfg(tmp_path, [f"{f}:format_reward_func", f"{f}:reward_len", f"{f}:form"], template="r1_zero")
    train(cfg, model=tiny_model(tok), tokenizer=tok)
    rows = completions(tmp_path)
    assert all(r["rewards"]["reward_len"] == -abs(20 - len(r["completion"])) for r in rows)
    assert all(r["rewards"]["format_reward_func"] == 0.0 for r in rows)  # a random model does not find the format
    assert any(len({r["rewards"]["reward_len"] for r in g}) > 1 for g in groups(rows))


def test_open_r1_accuracy_reward_gets_its_solution_column_and_none_rows_leave_the_loss(tmp_path, tok, caplog):
    data = tmp_path / "problems.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"problem": "What is 2+2?", "solution": "The answer is $\\boxed{4}$."},
        {"problem": "What is 3+3?", "solution": "The answer is $\\boxed{6}$."},
        {"problem": "Prove it.", "solution": "No closed form."},   # unparseable gold: None on every row
    ]))
    f = write(tmp_path, "open_r1.py", OPEN_R1)
    cfg = run_cfg(tmp_path, [f"{f}:accuracy_reward"], template="r1_zero",
                  data={"source": "file", "options": {"path": str(data),
                                                      "columns": {"prompt": "problem", "solution": "solution"}}})
    with caplog.at_level(logging.WARNING, logger="grpo.train"):
        train(cfg, model=tiny_model(tok), tokenizer=tok)
    rows = completions(tmp_path)
    unscorable = [r for r in rows if r["prompt"] == "Prove it."]
    assert len(unscorable) == 4 and len(rows) == 12
    assert all(r["rewards"] == {"accuracy_reward": None} and r["reward"] is None and r["advantage"] == 0.0
               for r in unscorable)
    assert all(r["rewards"]["accuracy_reward"] == 0.0 for r in rows if r["prompt"] != "Prove it.")
    metrics = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert metrics["unscored_frac"] == pytest.approx(4 / 12)
    assert metrics["reward/accuracy_reward/none_frac"] == pytest.approx(4 / 12)
    assert metrics["reward/accuracy_reward/errors"] == 0.0
    assert metrics["reward_mean"] == 0.0  # over the scored rows only (an unscored row is no 0)
    assert "got None from every reward" in caplog.text


def test_async_rewards_and_callable_classes_train_unchanged(tmp_path, tok):
    f = write(tmp_path, "plugins.py", ASYNC_AND_CLASSES)
    cfg = run_cfg(tmp_path, [f"{f}:async_reward_func", f"{f}:async_len", f"{f}:count_b",
                             {"name": f"{f}:CountChar", "kwargs": {"char": "1"}}])
    train(cfg, model=tiny_model(tok), tokenizer=tok)
    rows = completions(tmp_path)
    for r in rows:
        text = r["completion"]
        assert r["rewards"] == {"async_reward_func": 1.0 if text else 0.0, "async_len": float(len(text)),
                                "count_b": float(text.count("b")), "CountChar": float(text.count("1"))}
    metrics = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert "reward/async_len" in metrics and "reward/CountChar/none_frac" in metrics


def test_nan_under_on_error_none_is_counted_and_left_out(tmp_path, tok, caplog):
    f = write(tmp_path, "plugins.py", ASYNC_AND_CLASSES)
    cfg = run_cfg(tmp_path, [{"name": f"{f}:odd_nan", "on_error": "none"}, f"{f}:async_len"])
    with caplog.at_level(logging.WARNING, logger="grpo.rewards.registry"):
        train(cfg, model=tiny_model(tok), tokenizer=tok)
    rows = completions(tmp_path)
    assert [r["rewards"]["odd_nan"] for r in rows] == [0.5, None] * 6
    metrics = json.loads(open(tmp_path / "run" / "metrics.jsonl").readline())
    assert metrics["reward/odd_nan/errors"] == 6 and metrics["reward/odd_nan/none_frac"] == 0.5
    assert metrics["unscored_frac"] == 0.0  # async_len scored every row
    assert "reward 'odd_nan' returned NaN for sample 1" in caplog.text


def test_a_run_with_constant_rewards_warns_loudly(tmp_path, tok, caplog):
    f = write(tmp_path, "plugins.py", ASYNC_AND_CLASSES)
    cfg = run_cfg(tmp_path, [f"{f}:constant"], steps=4, no_signal_warn_steps=2)
    with caplog.at_level(logging.WARNING, logger="grpo.train"):
        train(cfg, model=tiny_model(tok), tokenizer=tok)
    first = [r for r in caplog.records if "same value" in r.getMessage()]
    quiet = [r for r in caplog.records if "NO LEARNING SIGNAL" in r.getMessage()]
    assert len(first) == 1 and "'constant' = 1" in first[0].getMessage()
    assert len(quiet) == 2 and "for 2 steps in a row (to step 2)" in quiet[0].getMessage()  # steps 2 and 4
    assert "plain strings" in quiet[0].getMessage()
    assert all(json.loads(m)["zero_std_frac"] == 1.0 for m in open(tmp_path / "run" / "metrics.jsonl"))


def test_the_no_signal_warning_can_be_turned_off(tmp_path, tok, caplog):
    f = write(tmp_path, "plugins.py", ASYNC_AND_CLASSES)
    cfg = run_cfg(tmp_path, [f"{f}:constant"], steps=2, no_signal_warn_steps=0)
    with caplog.at_level(logging.WARNING, logger="grpo.train"):
        train(cfg, model=tiny_model(tok), tokenizer=tok)
    assert "NO LEARNING SIGNAL" not in caplog.text


def _rows(rollout, keep):
    from grpo.rollout import RolloutBatch

    idx = keep.nonzero().squeeze(1)
    return RolloutBatch(prompt_ids=[rollout.prompt_ids[i] for i in idx.tolist()],
                        completion_ids=rollout.completion_ids[idx], completion_mask=rollout.completion_mask[idx],
                        logprobs=None, texts=[rollout.texts[i] for i in idx.tolist()], group=rollout.group[idx],
                        truncated=rollout.truncated[idx])


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_unscored_rows_leave_the_loss_as_if_never_sampled(tmp_path, tok, loss_type):
    """policy_update with some rows marked unscored = policy_update on the batch without them: same loss,
    same gradients (the rows are masked and not counted by the sequence / token normalisers)."""
    cfg = run_cfg(tmp_path, ["format"])
    cfg.algorithm.loss_type = loss_type
    states = [setup(cfg, model=tiny_model(tok), tokenizer=tok) for _ in range(2)]
    grads: list[list[torch.Tensor]] = [[], []]
    for st, out in zip(states, grads):
        inner = getattr(st.optimizer, "optimizer", st.optimizer)
        model = st.accelerator.unwrap_model(st.model)
        inner.register_step_pre_hook(lambda opt, args, kw, m=model, out=out: out.extend(
            p.grad.detach().clone() for p in m.parameters()))
    torch.manual_seed(0)
    _, rollout = sample(states[0], next_prompts(states[0]))
    n = len(rollout.texts)
    keep = torch.ones(n, dtype=torch.bool)
    keep[[1, 5, 6]] = False
    adv = torch.linspace(-1.0, 1.0, n)
    full = policy_update(states[0], rollout, lambda: (adv, keep))
    part = policy_update(states[1], _rows(rollout, keep), adv[keep])
    assert full["loss"] == pytest.approx(part["loss"], rel=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0
    for g_full, g_part in zip(*grads):
        torch.testing.assert_close(g_full, g_part, rtol=1e-4, atol=1e-7)
