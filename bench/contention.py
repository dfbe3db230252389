"""What a busy machine does to a training time, and whether tunelab sees it (tunelab.contention).

Runs `tunelab train` (smollm2-135m, LoRA, the CLI's defaults: bf16 where the CPU has it) alone and beside
--neighbours processes that spin on the CPU, interleaved (alone, busy, alone, busy, ...), each --repeats times; prints
and saves each run's training seconds, the share of its runnable time its threads waited for a core
(train_results.json's train_cpu_wait_share) and whether tunelab warned that the machine was busy.

    .venv/bin/python bench/contention.py        # ~6 min on 2 cores -> bench/results/contention.json
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, write_result

from tunelab import contention
from tunelab.run_files import read_json

WARNING = "while other work ran on this machine"


def train(out: Path, data: Path, steps: int) -> dict:
    cmd = [sys.executable, "-m", "tunelab", "train", "--model_name_or_path", "smollm2-135m", "--dataset_name_or_path",
           str(data), "--max_steps", str(steps), "--per_device_train_batch_size", "4", "--output_dir", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"tunelab train failed:\n{done.stderr[-3000:]}")
    result = read_json(out / "train_results.json")
    return {"train_seconds": result["train_seconds"], "train_cpu_wait_share": result["train_cpu_wait_share"],
            "precision": result.get("precision"), "warned": WARNING in done.stderr}


def spin(n: int) -> list[subprocess.Popen]:
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.5)  # running before training starts
    return procs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--neighbours", type=int, default=1)
    ap.add_argument("--load", default=None, help="what else ran on the machine, in words (saved with the result)")
    args = ap.parse_args()
    data = Path(args.data_dir) / "alpaca_demo" / "alpaca_en_demo.json"
    if not data.is_file():
        raise SystemExit(f"--data_dir {args.data_dir}: no alpaca_demo/alpaca_en_demo.json (see ../shared/data)")
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for condition in ("alone", "busy"):
                neighbours = spin(args.neighbours) if condition == "busy" else []
                try:
                    run = train(Path(tmp) / f"{condition}-{repeat}", data, args.steps)
                finally:
                    for p in neighbours:
                        p.kill()
                        p.wait()
                runs.append({"condition": condition, "repeat": repeat, **run})
                print(f"{condition} #{repeat}: {run['train_seconds']:.1f} s, threads waited "
                      f"{100 * run['train_cpu_wait_share']:.1f}% of their runnable time, warned: {run['warned']}")
    by = {c: [r for r in runs if r["condition"] == c] for c in ("alone", "busy")}
    median = {c: statistics.median(r["train_seconds"] for r in rs) for c, rs in by.items()}
    summary = {c: {"median_train_seconds": median[c],
                   "wait_shares": [r["train_cpu_wait_share"] for r in rs],
                   "flagged_busy": sum(contention.busy(r["train_cpu_wait_share"]) for r in rs),
                   "warned": sum(r["warned"] for r in rs), "runs": len(rs)} for c, rs in by.items()}
    print(f"beside {args.neighbours} busy process(es), training took {median['busy'] / median['alone']:.2f}x as long")
    write_result("contention", {
        "command": "python bench/contention.py", "model": "smollm2-135m", "method": "lora", "steps": args.steps,
        "batch": 4, "data": "alpaca_demo/alpaca_en_demo.json", "neighbours": args.neighbours,
        "repeats": args.repeats, "busy_wait_share": contention.BUSY_WAIT_SHARE, "runs": runs, "summary": summary,
        "slowdown": median["busy"] / median["alone"], "load": args.load,
        "wall_seconds": time.perf_counter() - started})


if __name__ == "__main__":
    main()
