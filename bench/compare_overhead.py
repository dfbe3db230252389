"""Compare overhead: the wall time of `tunelab compare` against the sum of its runs' training times (the rest is
evaluation, model loading and process start-up), measured on the built-in demo recipe.

    .venv/bin/python bench/compare_overhead.py [--recipe demo]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time

from common import REPO, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="demo")
    args = ap.parse_args()
    out = REPO / "runs" / f"bench-compare-{args.recipe}"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunelab", "compare", args.recipe, "--output_dir", str(out)], check=True)
    wall = time.perf_counter() - started
    from tunelab.comparison.report import table
    from tunelab.comparison.results import ResultsFile

    records = ResultsFile(out).records()
    trials = [r for r in records if r.get("kind") == "trial"]  # a learning-rate search's (recipe demo-search)
    records = [r for r in records if r.get("kind") != "trial"]
    train = sum(r.get("train_seconds") or 0 for r in records)
    runs = sum(r["wall_seconds"] for r in records)
    header, body = table(records)
    print(f"compare wall {wall:.0f}s; runs' own wall {runs:.0f}s; training {train:.0f}s "
          f"({100 * train / wall:.0f}% of the wall time)")
    from tunelab.comparison.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    write_result(f"compare-{args.recipe}", {"recipe": args.recipe, "wall_seconds": wall,
                                            "budget": recipe.budget, "eval": recipe.eval,
                                            "methods": [m.as_dict() for m in recipe.methods],
                                            "runs_wall_seconds": runs, "train_seconds": train,
                                            "per_run": [{k: r.get(k) for k in ("label", "wall_seconds",
                                                                               "train_seconds")} for r in records],
                                            "table": {"header": header, "rows": body},
                                            **_search(records, trials)})


def _search(records: list[dict], trials: list[dict]) -> dict:
    """What the learning-rate search chose and cost, per method, and its trials (nothing when it was off)."""
    if not trials:
        return {}
    from tunelab.comparison.report import verdicts

    methods = {}
    for r in records:
        found = r.get("search")
        if found:
            methods[r["label"]] = {**found, "run_wall_seconds": r["wall_seconds"],
                                   "cost_over_run": found["tuning_seconds"] / r["wall_seconds"]}
    keep = ("label", "trial", "learning_rate", "status", "pruned_at_step", "stopped_by", "objective_value",
            "validation_loss_curve", "steps", "cost_seconds", "error")
    return {"search": {"methods": methods, "seconds": sum(t.get("cost_seconds") or 0 for t in trials),
                       "trials": [{k: t.get(k) for k in keep} for t in trials]},
            "verdicts": verdicts(records)}


if __name__ == "__main__":
    main()
