"""Read rows from local files or the Hub, remembering where each row came from so errors can name it."""

from __future__ import annotations

import csv
import json
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab import run_files
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
VALIDATION_NAMES = ("validation", "val", "dev", "valid")


@dataclass
class Rows:
    """Rows of one split and, for each, a human locator such as ``train.jsonl line 7``."""

    rows: list[dict[str, Any]]
    locators: list[str]
    source: str
    columns: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, indices: list[int]) -> "Rows":
        return Rows([self.rows[i] for i in indices], [self.locators[i] for i in indices], self.source, self.columns)


def _columns(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows[:1000]:
        for k in r:
            seen.setdefault(k, None)
    return list(seen)


def read_file(path: Path) -> Rows:
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise TunelabError(f"{path}: unsupported file type {suffix or '(none)'}; use one of "
                           f"{', '.join(FILE_SUFFIXES)}")
    try:
        if suffix == ".parquet":
            rows, locs = _read_parquet(path)
        else:
            # utf-8-sig: a byte-order mark (as several Windows editors write one) is not part of the first row
            text = path.read_text(encoding="utf-8-sig")
            if suffix == ".jsonl":
                rows, locs = _read_jsonl(path, text)
            elif suffix == ".json":
                rows, locs = _read_json(path, text)
            else:
                rows, locs = _read_delimited(path, text, "\t" if suffix == ".tsv" else ",")
    except UnicodeDecodeError as e:
        raise TunelabError(f"{path}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    if not rows:
        raise TunelabError(f"{path}: no rows; the file is empty")
    rows = _flatten_translation(rows)
    return Rows(rows, locs, str(path), _columns(rows))


def _flatten_translation(rows: list[dict]) -> list[dict]:
    """The Hub's translation datasets (wmt, opus_books, iwslt) hold each pair as {"translation": {"en": ..., "fr":
    ...}}: its languages become columns, so --input_columns en --target_column fr says which way to translate (the
    dict's order says nothing about the direction)."""
    if not rows or not all(isinstance(r.get("translation"), dict) for r in rows):
        return rows
    flat = []
    for row in rows:
        pair = {str(k): v for k, v in row["translation"].items()}
        flat.append({**{k: v for k, v in row.items() if k != "translation"}, **pair})
    return flat


# A language code as a file suffix (train.en, train.pt_br, newstest2014.de), not a file type's.
_LANGUAGE_SUFFIX = re.compile(r"^\.[a-z]{2,3}([-_][a-z0-9]{2,4})?$", re.IGNORECASE)
_NOT_LANGUAGES = {*FILE_SUFFIXES, ".txt", ".md", ".gz", ".xz", ".zip", ".tar", ".py", ".log", ".yml", ".bin", ".sql",
                  ".db", ".pdf", ".png", ".jpg"}


def _parallel_files(directory: Path, split: str) -> list[Path]:
    return [f for f in sorted(directory.iterdir()) if f.is_file() and f.stem.lower() == split
            and _LANGUAGE_SUFFIX.match(f.suffix) and f.suffix.lower() not in _NOT_LANGUAGES]


def _read_parallel(files: list[Path]) -> Rows:
    """Parallel text files, one sentence per line (Multi30k's train.en beside train.fr, WMT's raw files): line N of
    each file is one row, with a column per language."""
    texts = {}
    for f in files:
        try:
            texts[f.suffix[1:]] = f.read_text(encoding="utf-8-sig").splitlines()
        except UnicodeDecodeError as e:
            raise TunelabError(f"{f}: not UTF-8 text (byte {e.start}); re-save the file as UTF-8") from None
    counts = {len(lines) for lines in texts.values()}
    if len(counts) > 1:
        sizes = ", ".join(f"{f.name} {len(texts[f.suffix[1:]]):,}" for f in files)
        raise TunelabError(f"{files[0].parent}: parallel files must have one line per sentence pair, but their line "
                           f"counts differ ({sizes}); align them line by line")
    n = counts.pop()
    if n == 0:
        raise TunelabError(f"{files[0]}: no rows; the file is empty")
    names = " + ".join(f.name for f in files)
    rows = [{lang: lines[i] for lang, lines in texts.items()} for i in range(n)]
    return Rows(rows, [f"{names} line {i}" for i in range(1, n + 1)], f"{files[0].parent} ({names})", list(texts))


def read_split(directory: Path, split: str) -> Rows | None:
    """A directory's rows of one split: its split file (train.jsonl, dev.csv...) or its parallel text files
    (train.en and train.fr); None when it has neither."""
    found = split_file(directory, split)
    if found is not None:
        return read_file(found)
    parallel = _parallel_files(directory, split)
    return _read_parallel(parallel) if len(parallel) >= 2 else None


def read_first_split(directory: Path, splits) -> Rows | None:
    """The rows of the first of ``splits`` the directory holds (an evaluation's test, else its validation split)."""
    return next((rows for rows in (read_split(directory, s) for s in splits) if rows is not None), None)


def evaluation_rows(directory: Path, split: str = "test", flag: str = "--dataset_name_or_path") -> Rows:
    """A directory's evaluation split: ``split``, else the validation split (val, dev...)."""
    rows = read_first_split(directory, (split, *VALIDATION_NAMES))
    if rows is None:
        raise TunelabError(f"{flag} {directory}: no {split}/validation/dev file in the directory "
                           f"({_listing(directory)}); pass the file")
    return rows


def _read_jsonl(path: Path, text: str) -> tuple[list[dict], list[str]]:
    rows, locs = [], []
    for lineno, obj in run_files.parse_jsonl(text, path, fix="each line must be one JSON object"):
        if not isinstance(obj, dict):
            raise TunelabError(f"{path} line {lineno}: expected a JSON object with named fields, got "
                               f"{type(obj).__name__}")
        rows.append(obj)
        locs.append(f"{path.name} line {lineno}")
    return rows, locs


def _read_json(path: Path, text: str) -> tuple[list[dict], list[str]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        # A .json file that holds JSON lines is common; read it as such when every line parses.
        if text.count("\n") > 0 and text.lstrip().startswith("{"):
            try:
                return _read_jsonl(path, text)
            except TunelabError:
                pass
        raise TunelabError(f"{path} line {e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    if isinstance(data, dict):
        lists = [k for k, v in data.items() if isinstance(v, list)]
        if len(lists) == 1:
            data = data[lists[0]]
        else:
            raise TunelabError(f"{path}: expected a JSON list of objects (or an object holding one list), got an "
                               f"object with keys {', '.join(list(data)[:5])}")
    if not isinstance(data, list):
        raise TunelabError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for i, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise TunelabError(f"{path} item {i}: expected a JSON object with named fields, got "
                               f"{type(obj).__name__}")
    return data, [f"{path.name} item {i}" for i in range(1, len(data) + 1)]


def _read_delimited(path: Path, text: str, delimiter: str) -> tuple[list[dict], list[str]]:
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    if not reader.fieldnames:
        return [], []
    if delimiter == "," and len(reader.fieldnames) == 1 and "\t" in reader.fieldnames[0]:
        raise TunelabError(f"{path} line 1: the file looks tab-separated (tabs, no commas); name it .tsv, with a "
                           "first line naming the columns")
    rows, locs = [], []
    for row in reader:
        if None in row:
            raise TunelabError(f"{path} line {reader.line_num}: {len(reader.fieldnames) + len(row[None])} fields "
                               f"but the header names {len(reader.fieldnames)}; quote fields that contain "
                               f"{'tabs' if delimiter == chr(9) else 'commas'}")
        rows.append(row)
        locs.append(f"{path.name} line {reader.line_num}")
    return rows, locs


def _read_parquet(path: Path) -> tuple[list[dict], list[str]]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for damaged files
        raise TunelabError(f"{path}: cannot read as Parquet ({str(e).splitlines()[0]})") from None
    return rows, [f"{path.name} row {i}" for i in range(1, len(rows) + 1)]


def split_file(directory: Path, split: str) -> Path | None:
    for f in sorted(directory.iterdir()):
        if f.suffix.lower() not in FILE_SUFFIXES or not f.is_file():
            continue
        stem = f.stem.lower()
        if stem == split or stem.endswith(tuple(sep + split for sep in "._-")):
            return f
    return None


def check_local(name_or_path: str | None, flag: str = "--dataset_name_or_path") -> None:
    """A value that looks like a local path must exist (checked before any model is loaded)."""
    if not name_or_path:
        return
    path = Path(name_or_path).expanduser()
    looks_local = name_or_path.startswith((".", "/", "~")) or path.suffix.lower() in FILE_SUFFIXES
    if looks_local and not path.exists():
        raise TunelabError(f"{flag} {name_or_path}: no such file or directory")


def _listing(folder: Path, most: int = 6) -> str:
    """What a folder holds, for an error that did not find what it looked for: parallel text files (Multi30k's
    train.en / train.fr) show the user why their data was not read."""
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if not names:
        return "it is empty"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return "it holds " + ", ".join(names[:most]) + more


def load_splits(name_or_path: str, *, train_split: str = "train", eval_split: str | None = None,
                dataset_config: str | None = None, flag: str = "--dataset_name_or_path") -> tuple[Rows, Rows | None]:
    """(train rows, validation rows or None) from a file, a directory of split files, or a Hub dataset."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if eval_split:
            raise TunelabError(f"--eval_split {eval_split}: {path} is a single file with no splits; use "
                               "--validation_split FRACTION or a directory of split files")
        return read_file(path), None
    if path.is_dir():
        train = read_split(path, train_split)
        if train is None:
            raise TunelabError(f"{flag} {path}: no file named {train_split}.jsonl/.json/.csv/.tsv/.parquet (or "
                               f"parallel text files {train_split}.en, {train_split}.fr ...) in the directory "
                               f"({_listing(path)}); name the training file after its split or pass the file itself")
        evals = read_first_split(path, [eval_split] if eval_split else VALIDATION_NAMES)
        if eval_split and evals is None:
            raise TunelabError(f"--eval_split {eval_split}: no such split file in {path}")
        return train, evals
    check_local(name_or_path, flag)
    return _load_hub(name_or_path, dataset_config, train_split, eval_split, flag)


def _load_hub(name: str, config: str | None, train_split: str, eval_split: str | None,
              flag: str) -> tuple[Rows, Rows | None]:
    import datasets

    try:
        dd = datasets.load_dataset(name, config)
    except Exception as e:  # datasets raises many types (ConnectionError, DatasetNotFoundError, ValueError...)
        raise TunelabError(f"{flag} {name}: not a local file and could not be loaded from the Hub "
                           f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__})") from None
    if train_split not in dd:
        raise TunelabError(f"--train_split {train_split}: {name} has splits {', '.join(dd)}")
    names = [eval_split] if eval_split else [s for s in VALIDATION_NAMES if s in dd]
    if eval_split and eval_split not in dd:
        raise TunelabError(f"--eval_split {eval_split}: {name} has splits {', '.join(dd)}")

    def rows(split: str) -> Rows:
        data = _flatten_translation(dd[split].to_list())
        return Rows(data, [f"{name}[{split}] row {i}" for i in range(1, len(data) + 1)], f"{name}[{split}]",
                    _columns(data))

    return rows(train_split), (rows(names[0]) if names else None)


def carve_validation(train: Rows, fraction: float, seed: int) -> tuple[Rows, Rows]:
    if not 0.0 < fraction < 1.0:
        raise TunelabError(f"--validation_split {fraction}: must be a fraction between 0 and 1 (e.g. 0.1)")
    order = list(range(len(train)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(round(len(order) * fraction)))
    if n_eval >= len(order):
        raise TunelabError(f"--validation_split {fraction}: leaves no training rows out of {len(order)}")
    return train.subset(sorted(order[n_eval:])), train.subset(sorted(order[:n_eval]))


def sample(rows: Rows, n: int | None, seed: int) -> Rows:
    if n is None or n >= len(rows):
        return rows
    if n <= 0:
        raise TunelabError(f"a sample size must be positive, got {n}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    return rows.subset(sorted(order[:n]))
