import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tok():
    from grpo.testing import char_tokenizer

    return char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tok):
    """A tiny random Llama + the char tokenizer saved as a checkpoint directory (loadable by path)."""
    from grpo.testing import tiny_model

    d = tmp_path_factory.mktemp("tiny_model")
    tiny_model(tok).save_pretrained(d)
    tok.save_pretrained(d)
    return d
