"""A comparison's progress on the console: after each run, which of how many are done and about how long the rest
will take (as a progress bar's ETA would say it, one line per run: the runs' own progress bars fill the console)."""

from __future__ import annotations

from collections import Counter, defaultdict

from tunelab.comparison.processes import PlannedRun
from tunelab.comparison.rows import fmt_seconds


def _kind(run: PlannedRun) -> str:
    # The base is only evaluated; every method run also trains: their times differ several-fold.
    return "base" if run.method == "base" else "training"


class Progress:
    """``k of n runs done; about T left``: each run still to do is expected to take the mean wall time of the
    finished runs of its kind (base or training); until a run of every kind left has finished, the time left is
    not guessed."""

    def __init__(self, runs: list[PlannedRun]):
        self.total = len(runs)
        self.left = Counter(_kind(run) for run in runs)
        self.walls: dict[str, list[float]] = defaultdict(list)

    def finished(self, run: PlannedRun, wall: float) -> str:
        kind = _kind(run)
        self.left[kind] -= 1
        self.walls[kind].append(wall)
        done = self.total - sum(self.left.values())
        line = f"{done} of {self.total} runs done"
        if done == self.total:
            return line
        unmeasured = [k for k, n in self.left.items() if n and not self.walls[k]]
        if unmeasured:
            return f"{line}; the time left is estimated once a {unmeasured[0]} run has finished"
        left = sum(sum(self.walls[k]) / len(self.walls[k]) * n for k, n in self.left.items() if n)
        return f"{line}; about {fmt_seconds(left)} left"
