"""A comparison's progress on the console: after each run, which of how many are done and about how long the rest
will take (as a progress bar's ETA would say it, one line per run: the runs' own progress bars fill the console)."""

from __future__ import annotations

from collections import defaultdict

from tunelab.comparison.processes import PlannedRun
from tunelab.comparison.rows import fmt_seconds
from tunelab.errors import TunelabError


def _groups(run: PlannedRun) -> tuple[str, ...]:
    """The groups of runs whose finished wall times predict this run's, closest first: the same method and settings
    (other seeds), then the same family, then any training run. The base is only evaluated, and a PEFT run costs
    more than full fine-tuning outside training (its probes are scored again with the adapter switched off, and an
    unmerged adapter generates more slowly), so the families' times differ."""
    if run.method == "base":
        return ("base",)
    from tunelab.methods import get_method

    try:
        family = "PEFT" if get_method(run.method).peft else "full fine-tuning"
    except TunelabError:  # a method this process does not know: only its own runs and any training run tell
        family = run.method
    return (f"label {run.label}", f"family {family}", "training")


class Progress:
    """``k of n runs done; about T left``: each run still to do is expected to take the mean wall time of the
    finished runs of its closest group (:func:`_groups`); until every run left has a finished run in one of its
    groups, the time left is not guessed."""

    def __init__(self, runs: list[PlannedRun]):
        self.total = len(runs)
        self.left = {run.key: _groups(run) for run in runs}
        self.walls: dict[str, list[float]] = defaultdict(list)

    def finished(self, run: PlannedRun, wall: float) -> str:
        for group in self.left.pop(run.key):
            self.walls[group].append(wall)
        done = self.total - len(self.left)
        line = f"{done} of {self.total} runs done"
        if not self.left:
            return line
        expected = 0.0
        for groups in self.left.values():
            group = next((g for g in groups if self.walls[g]), None)
            if group is None:
                return f"{line}; the time left is estimated once a {groups[-1]} run has finished"
            expected += sum(self.walls[group]) / len(self.walls[group])
        return f"{line}; about {fmt_seconds(expected)} left"
