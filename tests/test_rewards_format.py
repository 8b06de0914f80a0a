"""Strict R1 format reward and tag counting."""
import pytest

from grpo.rewards.format import format_reward, tag_count_reward

GOOD = [
    "<think>add 2 and 2</think><answer>4</answer>",
    "  \n<think>\nstep\n</think>\n<answer>\n4\n</answer>\n  ",
]
BAD = [
    "<think>x</think><answer>4</answer> trailing garbage",  # open-r1's regex accepts this
    "<think>x</think><answer>4</answer><answer>5</answer>",  # and this
    "<think>x</think><think>y</think><answer>4</answer>",
    "<answer>4</answer><think>x</think>",
    "<think>x</think>",
    "<answer>4</answer>",
    "text first <think>x</think><answer>4</answer>",
    "<think>x</think> between <answer>4</answer>",
    "<think>x<answer>4</answer></think>",
    "<THINK>x</THINK><ANSWER>4</ANSWER>",
    "",
]


@pytest.mark.parametrize("text", GOOD)
def test_strict_format_accepts(text):
    assert format_reward(None, [text]) == [1.0]


@pytest.mark.parametrize("text", BAD)
def test_strict_format_rejects(text):
    assert format_reward(None, [text]) == [0.0]


def test_chat_messages_and_prefix():
    chat = [[{"role": "assistant", "content": GOOD[0]}], [{"role": "assistant", "content": BAD[0]}]]
    assert format_reward(None, chat) == [1.0, 0.0]
    assert format_reward(None, ["x</think><answer>4</answer>"], prefix="<think>") == [1.0]


def test_tag_count_is_partial():
    assert tag_count_reward(None, ["<think>x</think>", GOOD[0], BAD[1]]) == [0.5, 1.0, 0.5]


# ----------------------------------------------------------------------------------- shaping rewards
from grpo.rewards.shaping import (cosine_reward, language_consistency_reward, reasoning_steps_reward,  # noqa: E402
                             repetition_penalty_reward, soft_overlong_reward)


def test_reasoning_steps():
    assert reasoning_steps_reward(None, ["Step 1: a\nStep 2: b\nStep 3: c", "1. a\n2. b", "just say 4"]) == \
        [1.0, pytest.approx(2 / 3), 0.0]


def test_cosine_length_scaling():
    ids = [[0] * 0, [0] * 500, [0] * 1000, [0] * 0, [0] * 1000]
    comps = ["<answer>4</answer>"] * 3 + ["<answer>5</answer>"] * 2
    out = cosine_reward(None, comps, completion_ids=ids, answer=["4"] * 5, max_length=1000)
    assert out == [pytest.approx(1.0), pytest.approx(0.75), pytest.approx(0.5), pytest.approx(-1.0),
                   pytest.approx(-0.5)]
    assert cosine_reward(None, ["x"], answer=[None]) == [None]


def test_repetition_penalty():
    out = repetition_penalty_reward(None, ["a b c a b c a b c", "the cat sat on the mat", "hi"])
    assert out[0] == pytest.approx(-(1 - 3 / 7)) and out[1] == 0.0 and out[2] == 0.0
    with pytest.raises(ValueError):
        repetition_penalty_reward(None, ["x"], max_penalty=0.5)


def test_soft_overlong_dapo():
    ids = [[0] * n for n in (768, 769, 896, 1024, 1025)]
    assert soft_overlong_reward(None, ["x"] * 5, completion_ids=ids, max_length=1024, cache_length=256) == \
        [0.0, pytest.approx(-1 / 256), pytest.approx(-0.5), pytest.approx(-1.0), -1.0]


def test_language_consistency():
    comps = ["<think>we add two and two</think><answer>4</answer>",
             "<think>我们 compute 二加二</think>", "<think>\\frac{1}{2} + 3 = 3.5</think>"]
    assert language_consistency_reward(None, comps, language="en") == [1.0, pytest.approx(1 / 6), 0.0]
    assert language_consistency_reward(None, comps[1:2], language="zh") == [pytest.approx(5 / 6)]
    with pytest.raises(ValueError, match="known"):
        language_consistency_reward(None, ["x"], language="xx")
