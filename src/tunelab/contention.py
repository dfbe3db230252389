"""Whether a CPU run had its cores to itself, measured rather than assumed.

A training time measures a method only when nothing else ran on the machine: on 2 cores, one process spinning
beside `tunelab train` made its training 2.9x as long, far more than a fair share of the cores would cost (torch's
threads presumably wait for each other at every operation; ``python bench/contention.py``). Linux counts, for every
thread, the time it was ready to run but waited for a core (``/proc/self/task/*/schedstat``, its second field);
that wait, as a share of the time the threads were runnable, was under 1% alone and 37% beside the spinning
process in that benchmark. Training warns, and the report marks a time, whose threads waited more than
:data:`BUSY_WAIT_SHARE`; the report compares no time with a marked one.
"""

from __future__ import annotations

import os
from pathlib import Path

# the share of their runnable time a run's threads may wait for a core before its time is called a busy machine's
BUSY_WAIT_SHARE = 0.05

Snapshot = dict[str, tuple[int, int]]  # thread id -> (ns on a core, ns waiting for one)


def snapshot() -> Snapshot | None:
    """Every thread of this process: nanoseconds run and waited so far; None where the OS does not say (not Linux,
    or a kernel without scheduler statistics)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return None
    times: Snapshot = {}
    for tid in os.listdir(tasks):
        try:
            ran, waited, _ = (tasks / tid / "schedstat").read_text().split()
        except (OSError, ValueError):  # a thread that ended meanwhile; a kernel without the file
            continue
        times[tid] = (int(ran), int(waited))
    return times or None


def wait_share(before: Snapshot | None, after: Snapshot | None) -> float | None:
    """The share of its threads' runnable time this process spent waiting for a core between two snapshots
    (threads started in between count from 0; threads that ended are lost, as a pool's threads do not end)."""
    if before is None or after is None:
        return None
    ran = waited = 0
    for tid, (run_ns, wait_ns) in after.items():
        ran0, waited0 = before.get(tid, (0, 0))
        ran, waited = ran + run_ns - ran0, waited + wait_ns - waited0
    return waited / (ran + waited) if ran + waited > 0 else None


def busy(share: float | None) -> bool:
    return share is not None and share > BUSY_WAIT_SHARE


def describe(share: float) -> str:
    return (f"its threads waited for a core {100 * share:.0f}% of the time they were ready to run (tunelab calls a "
            f"machine busy above {100 * BUSY_WAIT_SHARE:.0f}%)")


def cause() -> str:
    """Why this process's threads waited: more compute threads than the cores it may use, or other work."""
    import torch

    threads, cores = torch.get_num_threads(), usable_cores()
    if threads > cores:
        return (f"this process runs {threads} torch threads on {cores} core{'s' if cores != 1 else ''} (set "
                f"OMP_NUM_THREADS={cores} or fewer)")
    return "other work ran on this machine"


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on Linux)
        return os.cpu_count() or 1
