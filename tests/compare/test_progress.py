"""A comparison's progress line after each run: which of how many are done, and the time left once it can be
estimated from finished runs of each kind still to do."""

from __future__ import annotations

from pathlib import Path

from tunelab.comparison.processes import PlannedRun
from tunelab.comparison.progress import Progress


def _run(method: str, seed: int = 0, label: str | None = None) -> PlannedRun:
    key = f"{label or method}-{seed}"
    return PlannedRun(key=key, label=label or method, method=method, seed=seed, run_dir=Path(key), spec={})


def test_the_time_left_is_the_mean_of_finished_runs_of_each_kind_left():
    base, full, lora, qlora, ia3 = (_run(m) for m in ("base", "full", "lora", "qlora", "ia3"))
    progress = Progress([base, full, lora, qlora, ia3])
    assert progress.finished(base, 10.0) == ("1 of 5 runs done; the time left is estimated once a training run has "
                                             "finished")
    assert progress.finished(full, 60.0) == "2 of 5 runs done; about 3m 00.0s left"  # 3 runs x 60 s
    # PEFT runs are expected to take what finished PEFT runs took, once there is one
    assert progress.finished(lora, 30.0) == "3 of 5 runs done; about 1m 00.0s left"  # 2 runs x 30 s
    assert progress.finished(qlora, 45.0) == "4 of 5 runs done; about 37.5 s left"
    assert progress.finished(ia3, 20.0) == "5 of 5 runs done"


def test_a_resumed_comparison_counts_only_the_runs_it_still_has_to_do():
    full, lora = _run("full"), _run("lora")
    progress = Progress([full, lora])  # the base was done by the interrupted run
    assert progress.finished(full, 40.0) == "1 of 2 runs done; about 40.0 s left"


def test_a_run_is_expected_to_take_what_its_own_other_seeds_took():
    runs = [_run("full", 0), _run("lora", 0, "lora r=8"), _run("lora", 0, "lora r=64"), _run("lora", 1, "lora r=64"),
            _run("full", 1)]
    progress = Progress(runs)
    progress.finished(runs[0], 50.0)
    assert progress.finished(runs[1], 20.0) == "2 of 5 runs done; about 1m 30.0s left"  # 20 + 20 + 50
    assert progress.finished(runs[2], 80.0) == "3 of 5 runs done; about 2m 10.0s left"  # r=64's 80 + full's 50
    assert progress.finished(runs[3], 80.0) == "4 of 5 runs done; about 50.0 s left"


def test_a_method_this_process_does_not_know_counts_as_any_training_run():
    runs = [_run("full"), _run("someplugin")]
    progress = Progress(runs)
    assert progress.finished(runs[0], 50.0) == "1 of 2 runs done; about 50.0 s left"  # any training run's mean
