"""Where a comparison's runs execute. Every launcher runs the same thing, the planned run's worker
(``processes.start`` / ``processes.run_worker``), and turns its end into a record with ``processes.outcome``; they
differ only in how many run at once and where:

- ``LocalLauncher(1)``: one after another on this machine, the worker's output on the console (the default);
- ``LocalLauncher(N)``: up to N at once on this machine, each pinned to a GPU of its own through
  CUDA_VISIBLE_DEVICES, or on the CPU to its share of the cores (OMP_NUM_THREADS);
- ``RayLauncher`` (comparison/ray_launcher.py): each run a Ray task on a cluster.

``run(runs)`` yields ``(run, record)`` as runs finish, so that the runner records each at once (an interrupted
comparison keeps what finished, whatever the order).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Iterator

from tunelab.comparison.processes import PlannedRun, doing, execute, outcome, start, title
from tunelab import contention
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)


def visible_gpus() -> list[str]:
    """The CUDA devices runs may use, as CUDA_VISIBLE_DEVICES names them (it may already narrow this process's)."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d.strip() for d in given.split(",") if d.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def slot_envs(parallel: int, device: str) -> list[dict[str, str]]:
    """What each of ``parallel`` concurrent runs adds to its environment. One run at a time changes nothing."""
    if parallel < 1:
        raise TunelabError(f"--parallel {parallel}: must be at least 1 (runs at once)")
    if parallel == 1:
        return [{}]
    gpus = visible_gpus() if device != "cpu" else []
    if gpus:
        # One GPU per run, never several: a run on k GPUs in one process would train with DataParallel, i.e. a
        # k times larger batch than the same recipe on one GPU, and the comparison's budget would not be shared.
        if parallel > len(gpus):
            raise TunelabError(f"--parallel {parallel}: each run gets a GPU of its own and {len(gpus)} are visible "
                               f"(CUDA_VISIBLE_DEVICES={','.join(gpus)}); pass --parallel {len(gpus)} or fewer, or "
                               "--device cpu")
        return [{"CUDA_VISIBLE_DEVICES": g} for g in gpus[:parallel]]
    # On the CPU the runs share the cores; each gets its share so that N runs do not fight over every core.
    threads = str(max(1, contention.usable_cores() // parallel))
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "CUDA_VISIBLE_DEVICES": ""}
            for _ in range(parallel)]


def _where(env: dict[str, str]) -> str:
    if env.get("CUDA_VISIBLE_DEVICES"):
        return f"GPU {env['CUDA_VISIBLE_DEVICES']}"
    return f"{env['OMP_NUM_THREADS']} CPU thread(s)" if "OMP_NUM_THREADS" in env else "this machine"


class LocalLauncher:
    def __init__(self, parallel: int = 1, device: str = "auto"):
        self.slots = slot_envs(parallel, device)

    def devices(self, device: str) -> tuple[str, bool | None]:
        """The device the runs are planned for, and (where the GPUs are elsewhere) whether they do bf16."""
        return device, None

    def run(self, runs: list[PlannedRun], *, timeout: float | None = None) -> Iterator[tuple[PlannedRun, dict]]:
        if len(self.slots) == 1:
            for run in runs:
                log.info("%s: %s", title(run), doing(run))
                yield run, execute(run, timeout=timeout, env=self.slots[0])
            return
        queue, free = list(runs), list(range(len(self.slots)))
        running: dict[int, tuple[PlannedRun, Any, float]] = {}
        try:
            while queue or running:
                while queue and free:
                    slot, run = free.pop(0), queue.pop(0)
                    log.info("%s: %s on %s (log: %s)", title(run), doing(run), _where(self.slots[slot]),
                             run.run_dir / "log.txt")
                    running[slot] = (run, start(run, env=self.slots[slot], echo=False), time.perf_counter())
                for slot, (run, child, started) in list(running.items()):
                    code = child.pump()
                    wall = time.perf_counter() - started
                    if code is None:
                        if timeout is None or wall <= timeout:
                            continue
                        child.kill()  # past --run_timeout: recorded as timed out (code None)
                    del running[slot]
                    free.append(slot)
                    yield run, outcome(run, code, wall, timeout=timeout)
                time.sleep(0.05)
        except BaseException:  # Ctrl-C, or the runner stopped (a failed base): no worker outlives the comparison
            for _, child, _ in running.values():
                child.kill()
            raise

    def close(self) -> None:
        pass


def make_launcher(launcher: str, *, parallel: int | None, device: str, out, ray_address: str | None = None,
                  ray_num_cpus: int = 1, ray_num_gpus: int | None = None):
    if launcher == "local":
        for flag, value in (("ray_address", ray_address), ("ray_num_gpus", ray_num_gpus)):
            if value is not None:
                raise TunelabError(f"--{flag} is read only with --launcher ray; add --launcher ray or drop it")
        return LocalLauncher(1 if parallel is None else parallel, device)
    if launcher == "ray":
        from tunelab.comparison.ray_launcher import RayLauncher

        return RayLauncher(out, address=ray_address, num_cpus=ray_num_cpus, num_gpus=ray_num_gpus,
                           parallel=parallel, device=device)
    raise TunelabError(f"--launcher {launcher}: choose local or ray")
