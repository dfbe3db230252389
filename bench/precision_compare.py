"""The demo with and without bf16, same seed, side by side (issue 17 §1): task metric, retention, loss curve, speed
and memory of each method, and the bf16/float32 speed ratio. Reads two finished comparisons' results.jsonl (and
each run's train_results.json for the precision and the tensor-level peak); writes
bench/results/compare-demo-bf16.json.

    .venv/bin/tunelab compare --recipe demo --output_dir /tmp/demo-bf16              # bf16 where the CPU has it
    .venv/bin/tunelab compare --recipe demo --no_bf16 --output_dir /tmp/demo-fp32    # float32
    .venv/bin/python bench/precision_compare.py --bf16 /tmp/demo-bf16 --fp32 /tmp/demo-fp32 --load "shared, busy"

The two comparisons run one after the other, so on a shared machine their speeds see different loads: the ratio is
only as good as the machine was quiet (the load averages at the start and end are saved when given).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from common import write_result

RUN_KEYS = ("label", "method", "seed", "status", "train_seconds", "train_tokens", "train_tokens_per_second",
            "peak_memory_bytes", "peak_memory_kind", "checkpoint_bytes", "final_train_loss", "loss_curve",
            "headline_metric", "headline_value", "headline_ci", "task_metrics", "retention", "wall_seconds")


def read_comparison(directory: Path) -> dict:
    records = [json.loads(line) for line in (directory / "results.jsonl").read_text().splitlines() if line.strip()]
    runs = {}
    for rec in records:
        run = {k: rec.get(k) for k in RUN_KEYS}
        trained = Path(rec["run_dir"]) / "model" / "train_results.json"
        if trained.is_file():  # the precision and the tensor peak, from the run itself
            tr = json.loads(trained.read_text())
            run.update({k: tr.get(k) for k in ("precision", "precision_reason", "peak_tensor_bytes",
                                               "peak_tensor_steps")})
        runs[rec["label"]] = run
    return {"directory": str(directory), "runs": runs,
            "wall_seconds": sum(r.get("wall_seconds") or 0 for r in records)}


def side_by_side(bf16: dict, fp32: dict) -> dict:
    rows = {}
    for label in bf16["runs"]:
        a, b = bf16["runs"][label], fp32["runs"].get(label)
        if b is None:
            continue
        row = {"precision": [a.get("precision"), b.get("precision")],
               "headline_metric": a.get("headline_metric"),
               "headline_value": [a.get("headline_value"), b.get("headline_value")],
               "headline_ci": [a.get("headline_ci"), b.get("headline_ci")],
               "retention": {p: [(a.get("retention") or {}).get(p), (b.get("retention") or {}).get(p)]
                             for p in (a.get("retention") or {})},
               "final_train_loss": [a.get("final_train_loss"), b.get("final_train_loss")],
               "loss_curve": [a.get("loss_curve"), b.get("loss_curve")],
               "peak_memory_bytes": [a.get("peak_memory_bytes"), b.get("peak_memory_bytes")],
               "peak_tensor_bytes": [a.get("peak_tensor_bytes"), b.get("peak_tensor_bytes")]}
        ta, tb = a.get("train_tokens_per_second"), b.get("train_tokens_per_second")
        row["train_tokens_per_second"] = [ta, tb]
        row["speed_ratio_bf16_over_fp32"] = ta / tb if ta and tb else None
        rows[label] = row
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bf16", required=True, help="the comparison directory run with the default (bf16)")
    ap.add_argument("--fp32", required=True, help="the same comparison run with --no_bf16")
    ap.add_argument("--load", default=None, help="a note on how busy the machine was, saved with the results")
    ap.add_argument("--load_averages", default=None,
                    help="a JSON-lines file of load averages taken while the comparisons ran, saved with the results")
    args = ap.parse_args()
    bf16, fp32 = read_comparison(Path(args.bf16)), read_comparison(Path(args.fp32))
    rows = side_by_side(bf16, fp32)
    for label, row in rows.items():
        ratio = row["speed_ratio_bf16_over_fp32"]
        print(f"{label}: {row['headline_metric']} {row['headline_value'][0]} (bf16) vs {row['headline_value'][1]} "
              f"(fp32); final loss {row['final_train_loss']}; speed ratio "
              f"{'-' if ratio is None else f'{ratio:.2f}'}")
    payload = {"note": args.load, "bf16": bf16, "fp32": fp32, "side_by_side": rows,
               "load_average_now": os.getloadavg()[0]}
    if args.load_averages:
        payload["load_averages"] = [json.loads(line) for line in Path(args.load_averages).read_text().splitlines()
                                    if line.strip()]
    write_result("compare-demo-bf16", payload)


if __name__ == "__main__":
    main()
