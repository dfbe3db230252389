"""Quality and retention on real data: a built-in recipe run with the benchmark's budget, several seeds for the
main methods, and the table, records and wall time saved to bench/results/quality-<recipe>.json.

    .venv/bin/python bench/quality.py spider     # Spider text-to-SQL (execution accuracy), retention probes
    .venv/bin/python bench/quality.py dialogsum  # DialogSum summarization (ROUGE)
    .venv/bin/python bench/quality.py sst2-sts   # MiniLM on SST-2, STS-B Spearman retention

Budgets are sized for about an hour on 2 CPU cores; pass --max_steps etc. to change them (they are recorded).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, write_result

# (methods with several seeds, seeds), (methods with one seed), budget overrides
PLANS = {
    "spider": (["full", "lora r=16", "qlora"], [0, 1, 2], ["dora", "ia3", "prompt_tuning", "prefix_tuning"],
               ["--max_steps", "30", "--max_eval_samples", "40", "--probe_samples", "24", "--max_seq_length", "320"]),
    "dialogsum": (["full", "lora r=32", "qlora", "ia3"], [0], [],
                  ["--max_steps", "40", "--max_eval_samples", "40", "--probe_samples", "24", "--max_seq_length",
                   "512"]),
    "sst2-sts": (["full", "lora r=16", "ia3", "prompt_tuning"], [0, 1, 2], [],
                 ["--max_steps", "150", "--max_eval_samples", "872", "--probe_samples", "1500"]),
}


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", choices=sorted(PLANS))
    ap.add_argument("--output_dir", default=None)
    ap.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="more `tunelab compare` overrides")
    args = ap.parse_args()
    multi, seeds, single, budget = PLANS[args.recipe]
    out = Path(args.output_dir or REPO / "runs" / f"bench-{args.recipe}")
    tunelab = [sys.executable, "-m", "tunelab"]
    common = ["--output_dir", str(out), "--data_dir", args.data_dir, *budget, *args.extra]
    started = time.perf_counter()
    run([*tunelab, "compare", args.recipe, "--methods", ",".join(multi), "--seeds", ",".join(map(str, seeds)),
         *common])
    if single:
        run([*tunelab, "compare", args.recipe, "--methods", ",".join(single), "--seeds", "0", *common])
    wall = time.perf_counter() - started
    run([*tunelab, "report", str(out)])
    from tunelab.comparison.report import table
    from tunelab.comparison.results import ResultsFile

    records = ResultsFile(out).records()
    header, body = table(records)
    write_result(f"quality-{args.recipe}", {"recipe": args.recipe, "budget": budget + args.extra,
                                            "seeds": seeds, "wall_seconds": wall, "table": {"header": header,
                                                                                            "rows": body},
                                            "records": records})


if __name__ == "__main__":
    main()
