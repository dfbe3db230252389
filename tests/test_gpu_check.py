"""bench/gpu_check.py's plumbing on the CPU (--cpu-smoke): each check runs in a process of its own, is timed, and its
failure is recorded without stopping the others; the result file says what ran, on what, and how it went."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO

SCRIPT = REPO / "bench" / "gpu_check.py"


def _run(tmp_path, *args):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_cpu_smoke_runs_a_check_and_skips_the_gpu_only_ones(tmp_path):
    report, stdout = _run(tmp_path, "--only", "estimate_validate,fsdp,deepspeed")
    assert report["mode"] == "cpu-smoke" and report["weights"].startswith("random weights")
    assert report["machine"]["default_precision"]["precision"] in ("bf16", "fp32")
    checks = report["checks"]
    assert list(checks) == ["estimate_validate", "fsdp", "deepspeed"]
    validate = checks["estimate_validate"]
    assert validate["status"] == "ok" and validate["seconds"] > 0, validate
    assert validate["result"]["passed"] and validate["result"]["cases"][0]["measured_bytes"] > 0
    assert checks["fsdp"]["status"] == "skipped" and "--fsdp" in checks["fsdp"]["result"]["command"]
    assert checks["deepspeed"]["status"] == "skipped"
    assert "[gpu_check] estimate_validate: ok" in stdout


def test_a_failing_check_is_recorded_and_the_next_one_still_runs(tmp_path):
    report, _ = _run(tmp_path, "--only", "qlora,fsdp", "--model", str(tmp_path / "no-such-model"))
    failed = report["checks"]["qlora"]
    assert failed["status"] == "failed" and "no-such-model" in failed["error"], failed
    assert report["checks"]["fsdp"]["status"] == "skipped"
