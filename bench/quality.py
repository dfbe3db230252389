"""Quality and retention on real data: a built-in recipe run with the benchmark's budget, several seeds for the
main methods, and the table, records and wall time saved to bench/results/quality-<recipe>.json.

    .venv/bin/python bench/quality.py spider     # Spider text-to-SQL (execution accuracy), retention probes
    .venv/bin/python bench/quality.py dialogsum  # DialogSum summarization (ROUGE)
    .venv/bin/python bench/quality.py sst2-sts   # MiniLM on SST-2, STS-B Spearman retention
    .venv/bin/python bench/quality.py --tag search dialogsum --search learning_rate --curve_points 3
        # the same with each method's learning rate searched first and trajectories: quality-dialogsum-search.json

Budgets are sized for a 2-core CPU machine (the README gives each benchmark's measured time); pass --max_steps etc.
to change them (they are recorded).
A re-run resumes: finished runs are skipped and the results file is rebuilt from all of them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, RESULTS, write_result
from summaries import search_summary, trajectory_summary

# (methods with several seeds, seeds), (methods with one seed), budget overrides
PLANS = {
    "spider": (["full", "lora r=16", "qlora"], [0, 1, 2], ["dora", "ia3", "prompt_tuning", "prefix_tuning"],
               ["--max_steps", "20", "--gradient_accumulation_steps", "1", "--max_eval_samples", "48",
                "--probe_samples", "32", "--max_seq_length", "320", "--group_by_length"]),
    "dialogsum": (["full", "lora r=32", "qlora", "ia3"], [0], [],
                  ["--max_steps", "30", "--gradient_accumulation_steps", "1", "--max_eval_samples", "24",
                   "--probe_samples", "16", "--max_seq_length", "512", "--group_by_length"]),
    "sst2-sts": (["full", "lora r=16", "ia3", "prompt_tuning"], [0], [],
                 ["--max_steps", "150", "--max_eval_samples", "872", "--probe_samples", "1500"]),
}


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.run(cmd).returncode
    if code == 1:  # some runs failed: they are recorded as failed and shown so in the results
        print("some runs failed (see above); the results record them as failed", flush=True)
    elif code != 0:
        raise SystemExit(f"{cmd[3]} exited with {code}")


def predicted_peaks(records: list[dict]) -> list[dict]:
    """`tunelab estimate` for each method's first trained run, from the options it trained with, beside the peak
    the run measured. The estimate assumes every batch is max_seq_length long (the worst case a user plans for);
    the runs pad each batch only to its longest row."""
    from tunelab.config import TrainOptions
    from tunelab.memory.estimator import estimate

    first: dict[str, dict] = {}
    for rec in sorted(records, key=lambda r: r.get("seed") or 0):
        if rec["status"] == "ok" and rec["method"] != "base":
            first.setdefault(rec["label"], rec)
    rows = []
    for label, rec in first.items():
        spec = json.loads((Path(rec["run_dir"]) / "spec.json").read_text(encoding="utf-8"))
        opts = TrainOptions(**spec["train_options"])
        est = estimate(opts, device="cuda" if rec.get("device") == "cuda" else "cpu")
        rows.append({"label": label, "method": rec["method"], "seed": rec["seed"],
                     "max_seq_length": opts.max_seq_length, "per_device_train_batch_size":
                         opts.per_device_train_batch_size, "predicted_bytes": est.peak_bytes,
                     "predicted_phase": est.peak_phase, "measured_bytes": rec.get("peak_memory_bytes"),
                     "measured_kind": rec.get("peak_memory_kind")})
        print(f"{label}: predicted {est.peak_bytes / 2**30:.2f} GiB, measured "
              f"{(rec.get('peak_memory_bytes') or 0) / 2**30:.2f} GiB ({rec.get('peak_memory_kind')})", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", choices=sorted(PLANS))
    ap.add_argument("--output_dir", default=None)
    ap.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--tag", default=None, help="a variant of the benchmark (e.g. with --search): its results go to "
                    "quality-RECIPE-TAG.json and its runs to runs/bench-RECIPE-TAG, beside the plain benchmark's")
    ap.add_argument("--note", default=None, help="how the machine was used meanwhile, where it was not quiet (give it before RECIPE: what follows RECIPE goes to `tunelab compare`)")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="more `tunelab compare` overrides")
    args = ap.parse_args()
    multi, seeds, single, budget = PLANS[args.recipe]
    name = args.recipe + (f"-{args.tag}" if args.tag else "")
    out = Path(args.output_dir or REPO / "runs" / f"bench-{name}")
    tunelab = [sys.executable, "-m", "tunelab"]
    common = ["--output_dir", str(out), "--data_dir", args.data_dir, *budget, *args.extra]
    from tunelab.comparison.results import ResultsFile

    # finished runs or trials from an earlier, interrupted invocation: then this one's wall time is not the work's
    resumed = bool(ResultsFile(out).records()) if out.is_dir() else False
    started = time.perf_counter()
    run([*tunelab, "compare", args.recipe, "--methods", ",".join(multi), "--seeds", ",".join(map(str, seeds)),
         *common])
    if single:
        run([*tunelab, "compare", args.recipe, "--methods", ",".join(single), "--seeds", "0", *common])
    wall = time.perf_counter() - started
    run([*tunelab, "report", str(out)])
    from tunelab.comparison.report import table

    records = ResultsFile(out).records()
    trials = [r for r in records if r.get("kind") == "trial"]  # with --search learning_rate
    records = [r for r in records if r.get("kind") != "trial"]
    header, body = table(records)
    from tunelab.comparison.recipe import load_recipe

    recipe = load_recipe(args.recipe)
    flags = _flag_values(budget + args.extra)
    extra = {**search_summary(records, trials), **trajectory_summary(records, out, f"quality-{name}")}
    plots = {}  # every plot the report drew (trade-off, learning-rate sensitivity, weights), copied beside the JSON
    for png in sorted((out / "plots").glob("*.png")):
        plots[png.stem] = f"quality-{name}-{png.name}"
        shutil.copyfile(png, RESULTS / plots[png.stem])
    write_result(f"quality-{name}", {
        "recipe": args.recipe, "budget": budget + args.extra, "seeds": seeds, "wall_seconds": wall, "resumed": resumed,
        # what the runs took, whatever an earlier, interrupted invocation already did
        "runs_wall_seconds": sum(r.get("wall_seconds") or 0 for r in records),
        "note": args.note, "table": {"header": header, "rows": body},
        # the recipe's entries and the evaluation sizes that ran (the recipe's, overridden by the budget flags)
        "methods": [m.as_dict() for m in recipe.methods],
        "eval": {**recipe.eval, **{k: int(v) for k, v in flags.items() if k in ("max_eval_samples", "probe_samples")}},
        "memory": predicted_peaks(records), "records": records, **extra,
        "tradeoff_plot": plots.get("tradeoff"), "plots": plots})


def _flag_values(flags: list[str]) -> dict[str, str]:
    """{'max_steps': '30', ...} from ['--max_steps', '30', '--group_by_length', ...] (a bare flag maps to 'true')."""
    values, i = {}, 0
    while i < len(flags):
        name = flags[i].lstrip("-")
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            values[name], i = flags[i + 1], i + 2
        else:
            values[name], i = "true", i + 1
    return values

if __name__ == "__main__":
    main()
