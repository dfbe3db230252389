"""bench/compare_overhead.py's profile: where each run's wall time went, from the worker's per-phase timings."""

from __future__ import annotations

import importlib.util
import sys

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def compare_overhead():
    sys.path.insert(0, str(REPO / "bench"))  # its `from common import ...`
    spec = importlib.util.spec_from_file_location("compare_overhead", REPO / "bench" / "compare_overhead.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_phases_and_the_rest_add_up_to_each_runs_wall_time(compare_overhead):
    base = {"label": "base", "wall_seconds": 30.0, "train_seconds": 0.0,
            "timings": {"process_start_seconds": 2.0, "imports_seconds": 4.0, "eval_model_load_seconds": 1.0,
                        "eval_task_seconds": 15.0, "eval_probe_seconds": {"general_knowledge": 5.0, "drift": 2.0},
                        "inference_cost_seconds": 0.5, "cpu_seconds": {"process_seconds": 50.0}}}
    lora = {"label": "lora", "wall_seconds": 100.0, "train_seconds": 60.0,
            "timings": {"process_start_seconds": 2.0, "imports_seconds": 4.0, "training_seconds": 60.0,
                        "train_setup_and_save_seconds": 5.0, "eval_task_seconds": 14.0,
                        "eval_probe_seconds": {"general_knowledge": 8.0}, "inference_cost_seconds": 6.0,
                        "cpu_seconds": {"process_seconds": 180.0, "train_call_seconds": 120.0}}}
    prof = compare_overhead.profile([base, lora], wall=135.0)
    for run, rec in zip(prof["runs"], (base, lora)):
        assert sum(run["phases"].values()) == pytest.approx(rec["wall_seconds"])
    assert prof["runs"][0]["phases"]["probe: drift"] == 2.0
    assert prof["runs"][0]["phases"]["rest of the run"] == pytest.approx(0.5)
    totals = prof["phase_totals_seconds"]
    assert totals["task evaluation"] == 29.0 and totals["outside the runs (planning, data, report)"] == 5.0
    assert prof["wall_to_training"] == pytest.approx(135.0 / 60.0)
    # every process's CPU seconds (the base's too) against the training calls'
    assert prof["process_cpu_to_training_call_cpu"] == pytest.approx((50.0 + 180.0) / 120.0)
