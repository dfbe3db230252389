"""The names of the files tunelab writes into a run's directories, declared once: every writer and every reader
(training, evaluation, merging, the hub card, the lifecycle checks, a comparison's workers) takes them from here,
so a file cannot be renamed on one side only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# a training run's output directory
ADAPTER_CONFIG = "adapter_config.json"   # peft's, in a PEFT run's output directory
TRAIN_CONFIG = "tunelab_config.yaml"     # the effective options; also copied beside merged models and checkpoints
TRAIN_RESULTS = "train_results.json"     # written last: its presence marks a finished run
ICA_TEMPLATES = "ica_templates.json"
DIAGNOSTICS = "diagnostics.json"         # tunelab diagnose
MERGE_INFO = "merge_info.json"           # in a merged model's folder
# an evaluation's output directory
EVAL_RESULTS = "eval_results.json"
EVAL_PREDICTIONS = "predictions.jsonl"
EVAL_OPTIONS = "eval_options.yaml"
# a comparison's directory and its runs' directories
COMPARISON_RESULTS = "results.jsonl"
SEARCH_STUDY = "search.db"
WORKER_RESULT = "run_result.json"
WORKER_ERROR = "run_error.json"

# what a model card's folder keeps of a run beside the weights (hub.py)
RESULT_FILES = (TRAIN_CONFIG, TRAIN_RESULTS, EVAL_RESULTS, MERGE_INFO)


def slug(text: str, *, empty: str) -> str:
    """``text`` as a folder-name part: runs of characters other than letters, digits, '.', '_' and '-' become one '-'.
    ``empty`` stands in when nothing is left; run folders and study names are built from it, so it stays fixed."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or empty


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A result file's contents, or None where it does not exist (a run not finished, a file not written)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TunelabError(f"{path}: not valid JSON ({e}); fix or remove it") from None


def read_adapter_config(adapter: str | Path) -> dict[str, Any]:
    """A PEFT adapter folder's adapter_config.json (a BOM tolerated); errors name --adapter, the flag that gave it."""
    path = Path(adapter) / ADAPTER_CONFIG
    hint = "pass the output_dir of a finished PEFT run"
    if not path.is_file():
        raise TunelabError(f"--adapter {adapter}: no {ADAPTER_CONFIG} there; {hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as e:
        raise TunelabError(f"--adapter {adapter}: {ADAPTER_CONFIG} is not valid JSON ({e}); {hint}") from None
    if not isinstance(config, dict):
        raise TunelabError(f"--adapter {adapter}: {ADAPTER_CONFIG} holds a {type(config).__name__}, not peft's "
                           f"settings; {hint}")
    return config


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """A JSON-lines file's values with their line numbers (blank lines skipped); a line that is not JSON is one
    error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise TunelabError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); fix or remove it") from None
    return parse_jsonl(text, path, fix="fix or delete that line")


def parse_jsonl(text: str, path: str | Path, *, fix: str) -> list[tuple[int, Any]]:
    """(line number, value) for each non-blank line of JSON-lines ``text``; a line that is not JSON is one error
    naming the file, the line and ``fix``. Shared by tunelab's own files and the users' datasets."""
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append((number, json.loads(line)))
            except json.JSONDecodeError as e:
                raise TunelabError(f"{path} line {number}: not valid JSON ({e.msg} at column {e.colno}); "
                                   f"{fix}") from None
    return out


def read_yaml_mapping(path: str | Path, *, label: str | None = None, fix: str = "fix or remove it") -> dict[str, Any]:
    """A YAML file that must hold a mapping (a run's saved options, a recipe, a --config file); empty is ``{}``.
    Anything else is one line naming ``label`` (the file, or the flag that named it), the line, and ``fix``."""
    import yaml

    path = Path(path)
    label = label or str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise TunelabError(f"{label}: not UTF-8 text ({e.reason} at byte {e.start}); {fix}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise TunelabError(f"{label}{where}: not valid YAML ({getattr(e, 'problem', None) or e}); {fix}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TunelabError(f"{label}: expected a mapping of names to values, got {type(data).__name__}; {fix}")
    return data
