"""`tunelab compare --launcher ray` against a running Ray instance (two CPUs, started here): the runs are Ray tasks,
their records equal a local comparison's, a lost task is recorded as failed. Skipped only where ray is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.comparison.results import ResultsFile

from test_compare_parallel import assert_same_as_sequential

ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'tunelab[ray]' (make install does)")

pytestmark = pytest.mark.xdist_group("compare")  # reads the session's shared comparison


@pytest.fixture(scope="module")
def ray_address():
    """A small local Ray instance: 2 CPUs, no dashboard, a 100 MiB object store; shut down after."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 2**20, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def test_ray_launcher_completes_two_methods(comparison, ray_address, tmp_path):
    sequential, _ = comparison
    recipe = sequential.parent / "recipe.yaml"
    out = tmp_path / "ray"
    # The base evaluation is taken over from the finished comparison (the resume path: a run recorded ok is not
    # run again), so that Ray runs the two methods.
    shutil.copytree(sequential / "runs" / "base", out / "runs" / "base")
    base = next(r for r in ResultsFile(sequential).records() if r["label"] == "base")
    ResultsFile(out).put(base)
    cmd = [sys.executable, "-m", "tunelab", "compare", str(recipe), "--output_dir", str(out), "--device", "cpu",
           "--methods", "lora,ia3", "--launcher", "ray", "--ray_address", ray_address]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ran 2 run(s), skipped 1 already finished" in done.stdout
    assert "submitted to Ray" in done.stderr
    assert_same_as_sequential(out, sequential, {"base", "lora", "ia3"})
    records = {r["label"]: r for r in ResultsFile(out).records()}
    for label in ("lora", "ia3"):
        assert records[label]["node"], "the record says which node ran it"
        run_dir = Path(records[label]["run_dir"])
        assert (run_dir / "model" / "adapter_model.safetensors").is_file()
        assert json.loads((run_dir / "model" / "train_results.json").read_text())["cpu_threads"] == "1"
    assert not (out / ".ray_token").exists()
    assert ray.is_initialized() and ray.cluster_resources()["CPU"] == 2, "the driver left the cluster it joined up"


def test_a_lost_ray_task_is_recorded_as_failed(ray_address, tmp_path):
    from tunelab.comparison.ray_launcher import RayLauncher
    from tunelab.comparison.processes import PlannedRun

    launcher = RayLauncher(tmp_path, address=ray_address, device="cpu")  # joins the instance this process runs
    try:
        run = PlannedRun("k", "lost", "lora", 0, tmp_path / "runs" / "lost", {})
        def exit_worker():  # (defined here: Ray sends it by value; the workers cannot import test modules)
            os._exit(1)  # the task's worker process dies, as when its node goes away or the OOM killer strikes

        dies = ray.remote(exit_worker).options(max_retries=0).remote()
        record = launcher._record(run, dies, 1.0, None)
    finally:
        launcher.close()
    assert record.status == "failed"
    assert record.error.startswith("Ray task lost or failed: ") and "Crashed" in record.error
    assert ray.is_initialized(), "a cluster the launcher did not start is left running"


def test_runs_travel_to_nodes_without_the_comparison_directory(tmp_path):
    """Where a node does not see the comparison directory, the run runs under a scratch directory and comes back:
    its paths moved there and back, nothing else touched."""
    from tunelab.comparison.ray_launcher import collect_inputs, pack, relocate, unpack
    from tunelab.comparison.processes import PlannedRun

    out, scratch = tmp_path / "cmp", tmp_path / "node-scratch"
    (out / "runs" / "base" / "eval").mkdir(parents=True)
    (out / "runs" / "base" / "eval" / "eval_results.json").write_text("{}")
    (out / "runs" / "other-cmp2").mkdir()
    run = PlannedRun("k", "lora", "lora", 0, out / "runs" / "lora",
                     {"run_dir": str(out / "runs" / "lora"), "eval_options": {
                         "baseline": str(out / "runs" / "base" / "eval" / "eval_results.json"),
                         "retention": [f"language_modeling:{out}2/data.jsonl"]}})
    assert collect_inputs(out, include_base=True) == {"runs/base/eval/eval_results.json": b"{}"}
    assert collect_inputs(out, include_base=False) == {}
    moved = relocate(run, out, scratch)
    assert moved.run_dir == scratch / "runs" / "lora"
    assert moved.spec["eval_options"]["baseline"] == str(scratch / "runs" / "base" / "eval" / "eval_results.json")
    assert moved.spec["eval_options"]["retention"] == [f"language_modeling:{out}2/data.jsonl"], "not under out"
    (moved.run_dir / "model").mkdir(parents=True)
    (moved.run_dir / "model" / "adapter_model.safetensors").write_bytes(b"\x00" + str(scratch).encode())
    (moved.run_dir / "run_result.json").write_text(json.dumps({"eval_dir": str(moved.run_dir / "eval")}))
    unpack(pack(moved.run_dir), run.run_dir, old=scratch, new=out)
    assert json.loads((run.run_dir / "run_result.json").read_text()) == {"eval_dir": str(run.run_dir / "eval")}
    assert (run.run_dir / "model" / "adapter_model.safetensors").read_bytes() == b"\x00" + str(scratch).encode()
