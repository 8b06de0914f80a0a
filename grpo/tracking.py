"""Run outputs: metrics.jsonl (one line per step), completions.jsonl, eval files, trackers, progress bars.

Only the main process writes. The JSONL files are always written; accelerate's trackers (tensorboard,
wandb, trackio) are added when a recipe names them and they are installed.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
from pathlib import Path
from typing import Any, Iterable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

_TRACKER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}


def available_trackers(names: Iterable[str]) -> list[str]:
    """The requested trackers that are installed; warn about the rest (JSONL is always written)."""
    out = []
    for n in names:
        mod = _TRACKER_MODULES.get(n)
        if mod is None:
            raise ValueError(f"unknown tracker '{n}'; known: {', '.join(_TRACKER_MODULES)}")
        if importlib.util.find_spec(mod) is None and not (n == "tensorboard" and importlib.util.find_spec("tensorboardX")):
            log.warning("tracker '%s' requested but not installed; skipping it (metrics.jsonl is still written)", n)
            continue
        out.append(n)
    return out


def _clean(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    return v


class RunWriter:
    """Appends JSON lines under the run directory (main process only)."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, accelerator=None):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.accelerator = accelerator
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)

    def append(self, name: str, rows: list[dict[str, Any]] | dict[str, Any]) -> None:
        if not self.enabled:
            return
        rows = [rows] if isinstance(rows, dict) else rows
        with open(self.dir / name, "a") as f:
            for r in rows:
                f.write(json.dumps({k: _clean(v) for k, v in r.items()}, ensure_ascii=False) + "\n")

    def write_json(self, name: str, obj: Any) -> None:
        if self.enabled:
            (self.dir / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")

    def log_metrics(self, metrics: dict[str, Any], step: int) -> None:
        self.append("metrics.jsonl", metrics)
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=step)


def truncate_jsonl(path: str | Path, max_step: int) -> None:
    """On resume: drop lines logged after the checkpoint's step, so files match an uninterrupted run."""
    p = Path(path)
    if not p.is_file():
        return
    keep = []
    for ln in p.read_text().splitlines():
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:  # a line half-written when the process was killed
            continue
        if isinstance(row, dict) and row.get("step", 0) <= max_step:
            keep.append(ln)
    p.write_text("".join(ln + "\n" for ln in keep))


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0):
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, leave=True)
