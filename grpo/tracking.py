"""Run outputs: the output directory policy, metrics.jsonl (one line per step), completions.jsonl, eval
files, trackers, progress bars.

Only the main process writes; rows made on every process (completions) are gathered to it first. The
JSONL files are always written; accelerate's trackers (tensorboard, wandb, trackio) are added when a
recipe names them and they are installed.

Output directory: a fresh run refuses a directory that already holds a run (`RUN_FILES`), unless it is
resumed (`--resume`) or started over (`--overwrite`, which deletes those files and nothing else), and a
file or unwritable place is an error; all before any model loads (`prepare_output_dir`).

Progress: `run.progress: false` silences every bar, ours and those of transformers (weight loading,
shard writing), huggingface_hub and datasets. With `true`, bars draw on a terminal (or a notebook); when
stderr is not one (a log file, a job scheduler) our bars become a plain line every `LINE_SECONDS` and at
the end, and the libraries' bars stay off, so logs get no carriage-return spam.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import tqdm.autonotebook as _autonotebook
from tqdm.auto import tqdm
from tqdm.std import tqdm as _std_tqdm

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


def gather_rows(accelerator, rows: list[dict[str, Any]], keys: list[Any]) -> list[dict[str, Any]]:
    """Every process's `rows` on the main process, sorted by `keys` (one sortable key per row, unique over
    all processes, e.g. the row's place in the global batch); [] on the other processes. A collective
    call: every process must make it. One process: `rows` as they are."""
    if accelerator is None or accelerator.num_processes == 1:
        return rows
    from accelerate.utils import gather_object

    pairs = gather_object([(k, r) for k, r in zip(keys, rows, strict=True)])
    if not accelerator.is_main_process:
        return []
    return [r for _, r in sorted(pairs, key=lambda p: p[0])]


# ---------------------------------------------------------------- the output directory

# what a run of any stage writes into its output directory (glob patterns); --overwrite deletes these only
RUN_FILES = ("config.yaml", "metrics.jsonl", "completions.jsonl", "summary.json", "checkpoints", "model", "plots",
             "eval_*.jsonl", "eval_*.json", "data.jsonl", "acceptance.json", "teacher_samples.jsonl", "DONE",
             ".tmp-model-*")


def run_files(run_dir: str | Path) -> list[Path]:
    """The files and folders of an earlier run in `run_dir` (see RUN_FILES), sorted."""
    d = Path(run_dir)
    if not d.is_dir():
        return []
    return sorted({p for pattern in RUN_FILES for p in d.glob(pattern)})


def check_writable_dir(path: str | Path, key: str = "run.output_dir") -> None:
    """ConfigError unless `path` is a directory this process can write, or can be made as one. Creates
    nothing: the nearest existing folder is probed with a temporary file, which is removed at once."""
    from grpo.config import ConfigError

    p = Path(path)   # as written: the stages do not expand ~ either
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{key}: {p} is a file, not a directory")
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}: cannot create {p}: {probe} is a file")
    try:
        fd, name = tempfile.mkstemp(prefix=".grpo-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        where = p if probe == p else f"{p} (in {probe})"
        raise ConfigError(f"{key}: cannot write to {where}: {e.strerror or e}") from e


def prepare_output_dir(run_dir: str | Path, resume_from: str | None = None, overwrite: bool = False,
                       key: str = "run.output_dir") -> None:
    """The output-directory policy, applied before any model loads:

    * a file, or a place this process cannot write: ConfigError;
    * `overwrite`: the files of an earlier run (RUN_FILES) are deleted; anything else in the folder stays;
    * `resume_from` ("latest" or a checkpoint path): that checkpoint must exist and be complete
      (CheckpointError otherwise); stale temporary checkpoint folders from a crash mid-save are removed;
    * otherwise a folder holding an earlier run is refused (ConfigError naming --resume and --overwrite),
      so that a re-run never appends to its metrics.jsonl or replaces its checkpoints.

    Only the main process (the launcher's rank 0) deletes or refuses; every process checks the place."""
    from grpo import checkpoint as ckpt
    from grpo.config import ConfigError, launch_processes

    if resume_from and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: give one")
    check_writable_dir(run_dir, key)
    d = Path(run_dir)
    if resume_from:
        path = ckpt.latest_checkpoint(d) if resume_from == "latest" else Path(resume_from)
        if path is None:
            raise ckpt.CheckpointError(f"--resume: no complete checkpoint under {d / 'checkpoints'}")
        if not (path / ckpt.STATE_FILE).is_file():
            raise ckpt.CheckpointError(f"{path} is not a complete checkpoint (no {ckpt.STATE_FILE})")
    if launch_processes()[0] != 0:
        return
    if resume_from:
        ckpt.remove_stale_temp(d)
        return
    found = run_files(d)
    if found and not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise ConfigError(f"{key}: {d} already holds a run ({names}); resume it with --resume, start it over with "
                          "--overwrite (deletes that run's files), or choose another output_dir")
    for p in found:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    if found:
        log.info("--overwrite: deleted %d files/folders of the earlier run in %s", len(found), d)


# ---------------------------------------------------------------- progress

LINE_SECONDS = 30.0   # without a terminal: one progress line at most this often (and one at the end)
_saved_library_bars: dict[str, bool] | None = None


def _interactive() -> bool:
    """A terminal on stderr, or a notebook (whose bars are widgets, not carriage returns)."""
    if _autonotebook.tqdm is not _std_tqdm:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def configure_progress(enabled: bool) -> None:
    """Turn the progress bars of transformers (weight loading, shard writing) and huggingface_hub off when
    `run.progress` is false or stderr is not a terminal, and datasets' with them (`grpo.data.sources`
    follows huggingface_hub's setting when it first imports datasets); otherwise restore what they were
    (an environment that disabled them, e.g. HF_HUB_DISABLE_PROGRESS_BARS=1, stays as it was)."""
    global _saved_library_bars
    from transformers.utils import logging as hf_logging

    ds = sys.modules.get("datasets")
    if not (enabled and _interactive()):
        if _saved_library_bars is None:
            _saved_library_bars = {"transformers": hf_logging.is_progress_bar_enabled(),
                                   "datasets": bool(ds is not None and ds.is_progress_bar_enabled())}
        hf_logging.disable_progress_bar()   # huggingface_hub's bars too
        if ds is not None:
            ds.disable_progress_bars()
        return
    if _saved_library_bars is not None:
        if _saved_library_bars["transformers"]:
            hf_logging.enable_progress_bar()
        if _saved_library_bars["datasets"] and ds is not None:
            ds.enable_progress_bars()
        _saved_library_bars = None


class LineProgress:
    """tqdm's interface (update, set_postfix, close, context manager) for output that is not a terminal:
    one plain line, e.g. ``GRPO 12/100 [01:02<07:35, 5.18s/it] reward=0.41``, at most every `interval`
    seconds, and a last one at close."""

    def __init__(self, total: int, desc: str, initial: int = 0, interval: float = LINE_SECONDS, file=None):
        self.total, self.desc, self.n, self.interval = total, desc, initial, interval
        self.file = file or sys.stderr
        self.postfix: dict[str, Any] = {}
        self.start = self.last = time.monotonic()
        self.start_n = self.printed_n = initial

    def _line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.n - self.start_n
        rate = f"{elapsed / done:.2f}s/it" if done else "?s/it"
        left = tqdm.format_interval(elapsed / done * (self.total - self.n)) if done and self.total else "?"
        post = " " + ", ".join(f"{k}={v}" for k, v in self.postfix.items()) if self.postfix else ""
        return f"{self.desc} {self.n}/{self.total} [{tqdm.format_interval(elapsed)}<{left}, {rate}]{post}"

    def _emit(self) -> None:
        print(self._line(), file=self.file, flush=True)
        self.last, self.printed_n = time.monotonic(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last >= self.interval:
            self._emit()

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = kwargs

    def close(self) -> None:
        if self.n != self.printed_n:
            self._emit()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# What a GRPO run leaves in its directory and what each file holds, in the order its closing lines list them.
RUN_REPORT_FILES = [
    ("config.yaml", "the resolved recipe"),
    ("metrics.jsonl", "one line per step: rewards, KL, clipping, lengths, timings"),
    ("completions.jsonl", "every sampled completion with its rewards and advantage"),
    ("eval_*.json", "held-out eval results (eval_*.jsonl: every prompt's output)"),
    ("summary.json", "steps, seconds, eval before/after"),
]


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def run_report(run_dir: str | Path, summary: dict[str, Any]) -> str:
    """The lines a run ends with: how long it took, where each output is, the final checkpoint's size and
    how to draw the plots."""
    run = Path(run_dir)
    steps = summary.get("steps")
    lines = [f"done: {steps} step{'' if steps == 1 else 's'} in {summary.get('train_seconds', 0):.0f} s of training"
             + (f" + {summary['eval_seconds']:.0f} s of eval" if summary.get("eval_seconds") else "")]
    lines.append(f"outputs in {run}/:")
    lines += [f"  {name:<20} {what}" for name, what in RUN_REPORT_FILES if any(run.glob(name))]
    final = summary.get("final_checkpoint")
    if final and Path(final).is_dir():
        final = Path(final)
        rel = str(final.relative_to(run) if final.is_relative_to(run) else final) + "/"
        lines.append(f"  {rel:<20} model/ ({_size(_bytes(final / 'model'))}): weights + tokenizer, usable as model.name")
        if (final / "trainer_state.pt").is_file():
            lines.append(f"  {'':<20} trainer_state.pt ({_size(_bytes(final / 'trainer_state.pt'))}): for --resume "
                         "(with Adam's moments unless run.save_optimizer: false)")
    lines.append(f"plots: grpo plot {run}   (writes {run / 'plots'}/*.png, all in one: dashboard.png)")
    return "\n".join(lines)


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0):
    """A progress bar: tqdm on a terminal or in a notebook, `LineProgress` lines when stderr is not one,
    nothing when `enabled` is false."""
    if enabled and not _interactive():
        return LineProgress(total, desc, initial)
    return tqdm(total=total, desc=desc, initial=initial, disable=not enabled, dynamic_ncols=True,
                file=sys.stderr, leave=True)
