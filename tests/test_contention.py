"""tunelab.contention: how long a run's threads waited for a core, from the kernel's per-thread counters."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tunelab import contention


def test_the_wait_share_counts_every_thread_and_new_ones_from_zero():
    before = {"1": (100, 0), "2": (50, 10)}
    after = {"1": (300, 0), "2": (150, 110), "3": (40, 60)}  # thread 3 started in between
    # ran 200 + 100 + 40, waited 0 + 100 + 60
    assert contention.wait_share(before, after) == pytest.approx(160 / 500)
    assert contention.wait_share(None, after) is None and contention.wait_share(before, before) is None
    assert contention.busy(0.06) and not contention.busy(0.04) and not contention.busy(None)


@pytest.mark.skipif(contention.snapshot() is None, reason="the OS gives no per-thread scheduler statistics")
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity to share one core")
def test_a_thread_sharing_its_core_with_a_busy_process_is_measured_waiting():
    """Two busy processes on one core: the scheduler gives each about half of it, so this one waits about half of
    the time it is ready to run (on an idle core it would wait about 0)."""
    core = min(os.sched_getaffinity(0))
    mine = os.sched_getaffinity(0)
    spin = f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"
    neighbour = subprocess.Popen([sys.executable, "-c", spin])
    try:
        os.sched_setaffinity(0, {core})
        time.sleep(0.3)  # the neighbour is running
        before = contention.snapshot()
        spent = time.process_time()
        while time.process_time() - spent < 0.5:
            pass
        share = contention.wait_share(before, contention.snapshot())
    finally:
        os.sched_setaffinity(0, mine)
        neighbour.kill()
        neighbour.wait()
    assert share is not None and share > 0.2 and contention.busy(share)


def test_the_warning_names_too_many_threads_before_other_work():
    import torch

    before = torch.get_num_threads()
    cores = contention.usable_cores()
    try:
        torch.set_num_threads(cores + 2)
        assert f"runs {cores + 2} torch threads on {cores} core" in contention.cause()
        assert f"OMP_NUM_THREADS={cores}" in contention.cause()
        torch.set_num_threads(cores)
        assert contention.cause() == "other work ran on this machine"
    finally:
        torch.set_num_threads(before)
