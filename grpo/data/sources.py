"""Generic dataset sources: local jsonl / json / parquet files and Hugging Face Hub datasets.

Both turn rows into `Example`s through a column mapping: `columns` maps Example fields to dataset
columns, e.g. `{"prompt": "question", "answer": "final_answer"}`. Keys other than
prompt / answer / tests / id land in `meta` under that key (`{"difficulty": "level"}` puts the
`level` column into `meta["difficulty"]`).

Also here, because every adapter uses them: row reading (`read_rows`, `hub_rows`), column checks with
a close-match suggestion (`require_columns`), gold-answer extractors (`extract_gsm8k_answer`,
`last_boxed`) and the stable train/eval split (`split_examples`, `apply_holdout`).
"""
from __future__ import annotations

import difflib
import gzip
import hashlib
import importlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable

from grpo.data import DataError
from grpo.data.records import Example

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet")
_FIELDS = ("prompt", "answer", "tests", "id")


# ------------------------------------------------------------------------------------------- reading
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    return path.suffix.lower()


def _read_one(path: Path) -> list[dict[str, Any]]:
    suffix = _suffix(path)
    if suffix in (".jsonl", ".jsonl.gz"):
        opener = gzip.open if suffix == ".jsonl.gz" else open
        rows = []
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
        return rows
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e.msg})") from e
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # {"data": [...]} style wrappers
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
        return data
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq  # optional dependency, needed only for parquet
        except ImportError as e:
            raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
        return pq.read_table(path).to_pylist()
    raise DataError(f"{path}: unsupported file type '{suffix}'; expected one of {', '.join(SUFFIXES)}")


def split_files(directory: Path, split: str, config: str | None = None) -> list[Path]:
    """Data files of one split inside a directory, in a stable order.

    Matches `train.jsonl`, `train.parquet`, Hub-style shards `train-00000-of-00001.parquet`, also in
    sub-folders (`main/train-*.parquet`); with `config`, a sub-folder of that name is preferred.
    """
    root = directory / config if config and (directory / config).is_dir() else directory
    found = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or _suffix(p) not in SUFFIXES:
            continue
        stem = p.name[: -len(_suffix(p))]
        if stem == split or stem.startswith(f"{split}-"):  # not "train_socratic" next to "train"
            found.append(p)
    return found


def read_rows(path: str | Path, split: str | None = None, config: str | None = None) -> list[dict[str, Any]]:
    """Rows (dicts) of a jsonl / jsonl.gz / json / parquet file, or of one split inside a directory."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if p.is_dir():
        if split is None:
            raise DataError(f"{p} is a directory: give a split (e.g. split='train') or a file path")
        files = split_files(p, split, config)
        if not files:
            raise DataError(f"no '{split}' data file ({', '.join(SUFFIXES)}) found under {p}")
        rows = [row for f in files for row in _read_one(f)]
    else:
        rows = _read_one(p)
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(f"{p}: row {bad} is a {type(rows[bad]).__name__}, expected an object")
    if not rows:
        raise DataError(f"{p}: dataset is empty")
    return rows


def hub_rows(name: str, split: str = "train", config: str | None = None, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of a Hugging Face Hub dataset via `datasets.load_dataset` (needs network or the HF cache)."""
    try:
        import datasets
    except ImportError as e:
        raise DataError(f"loading '{name}' from the Hub needs the `datasets` package: {e}") from e
    from huggingface_hub.utils import are_progress_bars_disabled

    if are_progress_bars_disabled():   # run.progress: false (grpo.tracking.configure_progress) covers datasets too
        datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(name, config, split=split, **kwargs)
    except Exception as e:  # network, unknown name/config/split: all surface as one clear DataError
        where = f"'{name}'" + (f" (config '{config}')" if config else "") + f" split '{split}'"
        raise DataError(f"could not load Hub dataset {where}: {type(e).__name__}: {e}. "
                        "Pass path=... to read a local copy instead.") from e
    rows = [dict(r) for r in ds]
    if not rows:
        raise DataError(f"Hub dataset '{name}' split '{split}' is empty")
    return rows


