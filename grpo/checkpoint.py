"""Atomic checkpoints and resume.

A checkpoint is a directory ``<run>/checkpoints/step-<N>/`` holding the model (`save_pretrained`), the
tokenizer, the resolved config, and ``trainer_state.pt`` (optimizer, scheduler, RNG states, data cursor,
step). It is written to a temporary sibling ``.tmp-step-<N>-<pid>-<random>`` and renamed into place, so a
crash mid-write never leaves a directory that `latest_checkpoint` would pick; such a leftover is removed by
the next save or resume once the process that wrote it has ended (`remove_stale_temp`). The last
`keep_last` checkpoints are kept.
"""
from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"
_STEP_RE = re.compile(r"^step-(\d+)$")
# a temporary checkpoint folder: ".tmp-step-<N>-<pid of its writer>-<tempfile suffix>" (no pid: written
# before the pid was part of the name)
_TMP_RE = re.compile(r"^\.tmp-step-\d+-(?:(\d+)-)?[a-z0-9_]+$")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, or belongs to a different model."""


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / STATE_FILE).is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1][1] if ckpts else None


@contextlib.contextmanager
def atomic_dir(final: str | Path, prefix: str | None = None):
    """Yield a fresh temporary directory beside `final`; when the block succeeds it replaces `final` in one
    rename (a crash never leaves a half-written directory), when it fails it is removed."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process
        return True
    return True


def remove_stale_temp(run_dir: str | Path) -> list[Path]:
    """Delete the temporary checkpoint folders a crash mid-save left in <run_dir>/checkpoints: only ours
    (named as `save_checkpoint` names them) and only stale ones, whose writing process has ended (or is
    this one, which writes one checkpoint at a time). Returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    removed = []
    for p in root.iterdir():
        m = _TMP_RE.match(p.name)
        if not m or not p.is_dir() or p.is_symlink():
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is None or pid == os.getpid() or not _alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def save_checkpoint(run_dir: str | Path, step: int, model, tokenizer, trainer_state: dict[str, Any],
                    config_yaml: str, keep_last: int = 2, state_dict: dict | None = None) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(run_dir)
    final = root / f"step-{step}"
    with atomic_dir(final, prefix=f".tmp-step-{step}-{os.getpid()}-") as tmp:
        model.save_pretrained(tmp / "model", safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp / "model")
        (tmp / "config.yaml").write_text(config_yaml)
        torch.save(trainer_state, tmp / STATE_FILE)
    for _, old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_trainer_state(ckpt: str | Path) -> dict[str, Any]:
    p = Path(ckpt)
    if not (p / STATE_FILE).is_file():
        raise CheckpointError(f"{p} is not a complete checkpoint (no {STATE_FILE})")
    return torch.load(p / STATE_FILE, map_location="cpu", weights_only=False)


def check_compatible(ckpt: str | Path, model) -> None:
    """Refuse a checkpoint whose weights do not fit `model` (names or shapes), before loading anything."""
    from safetensors import safe_open

    files = sorted((Path(ckpt) / "model").glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint {ckpt} has no model weights")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for f in files:
        with safe_open(str(f), framework="pt") as sf:
            for key in sf.keys():
                shape = tuple(sf.get_slice(key).get_shape())
                if key in expected and expected[key] != shape:
                    raise CheckpointError(f"checkpoint {ckpt} is from a different model: {key} has shape "
                                          f"{shape}, the configured model has {expected[key]}")
                if key not in expected:
                    raise CheckpointError(f"checkpoint {ckpt} is from a different model: unknown weight {key}")


def load_model_weights(ckpt: str | Path, model) -> None:
    from safetensors.torch import load_file

    check_compatible(ckpt, model)
    state = {}
    for f in sorted((Path(ckpt) / "model").glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = getattr(model.config, "tie_word_embeddings", False)
    missing = [k for k in missing if not (tied and k.endswith("lm_head.weight"))]
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {ckpt}: missing {missing[:5]}, unexpected {unexpected[:5]}")
