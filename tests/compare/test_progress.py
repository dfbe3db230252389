"""A comparison's progress line after each run: which of how many are done, and the time left once it can be
estimated from finished runs of each kind still to do."""

from __future__ import annotations

from pathlib import Path

from tunelab.comparison.processes import PlannedRun
from tunelab.comparison.progress import Progress


def _run(method: str) -> PlannedRun:
    return PlannedRun(key=method, label=method, method=method, seed=0, run_dir=Path(method), spec={})


def test_the_time_left_is_the_mean_of_finished_runs_of_each_kind_left():
    base, full, lora, qlora, ia3 = (_run(m) for m in ("base", "full", "lora", "qlora", "ia3"))
    progress = Progress([base, full, lora, qlora, ia3])
    assert progress.finished(base, 10.0) == ("1 of 5 runs done; the time left is estimated once a training run has "
                                             "finished")
    assert progress.finished(full, 60.0) == "2 of 5 runs done; about 3m 00.0s left"  # 3 runs x 60 s
    assert progress.finished(lora, 30.0) == "3 of 5 runs done; about 1m 30.0s left"  # 2 runs x 45 s
    assert progress.finished(qlora, 45.0) == "4 of 5 runs done; about 45.0 s left"
    assert progress.finished(ia3, 20.0) == "5 of 5 runs done"


def test_a_resumed_comparison_counts_only_the_runs_it_still_has_to_do():
    full, lora = _run("full"), _run("lora")
    progress = Progress([full, lora])  # the base was done by the interrupted run
    assert progress.finished(full, 40.0) == "1 of 2 runs done; about 40.0 s left"
