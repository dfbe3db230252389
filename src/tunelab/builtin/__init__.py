"""Built-in assets that need no outside data: the generated text-to-SQL task (``text2sql``).

The rest of tunelab reaches a built-in dataset through this registry, by name (``builtin:NAME`` in a recipe, a
built-in probe, ``tunelab data builtin NAME``), never through the module that generates it: a new built-in dataset
is one module and one entry here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    module: str          # the module that generates it (imported on use)
    folder: str          # its function () -> the dataset's folder in the cache, written on first use
    write: str           # its function (output_dir, *, seed) -> {what: path}, a copy anywhere
    test_file: str       # the file of the folder a task probe evaluates on


DATASETS: dict[str, BuiltinDataset] = {d.name: d for d in (
    BuiltinDataset("text2sql", "tunelab.builtin.text2sql", "builtin_text2sql_dir", "write_text2sql", "test.jsonl"),
)}


def _function(name: str, which: str):
    if name not in DATASETS:
        raise TunelabError(f"unknown built-in dataset {name!r}; the built-in datasets are {', '.join(DATASETS)}")
    spec = DATASETS[name]
    return getattr(importlib.import_module(spec.module), getattr(spec, which))


def dataset_dir(name: str) -> Path:
    """The folder of built-in dataset NAME (written into the cache on first use)."""
    return _function(name, "folder")()


def write_dataset(name: str, output_dir, *, seed: int = 0) -> dict[str, Path]:
    """Write built-in dataset NAME into OUTPUT_DIR; returns the paths written, by what they hold."""
    return _function(name, "write")(output_dir, seed=seed)
