"""Strict R1 format reward and tag counting."""
import pytest

from rewards.format import format_reward, tag_count_reward

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
