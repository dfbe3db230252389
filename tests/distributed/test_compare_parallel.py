"""`tunelab compare --parallel 2`: two methods at once on this machine give the records a one-at-a-time comparison
gives (the session's shared comparison), and a re-run finds everything done."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.cli import main
from tunelab.contention import usable_cores
from tunelab.comparison.results import ResultsFile

# The comparison fixture's worker runs these after tests/compare, which share it.
pytestmark = pytest.mark.xdist_group("compare")

# What may differ between two comparisons of the same recipe: where they ran (directory, Ray node) and what is
# timed, with how long the timed threads waited for a core. Peak memory is measured, not computed: a process's peak
# RSS moves by some hundred KiB between runs.
WHERE_AND_WHEN = {"wall_seconds", "train_seconds", "train_tokens_per_second", "inference", "peak_memory_bytes",
                  "run_dir", "eval_dir", "node", "timings", "train_cpu_wait_share"}


def same_but_times(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in WHERE_AND_WHEN}
    if out.get("generation"):
        out["generation"] = {k: v for k, v in out["generation"].items() if k not in ("seconds", "tokens_per_second")}
    if out.get("retention"):  # each probe's own time
        out["retention"] = {name: {k: v for k, v in probe.items() if k != "seconds"}
                            for name, probe in out["retention"].items()}
    return out


def assert_same_as_sequential(out: Path, sequential: Path, labels: set[str]) -> None:
    seq = {r["label"]: r for r in ResultsFile(sequential).records()}
    got = {r["label"]: r for r in ResultsFile(out).records()}
    assert set(got) == labels
    for label, record in got.items():
        assert record["status"] == "ok", record["error"]
        assert same_but_times(record) == same_but_times(seq[label]), label


def test_parallel_2_runs_two_methods_at_once_with_sequential_results(comparison, tmp_path, capsys):
    sequential, _ = comparison
    recipe = sequential.parent / "recipe.yaml"
    out = tmp_path / "par"
    assert main(["compare", str(recipe), "--output_dir", str(out), "--device", "cpu", "--methods", "lora,ia3",
                 "--parallel", "2"]) == 0
    assert "ran 3 run(s)" in capsys.readouterr().out
    assert_same_as_sequential(out, sequential, {"base", "lora", "ia3"})
    # At once: each run started (its spec written) before the other ended (its result written).
    runs = {r["label"]: Path(r["run_dir"]) for r in ResultsFile(out).records()}
    span = {label: ((d / "spec.json").stat().st_mtime, (d / "run_result.json").stat().st_mtime)
            for label, d in runs.items()}
    assert span["lora"][0] < span["ia3"][1] and span["ia3"][0] < span["lora"][1], span
    # Each on its share of the two cores, and the report drawn as for any comparison.
    threads = json.loads((runs["lora"] / "model" / "train_results.json").read_text())["cpu_threads"]
    assert threads == str(max(1, usable_cores() // 2))
    assert (out / "report.md").is_file()
    # The resume guarantees hold: a re-run has nothing left to do.
    assert main(["compare", str(recipe), "--output_dir", str(out), "--device", "cpu", "--methods", "lora,ia3",
                 "--parallel", "2"]) == 0
    assert "ran 0 run(s), skipped 3 already finished" in capsys.readouterr().out
