"""How a comparison's run executes: one worker subprocess (``python -m tunelab.comparison.worker SPEC.json``) per
planned run, its output copied to the run's log (and the console), and its end turned into a results record. Every
launcher (launchers.py, ray_launcher.py) runs runs through these functions; the runner plans them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.fileio import atomic_write_json
from tunelab import run_files
from tunelab.records import TRAIN_FIELDS_IN_COMPARISON, ComparisonRecord, EvalRecord, TrainRecord


@dataclass
class PlannedRun:
    key: str
    label: str
    method: str
    seed: int | None
    run_dir: Path
    spec: dict[str, Any]


def title(run: PlannedRun) -> str:
    return run.label + (f" seed {run.seed}" if run.seed is not None else "")


def doing(run: PlannedRun) -> str:
    if run.spec.get("kind") == "trial":  # comparison/search.py
        return f"learning-rate search, trial {run.spec['search']['trial_number']}"
    return "evaluating the base model" if run.method == "base" else "training and evaluating"


def record(run: PlannedRun, status: str, wall: float, result: dict[str, Any] | None,
           error: str | None) -> ComparisonRecord:
    """The results.jsonl record of a run: what its worker's run_result.json holds (``result``), or why it failed."""
    rec = ComparisonRecord(key=run.key, label=run.label, method=run.method, seed=run.seed, status=status,
                           error=error, wall_seconds=wall, run_dir=str(run.run_dir))
    if not result or result.get("kind") == "trial":  # a search trial's result is the search's to read (search.py)
        return rec
    where = run.run_dir / run_files.WORKER_RESULT
    tr = TrainRecord.from_json(result["train_results"], source=where) if result.get("train_results") else None
    ev = EvalRecord.from_json(result["eval_results"], source=where) if result.get("eval_results") else None
    if tr is not None:
        for name in TRAIN_FIELDS_IN_COMPARISON:
            setattr(rec, name, getattr(tr, name))
    if run.method == "base":
        rec.trainable_params, rec.trainable_percent, rec.train_seconds, rec.checkpoint_bytes = 0, 0.0, 0.0, 0
    rec.peft = tr.peft if tr is not None else False
    if ev is not None:
        rec.task, rec.task_metrics, rec.headline_metric = ev.task, ev.metrics, ev.headline_metric
        rec.task_note = ev.task_note or None  # why the task metrics are missing (an untrained head)
        rec.invalid_rows_skipped = ev.invalid_rows_skipped or None  # evaluation rows left out (--skip_invalid_rows)
        if ev.headline_metric:
            rec.headline_value, rec.headline_ci = ev.headline_value, ev.headline_ci
        rec.retention, rec.generation = ev.retention or {}, ev.generation
    else:
        rec.retention = {}
    rec.inference = result.get("inference")
    rec.eval_dir = result.get("eval_dir")
    rec.timings = result.get("timings")  # seconds per phase of the run (bench/compare_overhead.py)
    if tr is not None:  # recipe curve_points (comparison/trajectories.py)
        rec.curves, rec.tracking = tr.curves, tr.tracking
    rec.trajectory = result.get("trajectory")
    rec.weight_diagnostics = result.get("weight_diagnostics")  # recipe diagnostics (comparison/weights.py)
    return rec


