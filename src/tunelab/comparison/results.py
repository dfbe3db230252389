"""results.jsonl: one line per finished run (base, or method x seed), rewritten atomically on every addition so
that an interrupted comparison never leaves a partial line, and a re-run can tell what is already done."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunelab.fileio import atomic_write_text
from tunelab import run_files



class ResultsFile:
    def __init__(self, directory: Path):
        self.path = Path(directory) / run_files.COMPARISON_RESULTS

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                out.append(json.loads(line))
        return out

    def by_key(self) -> dict[str, dict[str, Any]]:
        return {r["key"]: r for r in self.records()}

    def put(self, record: dict[str, Any]) -> None:
        """Add a record, replacing an earlier one with the same key (a re-run of a failed or forced run)."""
        kept = [r for r in self.records() if r["key"] != record["key"]]
        kept.append(record)
        atomic_write_text(self.path, "".join(json.dumps(r, default=str) + "\n" for r in kept))
