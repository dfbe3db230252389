"""Compare overhead: the wall time of `tunelab compare` against the sum of its runs' training times (the rest is
evaluation, model loading and process start-up), measured on the built-in demo recipe, with where each run's time
went (the worker's per-phase timings: process start, imports, training set-up and saving, training, loading for
evaluation, the task evaluation, each retention probe, the inference-cost measurement).

    .venv/bin/python bench/compare_overhead.py [--recipe demo] [--methods lora]

Writes bench/results/compare-<recipe>.json (compare-<recipe>-<methods>.json with --methods).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from common import REPO, write_result
from summaries import search_summary, trajectory_summary

# The worker's timings (comparison/worker.py Phases, evaluation/run.py), in the order a run goes through them.
PHASES = [
    ("process start", "process_start_seconds"),
    ("imports", "imports_seconds"),
    ("training set-up and saving", "train_setup_and_save_seconds"),
    ("training", "training_seconds"),
    ("evaluation: loading the model", "eval_model_load_seconds"),
    ("evaluation: loading the base for probes", "eval_base_load_seconds"),
    ("task evaluation", "eval_task_seconds"),
    ("inference cost", "inference_cost_seconds"),
]


def profile(records: list[dict], wall: float) -> dict:
    """Per run and in total: seconds per phase (each probe its own), the rest of the run's wall time (saving,
    writing results, what no phase covers), and the comparison's wall time against the sum of training times."""
    runs, totals = [], {}
    for r in records:
        t = r.get("timings") or {}
        phases = {name: t[key] for name, key in PHASES if t.get(key) is not None}
        for probe, seconds in (t.get("eval_probe_seconds") or {}).items():
            phases[f"probe: {probe}"] = seconds
        phases["rest of the run"] = r["wall_seconds"] - sum(phases.values())
        for name, seconds in phases.items():
            totals[name] = totals.get(name, 0.0) + seconds
        runs.append({"label": r["label"], "wall_seconds": r["wall_seconds"], "phases": phases,
                     "cpu_seconds": t.get("cpu_seconds") or {}})
    runs_wall = sum(r["wall_seconds"] for r in records)
    totals["outside the runs (planning, data, report)"] = wall - runs_wall
    train = sum(r.get("train_seconds") or 0 for r in records)
    cpu_train = sum(r["cpu_seconds"].get("train_call_seconds") or 0.0 for r in runs)
    cpu_all = [r["cpu_seconds"].get("process_seconds") for r in runs]
    return {"runs": runs, "phase_totals_seconds": totals, "train_seconds": train, "wall_seconds": wall,
            "wall_to_training": wall / train if train else None,
            # the same ratio in the worker processes' CPU seconds (the work done, whatever else the machine ran;
            # the base run included); training's CPU seconds include its set-up and saving
            "process_cpu_to_training_call_cpu": sum(cpu_all) / cpu_train if cpu_train and all(cpu_all) else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo")
    ap.add_argument("--methods", default=None, help="compare only these entries, e.g. lora (default: all)")
    ap.add_argument("--curve_points", type=int, default=None,
                    help="learning-forgetting trajectories with K points per run (writes compare-<recipe>-curves)")
    ap.add_argument("--diagnostics", action="store_true", help="record each run's weight diagnostics too")
    args = ap.parse_args()
    name = (f"compare-{args.recipe}" + (f"-{args.methods.replace(',', '-')}" if args.methods else "")
            + ("-curves" if args.curve_points else ""))
    out = REPO / "runs" / f"bench-{name}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "tunelab", "compare", args.recipe, "--output_dir", str(out)]
    if args.methods:
        cmd += ["--methods", args.methods]
    if args.curve_points:
        cmd += ["--curve_points", str(args.curve_points)]
    if args.diagnostics:
        cmd += ["--diagnostics"]
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - started
    from tunelab.comparison.report import table
    from tunelab.comparison.results import ResultsFile

    records = ResultsFile(out).records()
    trials = [r for r in records if r.get("kind") == "trial"]  # a learning-rate search's (recipe demo-search)
    records = [r for r in records if r.get("kind") != "trial"]
    train = sum(r.get("train_seconds") or 0 for r in records)
    runs = sum(r["wall_seconds"] for r in records)
    header, body = table(records)
    prof = profile(records, wall)
    print(f"compare wall {wall:.0f}s; runs' own wall {runs:.0f}s; training {train:.0f}s "
          f"({100 * train / wall:.0f}% of the wall time; wall / training = {prof['wall_to_training']:.2f})")
    for phase, seconds in prof["phase_totals_seconds"].items():
        print(f"  {phase:<45}{seconds:8.1f}s")
    from tunelab.comparison.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    write_result(name, {"recipe": args.recipe, "methods_run": args.methods, "wall_seconds": wall,
                        "budget": recipe.budget, "eval": recipe.eval, "retention": recipe.retention,
                        "methods": [m.as_dict() for m in recipe.methods],
                        "runs_wall_seconds": runs, "train_seconds": train,
                        "per_run": [{k: r.get(k) for k in ("label", "wall_seconds", "train_seconds", "inference")}
                                    for r in records],
                        "profile": prof, "table": {"header": header, "rows": body}, **search_summary(records, trials),
                        **trajectory_summary(records, out, name)})


if __name__ == "__main__":
    main()