class _Child:
    """A worker subprocess whose output goes to the run's log file, and to the console when ``echo`` (one run at a
    time; several runs' progress bars at once would be unreadable)."""

    def __init__(self, spec_path: Path, log_path: Path, env: dict[str, str], *, echo: bool = True,
                 cwd: str | None = None):
        self.echo = echo
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "tunelab.comparison.worker", str(spec_path)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                     start_new_session=True)
        assert self.proc.stdout is not None
        os.set_blocking(self.proc.stdout.fileno(), False)

    def pump(self) -> int | None:
        """Copy what the worker wrote since the last call; its exit status once it has ended, else None."""
        assert self.proc.stdout is not None
        chunk = self.proc.stdout.read(65536)
        if chunk:
            self._echo(chunk)
            return None
        if self.proc.poll() is None:
            return None
        rest = self.proc.stdout.read()
        if rest:
            self._echo(rest)
        self.log.close()
        return self.proc.returncode

    def wait(self, timeout: float | None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.pump()) is None:
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise TimeoutError
            time.sleep(0.05)
        return code

    def _echo(self, chunk: bytes) -> None:
        self.log.write(chunk)
        if self.echo:
            # Text, not sys.stderr.buffer: in a notebook stderr is a kernel stream without a byte buffer.
            sys.stderr.write(chunk.decode("utf-8", errors="replace"))
            sys.stderr.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
        if not self.log.closed:
            self.log.close()


def start(run: PlannedRun, *, env: dict[str, str] | None = None, echo: bool = True,
          cwd: str | None = None) -> _Child:
    """Start one planned run's worker: its directory cleaned, its spec written. ``env`` adds to the environment
    (the device a launcher pinned the run to: CUDA_VISIBLE_DEVICES, OMP_NUM_THREADS); ``cwd``: where a recipe's
    relative paths are read from (this process's working directory by default)."""
    if run.run_dir.exists():  # a half-written run from an interrupted comparison: start it clean
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True)
    spec_path = atomic_write_json(run.run_dir / "spec.json", run.spec)
    # The run's own config dump and info lines go to its log file; the console keeps warnings and progress bars.
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="5",
                     TUNELAB_LOG_LEVEL=os.environ.get("TUNELAB_RUN_LOG_LEVEL", "WARNING"), **(env or {}))
    return _Child(spec_path, run.run_dir / "log.txt", child_env, echo=echo, cwd=cwd)


def run_worker(run: PlannedRun, *, timeout: float | None = None, env: dict[str, str] | None = None,
               echo: bool = True, cwd: str | None = None) -> int | None:
    """Run one planned run's worker to its end: its exit status, or None when it ran past ``timeout`` and was
    stopped. (The Ray launcher calls this on the node a run was sent to.)"""
    child = start(run, env=env, echo=echo, cwd=cwd)
    try:
        return child.wait(timeout)
    except TimeoutError:
        return None
    except BaseException:
        child.kill()
        raise


def outcome(run: PlannedRun, code: int | None, wall: float, *, timeout: float | None = None) -> ComparisonRecord:
    """The results record of a run whose worker has ended with ``code`` (None: stopped at ``timeout``), read from
    what the worker left in the run directory."""
    if code is None:
        return record(run, "failed", wall, None, f"timed out after {timeout:.0f}s")
    result_path, error_path = run.run_dir / run_files.WORKER_RESULT, run.run_dir / run_files.WORKER_ERROR
    if code == 0 and result_path.is_file():
        return record(run, "ok", wall, json.loads(result_path.read_text(encoding="utf-8")), None)
    if error_path.is_file():
        error = json.loads(error_path.read_text(encoding="utf-8"))["error"]
    elif code < 0:
        name = signal.Signals(-code).name
        error = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        log_path = run.run_dir / "log.txt"
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines() \
            if log_path.is_file() else []
        error = tail[-1] if tail else f"exit code {code}"
    return record(run, "failed", wall, None, error)


def execute(run: PlannedRun, *, timeout: float | None = None, env: dict[str, str] | None = None,
            echo: bool = True) -> ComparisonRecord:
    """Run one planned run in a subprocess and turn its outcome (or failure) into a results record."""
    started = time.perf_counter()
    code = run_worker(run, timeout=timeout, env=env, echo=echo)
    return outcome(run, code, time.perf_counter() - started, timeout=timeout)


def failed(run: PlannedRun, wall: float, error: str) -> ComparisonRecord:
    """The record of a run that failed before its worker could say why (a lost Ray task)."""
    return record(run, "failed", wall, None, error)
