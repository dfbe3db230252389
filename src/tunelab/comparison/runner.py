"""Run a comparison: the base model evaluated once, then every method x seed trained and evaluated in a
subprocess of its own. Each finished run is recorded in results.jsonl at once; a re-run skips what is done."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tunelab.comparison.data import prepare_data
from tunelab.comparison.recipe import MethodEntry, Recipe
from tunelab.comparison.results import ResultsFile
from tunelab.comparison.worker import ERROR_FILE, RESULT_FILE
from tunelab.errors import TunelabError
from tunelab.evaluation.probes import default_data_dir
from tunelab.fileio import atomic_write_json, atomic_write_text
from tunelab.methods import get_method
from tunelab.options import to_dict

log = logging.getLogger(__name__)


@dataclass
class PlannedRun:
    key: str
    label: str
    method: str
    seed: int | None
    run_dir: Path
    spec: dict[str, Any]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def plan(recipe: Recipe, out: Path, *, data_dir: Path | None, device: str,
         gpu_bf16: bool | None = None) -> list[PlannedRun]:
    """Every run of the comparison (the base first), with the options its subprocess will use. ``gpu_bf16``: the
    runs' GPUs are on other machines and do (not) support bf16 (see recipe._device_options)."""
    data = prepare_data(recipe, out, data_dir)
    runs = []
    base_dir = out / "runs" / "base"
    base_eval = recipe.eval_options(eval_file=data.eval, output_dir=str(base_dir / "eval"), model=recipe.model,
                                    adapter=None, baseline=None, data_dir=str(data_dir) if data_dir else None,
                                    sql_database=data.sql_database, device=device)
    runs.append(PlannedRun(recipe.base_key(), "base", "base", None, base_dir,
                           {"kind": "base", "run_dir": str(base_dir), "eval_options": to_dict(base_eval)}))
    baseline = str(base_dir / "eval" / "eval_results.json")
    for entry in recipe.methods:
        for seed in recipe.seeds:
            key = recipe.run_key(entry, seed)
            run_dir = out / "runs" / f"{_slug(entry.label)}-seed{seed}-{key[:8]}"
            topts = recipe.train_options(entry, seed, train_file=data.train, output_dir=str(run_dir / "model"),
                                         device=device, gpu_bf16=gpu_bf16)
            eopts = recipe.eval_options(eval_file=data.eval, output_dir=str(run_dir / "eval"), model=recipe.model,
                                        adapter=None, baseline=baseline,
                                        data_dir=str(data_dir) if data_dir else None,
                                        sql_database=data.sql_database, device=device)
            explicit = sorted(set(entry.overrides) | {"method"})
            runs.append(PlannedRun(key, entry.label, entry.method, seed, run_dir,
                                   {"kind": "run", "run_dir": str(run_dir), "train_options": to_dict(topts),
                                    "eval_options": to_dict(eopts), "explicit": explicit}))
    return runs


def _record(run: PlannedRun, status: str, wall: float, result: dict[str, Any] | None,
            error: str | None) -> dict[str, Any]:
    rec: dict[str, Any] = {"key": run.key, "label": run.label, "method": run.method, "seed": run.seed,
                           "status": status, "error": error, "wall_seconds": wall, "run_dir": str(run.run_dir)}
    if not result:
        return rec
    tr = result.get("train_results") or {}
    ev = result.get("eval_results") or {}
    for key in ("trainable_params", "total_params", "trainable_percent", "train_seconds", "train_tokens",
                "train_tokens_per_second", "peak_memory_bytes", "peak_memory_kind", "checkpoint_bytes",
                "final_train_loss", "final_eval_loss", "loss_curve", "global_step", "effective_batch_size",
                "device", "device_name"):
        if key in tr:
            rec[key] = tr[key]
    if run.method == "base":
        rec.update(trainable_params=0, trainable_percent=0.0, train_seconds=0.0, checkpoint_bytes=0)
    rec["peft"] = tr.get("peft", False)
    rec["task"] = ev.get("task")
    rec["task_metrics"] = ev.get("metrics")
    rec["headline_metric"] = ev.get("headline_metric")
    if ev.get("task_note"):  # why the task metrics are missing (an untrained head)
        rec["task_note"] = ev["task_note"]
    if ev.get("headline_metric"):
        rec["headline_value"] = ev["metrics"][ev["headline_metric"]]
        rec["headline_ci"] = (ev.get("confidence_intervals") or {}).get(ev["headline_metric"])
    rec["retention"] = ev.get("retention") or {}
    rec["generation"] = ev.get("generation")
    rec["inference"] = result.get("inference")
    rec["eval_dir"] = result.get("eval_dir")
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


