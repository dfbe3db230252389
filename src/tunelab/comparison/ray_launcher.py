"""``tunelab compare --launcher ray``: each run of a comparison is a Ray task on an existing cluster (or on a local
Ray instance), asking for its GPUs or CPUs; Ray places it. The task runs the same worker subprocess a local run
does (``processes.run_worker``) on the node it lands on, and the driver turns its end into the same record
(``processes.outcome``).

The runs' outputs end up in the comparison directory either way:

- where the node sees the comparison directory (this machine, or a shared file system), the worker writes there;
- elsewhere it runs in a scratch directory on the node, with the comparison's own inputs shipped to it (the
  prepared data under data/, the base model's eval_results.json), and the run directory comes back through Ray as
  an archive that is unpacked in place.

What lies outside the comparison directory (a local model folder, the recipe's data files, --data_dir) must exist
at the same path on every node; Hub ids and the built-in models are fetched by each node. A task that fails or is
lost (its worker process or node died) is recorded as failed, and the others go on. Tasks are not retried by Ray:
``--retry_failed`` re-runs them, as for local runs.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

from tunelab.comparison.processes import PlannedRun, doing, failed, outcome, run_worker, title
from tunelab.records import ComparisonRecord
from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_text

log = logging.getLogger(__name__)

TOKEN_FILE = ".ray_token"  # in the comparison directory: a node that can read it sees the directory itself
SHIP_DIRS = ("data", "runs/base/eval")  # the comparison's own inputs of a run (a run dir never reads another's)
TEXT_SUFFIXES = {".json", ".jsonl", ".yaml", ".yml", ".txt", ".md"}


def import_ray():
    try:
        import ray
    except ImportError:
        raise TunelabError("--launcher ray needs the ray package, which is not installed: pip install "
                           "'tunelab[ray]' (on every node of the cluster too), or use --launcher local") from None
    return ray


# --- what travels: files in, a run directory back ------------------------------------------------------------------

def collect_inputs(out: Path, include_base: bool) -> dict[str, bytes]:
    """The files under the comparison directory that a run reads, by path relative to it."""
    files: dict[str, bytes] = {}
    for sub in SHIP_DIRS:
        if sub.startswith("runs/base") and not include_base:
            continue
        root = out / sub
        if root.is_dir():
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    files[path.relative_to(out).as_posix()] = path.read_bytes()
    return files


def relocate(run: PlannedRun, old: Path, new: Path) -> PlannedRun:
    """The same run with every path under the comparison directory ``old`` moved under ``new``."""
    import json

    def move(text: str) -> str:
        # Quoted as JSON strings quote them, with the separator: /a/cmp never matches /a/cmp2.
        return text.replace(json.dumps(str(old) + os.sep)[1:-1], json.dumps(str(new) + os.sep)[1:-1])

    spec = json.loads(move(json.dumps(run.spec)))
    return PlannedRun(run.key, run.label, run.method, run.seed, Path(move(str(run.run_dir))), spec)


def pack(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(directory, arcname=".")
    return buf.getvalue()


def unpack(archive: bytes, directory: Path, *, old: Path, new: Path) -> None:
    """Unpack a run directory that ran under ``old`` (a node's scratch directory) into ``directory``, its paths
    in text files (results, configs, logs) rewritten to ``new`` (the comparison directory)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        tar.extractall(directory, filter="data")  # (no links out, no absolute paths)
    before, after = str(old) + os.sep, str(new) + os.sep
    for path in directory.rglob("*"):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            if before in text:
                path.write_text(text.replace(before, after), encoding="utf-8", errors="surrogateescape")


# --- the task ---------------------------------------------------------------------------------------------------

def run_on_node(run: PlannedRun, out: str, token: str, inputs: dict[str, bytes], timeout: float | None,
                env: dict[str, str], driver_cwd: str) -> dict[str, Any]:
    """The body of a Ray task: run the planned run's worker on this node. Returns its exit status (None: timed
    out), its wall time, the node, and where the comparison directory is not visible here, the run directory."""
    comparison = Path(out)
    # A recipe's relative paths mean the driver's working directory, where this node has it.
    cwd = driver_cwd if Path(driver_cwd).is_dir() else None
    host = socket.gethostname()
    token_path = comparison / TOKEN_FILE
    started = time.perf_counter()
    if token_path.is_file() and token_path.read_text(encoding="utf-8").strip() == token:
        code = run_worker(run, timeout=timeout, env=env, echo=False, cwd=cwd)
        return {"code": code, "wall_seconds": time.perf_counter() - started, "node": host}
    scratch = Path(tempfile.mkdtemp(prefix="tunelab-ray-"))
    try:
        for rel, data in inputs.items():
            (scratch / rel).parent.mkdir(parents=True, exist_ok=True)
            (scratch / rel).write_bytes(data)
        moved = relocate(run, comparison, scratch)
        code = run_worker(moved, timeout=timeout, env=env, echo=False, cwd=cwd)
        return {"code": code, "wall_seconds": time.perf_counter() - started, "node": host,
                "scratch": str(scratch), "archive": pack(moved.run_dir)}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the launcher -------------------------------------------------------------------------------------------------

class RayLauncher:
    def __init__(self, out, *, address: str | None, num_cpus: int = 1, num_gpus: int | None = None,
                 parallel: int | None = None, device: str = "auto"):
        self.ray = import_ray()
        if parallel is not None and parallel < 1:
            raise TunelabError(f"--parallel {parallel}: must be at least 1 (runs at once)")
        if num_cpus < 1:
            raise TunelabError(f"--ray_num_cpus {num_cpus}: must be at least 1")
        if num_gpus is not None and num_gpus < 0:
            raise TunelabError(f"--ray_num_gpus {num_gpus}: must be 0 or more")
        self.out = Path(out).resolve()
        self.parallel, self.num_cpus = parallel, num_cpus
        self.owned = False
        ray = self.ray
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:  # a local instance of our own, shut down at the end
                    ray.init(address="local", include_dashboard=False, log_to_driver=False)
                    self.owned = True
            except (ConnectionError, ValueError, RuntimeError) as e:
                raise TunelabError(f"--ray_address {address}: cannot connect to a Ray cluster there "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__}); start one with "
                                   "`ray start --head` or pass its address (ray://HOST:10001, HOST:6379 or auto)") \
                    from None
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        if num_gpus is None:
            num_gpus = 1 if cluster_gpus and device != "cpu" else 0
        if num_gpus > cluster_gpus:
            self.close()
            raise TunelabError(f"--ray_num_gpus {num_gpus}: the Ray cluster has {cluster_gpus:g} GPU(s); each run "
                               "would wait for ever; pass --ray_num_gpus 0 (CPU runs) or fewer")
        if device == "cuda" and num_gpus == 0:
            self.close()
            raise TunelabError("--device cuda with --launcher ray: the cluster has no GPUs to give the runs; use "
                               "--device cpu or auto")
        self.num_gpus = num_gpus
        # The child's environment: a CPU run must not touch a GPU it did not ask for (Ray leaves
        # CUDA_VISIBLE_DEVICES alone for tasks without GPUs), and uses as many threads as CPUs it asked for.
        self.env = {"OMP_NUM_THREADS": str(num_cpus), "MKL_NUM_THREADS": str(num_cpus)}
        if num_gpus == 0:
            self.env["CUDA_VISIBLE_DEVICES"] = ""
        self.token = uuid.uuid4().hex
        self.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.out / TOKEN_FILE, self.token + "\n")
        self.task = ray.remote(run_on_node).options(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0)
        log.info("Ray cluster: %s CPUs, %g GPUs; each run asks for %d CPU(s) and %d GPU(s)",
                 ray.cluster_resources().get("CPU", 0), cluster_gpus, num_cpus, num_gpus)

    def devices(self, device: str) -> tuple[str, bool | None]:
        """The runs train where Ray puts them, not here: on a GPU when they ask for one (bf16 where that GPU does
        it, asked of one), else on the CPU."""
        if self.num_gpus == 0:
            return "cpu", None

        def bf16() -> bool:
            import torch

            return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())

        probe = self.ray.remote(bf16).options(num_gpus=self.num_gpus, num_cpus=1, max_retries=0)
        return "cuda", bool(self.ray.get(probe.remote()))

    def run(self, runs: list[PlannedRun], *, timeout: float | None = None) -> Iterator[tuple[PlannedRun, dict]]:
        ray = self.ray
        include_base = not any(r.method == "base" for r in runs)
        inputs = ray.put(collect_inputs(self.out, include_base))  # once, shared by every task
        queue = list(runs)
        pending: dict[Any, tuple[PlannedRun, float]] = {}
        limit = self.parallel or len(queue)
        try:
            while queue or pending:
                while queue and len(pending) < limit:
                    run = queue.pop(0)
                    self._prepare(run)
                    ref = self.task.remote(run, str(self.out), self.token, inputs, timeout, self.env, os.getcwd())
                    pending[ref] = (run, time.perf_counter())
                    log.info("%s: submitted to Ray (%s)", title(run), doing(run))
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    run, submitted = pending.pop(ref)
                    yield run, self._record(run, ref, time.perf_counter() - submitted, timeout)
        except BaseException:  # Ctrl-C or the runner stopped: the tasks kill their workers (KeyboardInterrupt)
            for ref in pending:
                ray.cancel(ref)
            raise

    def _prepare(self, run: PlannedRun) -> None:
        """The run directory as a local run leaves it at its start (a lost task leaves no stale outputs)."""
        if run.run_dir.exists():
            shutil.rmtree(run.run_dir)
        run.run_dir.mkdir(parents=True)

    def _record(self, run: PlannedRun, ref, waited: float, timeout: float | None) -> ComparisonRecord:
        ray = self.ray
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:  # the task raised, or its worker process or node was lost
            cause = getattr(e, "cause", None) or e
            first = (str(cause).strip().splitlines() or [""])[0]
            return failed(run, waited, f"Ray task lost or failed: {type(cause).__name__}: {first}"[:500])
        if "archive" in result:
            unpack(result["archive"], run.run_dir, old=Path(result["scratch"]), new=self.out)
        record = outcome(run, result["code"], result["wall_seconds"], timeout=timeout)
        record.node = result["node"]
        return record

    def close(self) -> None:
        (self.out / TOKEN_FILE).unlink(missing_ok=True)
        if self.owned and self.ray.is_initialized():
            self.ray.shutdown()
            self.owned = False