def require_columns(rows: list[dict[str, Any]], needed: Iterable[str], origin: str,
                    id_column: str | None = None) -> None:
    """DataError unless every row has every `needed` column. A column the first row lacks is named with the
    columns that do exist (and a close-match suggestion); one that a later row lacks, with that row's
    number (and its `id_column` value when given)."""
    needed = list(needed)
    present = list(rows[0].keys()) if rows else []
    for col in needed:
        if col in present:
            continue
        close = difflib.get_close_matches(col, present, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DataError(f"column '{col}' not found in {origin}.{hint} Columns present: {', '.join(present)}")
    for i, row in enumerate(rows):
        missing = [c for c in needed if c not in row]
        if missing:
            ident = f" (id {row[id_column]!r})" if id_column and id_column in row else ""
            raise DataError(f"{origin}: row {i}{ident} has no column '{missing[0]}' (row 0 has it); "
                            f"columns of row {i}: {', '.join(map(str, row)) or 'none'}")


# ---------------------------------------------------------------------------------- gold answers
def extract_gsm8k_answer(solution: str) -> str | None:
    """The number after the last '####' in a GSM8K answer, thousands separators removed."""
    if "####" not in solution:
        return None
    return solution.rsplit("####", 1)[1].strip().replace(",", "").rstrip(".") or None


def last_boxed(text: str) -> str | None:
    r"""Content of the last `\boxed{...}` (or `\fbox{...}`) in text, nested braces handled; None if absent.
    The brace-less form `\boxed 5` (a few MATH solutions) gives the text up to the next `$`."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    j = start + (len("\\boxed") if text.startswith("\\boxed", start) else len("\\fbox"))
    rest = text[j:]
    if not rest.lstrip().startswith("{"):
        token = rest.split("$")[0].strip() if rest.startswith(" ") else ""
        return token or None
    i = j + (len(rest) - len(rest.lstrip()))
    depth = 0
    for k in range(i, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1: k].strip()
    return None  # unbalanced braces


def _last_number(text: str) -> str | None:
    nums = re.findall(r"-?\d[\d,]*(?:\.\d+)?", text)
    return nums[-1].replace(",", "") if nums else None


EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": extract_gsm8k_answer,   # "... #### 1,234" -> "1234"
    "boxed": last_boxed,             # "... \boxed{\frac{1}{2}}" -> "\frac{1}{2}"
    "last_number": _last_number,     # "... so 42 apples." -> "42"
}


def _resolve_extractor(spec: str | Callable[[str], str | None] | None) -> Callable[[str], str | None] | None:
    if spec is None or callable(spec):
        return spec
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]
    if ":" in spec:  # "package.module:function"
        module_name, attr = spec.split(":", 1)
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise DataError(f"answer_extract '{spec}' could not be imported: {e}") from e
    close = difflib.get_close_matches(spec, EXTRACTORS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise DataError(f"unknown answer_extract '{spec}'.{hint} Known: {', '.join(EXTRACTORS)} "
                    "(or 'module:function')")


# --------------------------------------------------------------------------------- rows -> Examples
def _default_columns(present: list[str]) -> dict[str, str]:
    cols: dict[str, str] = {}
    prompt = next((c for c in ("prompt", "question", "problem", "instruction", "input") if c in present), None)
    if prompt is None:
        raise DataError(f"no prompt column: pass columns={{'prompt': <column>}}. Columns present: {', '.join(present)}")
    cols["prompt"] = prompt
    for fld in ("answer", "tests"):
        if fld in present:
            cols[fld] = fld
    return cols


def _as_tests(value: Any) -> dict[str, Any] | None:
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return {"asserts": [value]}
        return _as_tests(parsed)
    if isinstance(value, (list, tuple)):
        return {"asserts": [str(v) for v in value]}
    raise DataError(f"cannot use a {type(value).__name__} as tests: expected a dict, list of asserts or string")


def rows_to_examples(rows: list[dict[str, Any]], origin: str, id_prefix: str, task: str = "custom",
                     columns: dict[str, str] | None = None, id_column: str | None = None,
                     answer_extract: str | Callable[[str], str | None] | None = None) -> list[Example]:
    """Map rows to Examples (see the module docstring for `columns`); ids are `{id_prefix}-{row:05d}`
    unless `id_column` names a column of unique ids."""
    if not rows:
        raise DataError(f"{origin}: dataset is empty")
    present = list(rows[0].keys())   # the default mapping comes from row 0; require_columns checks every row
    if columns is not None and not (isinstance(columns, dict) and all(isinstance(v, str) for v in columns.values())):
        raise DataError(f"columns must map Example fields to column names, e.g. {{'prompt': 'question'}}; got {columns!r}")
    columns = dict(columns) if columns else _default_columns(present)
    if "prompt" not in columns:
        raise DataError(f"columns must map 'prompt' to a column of {origin}; got {columns}")
    if "id" in columns:
        id_column = id_column or columns.pop("id")
    require_columns(rows, list(columns.values()) + ([id_column] if id_column else []), origin, id_column)
    extract = _resolve_extractor(answer_extract)
    meta_cols = {k: v for k, v in columns.items() if k not in _FIELDS}
    out: list[Example] = []
    for i, row in enumerate(rows):
        answer = row.get(columns["answer"]) if "answer" in columns else None
        if answer is not None:
            answer = str(answer)
            if extract is not None:
                answer = extract(answer)
        prompt = row[columns["prompt"]]
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{origin}: row {i} has an empty or non-text prompt in column '{columns['prompt']}'")
        ex_id = f"{id_prefix}-{row[id_column]}" if id_column else f"{id_prefix}-{i:05d}"
        tests = _as_tests(row.get(columns["tests"])) if "tests" in columns else None
        meta = {k: row.get(v) for k, v in meta_cols.items()}
        meta.setdefault("source", origin)
        out.append(Example(id=ex_id, task=task, prompt=prompt, answer=answer, tests=tests, meta=meta))
    check_unique_ids(out, origin)
    return out


def check_unique_ids(examples: list[Example], origin: str) -> None:
    seen: set[str] = set()
    for ex in examples:
        if ex.id in seen:
            raise DataError(f"{origin}: duplicate example id '{ex.id}' (ids must be unique; check id_column)")
        seen.add(ex.id)


# --------------------------------------------------------------------------------- train / eval split
def _eval_score(prompt: str, seed: int) -> float:
    """A seeded hash of the prompt mapped to [0, 1)."""
    digest = hashlib.sha256(f"{seed}\0{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_examples(examples: list[Example], eval_fraction: float, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Stable (train, eval) split: an example goes to eval when a seeded hash of its prompt falls below
    `eval_fraction`. Its part therefore depends on nothing else (not the input order, not which other
    examples are loaded, not `limit`), and repeated prompts always land in the same part, so the
    eval part never leaks into training. The eval part has about eval_fraction of the examples.
    Both parts keep the input order."""
    if not 0.0 <= eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    train, held = [], []
    for ex in examples:
        (held if _eval_score(ex.prompt, seed) < eval_fraction else train).append(ex)
    return train, held


def apply_holdout(examples: list[Example], holdout: float | dict[str, Any] | None) -> list[Example]:
    """The `holdout` option of every adapter: `0.05` keeps the train part of a 5% stable split;
    `{"fraction": 0.05, "part": "eval", "seed": 0}` selects either part. None returns all examples."""
    if holdout is None:
        return examples
    spec = {"fraction": holdout} if isinstance(holdout, (int, float)) else dict(holdout)
    unknown = set(spec) - {"fraction", "part", "seed"}
    if unknown or "fraction" not in spec:
        raise DataError(f"holdout must be a fraction or {{fraction, part, seed}}; got {holdout}")
    part = spec.get("part", "train")
    if part not in ("train", "eval"):
        raise DataError(f"holdout part must be 'train' or 'eval', got '{part}'")
    train, held = split_examples(examples, float(spec["fraction"]), int(spec.get("seed", 0)))
    return train if part == "train" else held


# ---------------------------------------------------------------------------------------- sources
def load_file(path: str, columns: dict[str, str] | None = None, task: str = "custom", id_column: str | None = None,
              answer_extract: str | Callable[[str], str | None] | None = None, split: str | None = None,
              id_prefix: str | None = None, holdout: float | dict[str, Any] | None = None) -> list[Example]:
    """Examples from a local jsonl / jsonl.gz / json / parquet file (or a split inside a directory).

    columns:        Example field -> column (default: prompt from prompt/question/problem/instruction/input,
                    answer and tests from same-named columns when present); other keys go to meta.
    answer_extract: "gsm8k" | "boxed" | "last_number" | "module:function" | callable applied to the answer.
    id_prefix:      defaults to the file stem (or the split), giving ids like `train-00042`.
    """
    rows = read_rows(path, split=split)
    p = Path(path)
    prefix = id_prefix or (split if p.is_dir() else p.name[: -len(_suffix(p))] or p.stem)
    examples = rows_to_examples(rows, origin=str(p), id_prefix=prefix, task=task, columns=columns,
                                id_column=id_column, answer_extract=answer_extract)
    return apply_holdout(examples, holdout)


def load_hub(name: str, split: str = "train", config: str | None = None, columns: dict[str, str] | None = None,
             task: str = "custom", id_column: str | None = None,
             answer_extract: str | Callable[[str], str | None] | None = None, id_prefix: str | None = None,
             holdout: float | dict[str, Any] | None = None, revision: str | None = None) -> list[Example]:
    """Examples from any Hugging Face Hub dataset, with the same column mapping as `load_file`.
    Ids default to `{last part of name}-{split}-{row:05d}`."""
    rows = hub_rows(name, split=split, config=config, **({"revision": revision} if revision else {}))
    prefix = id_prefix or f"{name.rsplit('/', 1)[-1]}-{split}"
    examples = rows_to_examples(rows, origin=f"Hub dataset '{name}' ({split})", id_prefix=prefix, task=task,
                                columns=columns, id_column=id_column, answer_extract=answer_extract)
    return apply_holdout(examples, holdout)