def outcome(run: PlannedRun, code: int | None, wall: float, *, timeout: float | None = None) -> dict[str, Any]:
    """The results record of a run whose worker has ended with ``code`` (None: stopped at ``timeout``), read from
    what the worker left in the run directory."""
    if code is None:
        return _record(run, "failed", wall, None, f"timed out after {timeout:.0f}s")
    result_path, error_path = run.run_dir / RESULT_FILE, run.run_dir / ERROR_FILE
    if code == 0 and result_path.is_file():
        return _record(run, "ok", wall, json.loads(result_path.read_text(encoding="utf-8")), None)
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
    return _record(run, "failed", wall, None, error)


def execute(run: PlannedRun, *, timeout: float | None = None, env: dict[str, str] | None = None,
            echo: bool = True) -> dict[str, Any]:
    """Run one planned run in a subprocess and turn its outcome (or failure) into a results record."""
    started = time.perf_counter()
    code = run_worker(run, timeout=timeout, env=env, echo=echo)
    return outcome(run, code, time.perf_counter() - started, timeout=timeout)


@dataclass
class ComparisonOutcome:
    output_dir: Path
    records: list[dict[str, Any]]
    ran: list[str]
    skipped: list[str]
    report_html: Path | None
    report_md: Path | None


def run_comparison(recipe: Recipe, out: Path, *, data_dir: str | None = None, device: str = "auto",
                   force: bool = False, retry_failed: bool = False, run_timeout: float | None = None,
                   report: bool = True, parallel: int | None = None, launcher: str = "local",
                   ray_address: str | None = None, ray_num_cpus: int = 1,
                   ray_num_gpus: int | None = None) -> ComparisonOutcome:
    """Every run not finished yet, the base first (every run reads its evaluation), then the methods: one at a
    time, ``parallel`` at once on this machine, or as Ray tasks (``launcher="ray"``); see launchers.py."""
    from tunelab.comparison.launchers import make_launcher
    from tunelab.comparison.report import write_report

    out = Path(out)
    if launcher == "ray":
        out = out.resolve()  # the runs' paths are read on other machines, from other working directories
    resolved_data_dir = default_data_dir(data_dir)
    for entry in recipe.methods:  # impossible entries fail per run; unknown options fail here, before any work
        get_method(entry.method)
    # (impossible --parallel / --launcher settings fail here too, before the directory is made)
    launch = make_launcher(launcher, parallel=parallel, device=device, out=out, ray_address=ray_address,
                           ray_num_cpus=ray_num_cpus, ray_num_gpus=ray_num_gpus)
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "recipe.yaml", recipe.to_yaml())
        run_device, gpu_bf16 = launch.devices(device)
        runs = plan(recipe, out, data_dir=resolved_data_dir, device=run_device, gpu_bf16=gpu_bf16)
        results = ResultsFile(out)
        done = results.by_key()
        ran, skipped, todo = [], [], []
        for run in runs:
            previous = done.get(run.key)
            finished = previous is not None and (previous["status"] == "ok" or not retry_failed)
            if finished and not force:
                skipped.append(run.label)
                log.info("%s%s: already done (%s), skipped", run.label,
                         f" seed {run.seed}" if run.seed is not None else "", previous["status"])
            else:
                todo.append(run)
        base = [r for r in todo if r.method == "base"]
        for batch in (base, [r for r in todo if r.method != "base"]):
            # Each record is written the moment its run ends, so an interrupted comparison keeps every finished run.
            for run, record in launch.run(batch, timeout=run_timeout):
                results.put(record)
                ran.append(run.label)
                if record["status"] != "ok":
                    log.warning("%s failed: %s (recorded; the comparison goes on)", run.label, record["error"])
                if run.method == "base" and record["status"] != "ok":
                    raise TunelabError(f"the base model's evaluation failed ({record['error']}); every run depends "
                                       f"on it; see {run.run_dir / 'log.txt'}")
    finally:
        launch.close()
    wanted = {r.key for r in runs}
    records = [r for r in results.records() if r["key"] in wanted]
    html = md = None
    if report:
        html, md = write_report(out, records=records, recipe=recipe)
    return ComparisonOutcome(out, records, ran, skipped, html, md)


def planned_summary(runs: list[PlannedRun]) -> list[dict[str, Any]]:
    return [{k: v for k, v in asdict(r).items() if k != "spec"} for r in runs]
