"""results.jsonl: one line per finished run (base, or method x seed), rewritten atomically on every addition so
that an interrupted comparison never leaves a partial line, and a re-run can tell what is already done. Every line
is a declared record (tunelab/records.py: a run's ComparisonRecord or a search trial's TrialRecord), checked as it
is written and as it is read.

A run's ``eval_dir`` (where its per-example predictions are, which paired intervals read) is stored relative to the
comparison's folder and read back as an absolute path: the folder can be moved, and reports rebuilt from any working
directory still find the predictions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.fileio import atomic_write_text
from tunelab import run_files
from tunelab.records import ComparisonRecord, TrialRecord, comparison_record


class ResultsFile:
    def __init__(self, directory: Path):
        self.path = Path(directory) / run_files.COMPARISON_RESULTS

    def records(self) -> list[dict[str, Any]]:
        """Every record, as the dict its declaration writes (the report reads them by key): a line with a key no
        record declares, or without one it needs, is an error naming the file and line."""
        if not self.path.is_file():
            return []
        return [self._located(comparison_record(value, source=f"{self.path} line {number}").to_json())
                for number, value in run_files.read_jsonl(self.path)]

    def by_key(self) -> dict[str, dict[str, Any]]:
        return {r["key"]: r for r in self.records()}

    def put(self, record: ComparisonRecord | TrialRecord | dict[str, Any]) -> None:
        """Add a record, replacing an earlier one with the same key (a re-run of a failed or forced run). A dict is
        checked against the declared records first."""
        if isinstance(record, dict):
            record = comparison_record(record, source=self.path)
        line = record.to_json()
        kept = [r for r in self.records() if r["key"] != line["key"]]
        kept.append(line)
        atomic_write_text(self.path, "".join(json.dumps(self._portable(r), default=str) + "\n" for r in kept))

    def _portable(self, record: dict[str, Any]) -> dict[str, Any]:
        where = record.get("eval_dir")
        if not where:
            return record
        folder, path = self.path.parent.resolve(), Path(where).resolve()
        return {**record, "eval_dir": str(path.relative_to(folder)) if path.is_relative_to(folder) else str(path)}

    def _located(self, record: dict[str, Any]) -> dict[str, Any]:
        where = record.get("eval_dir")
        if not where or Path(where).is_absolute():
            return record
        inside = self.path.parent / where
        # files written before paths were stored relative to the folder hold them relative to where the comparison
        # ran; those resolve from that directory only
        path = inside if inside.exists() or not Path(where).exists() else Path(where)
        return {**record, "eval_dir": str(path.resolve())}
