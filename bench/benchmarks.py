"""The benchmark probes checked against published figures: SmolLM2-135M-Instruct (the built-in smollm2-135m) on
every benchmark tunelab ships a task config for, scored by lm-evaluation-harness through tunelab's BenchmarkProbe
(the same code path as `tunelab eval --retention arc_easy,...`), saved to bench/results/benchmarks-smollm2.json.

    .venv/bin/python bench/benchmarks.py                 # 200 documents per benchmark (a seeded subset)
    .venv/bin/python bench/benchmarks.py --limit 0       # every document of each file
    .venv/bin/python bench/benchmarks.py --tasks arc_easy,arc_challenge

A re-run resumes: benchmarks already measured with the same model, limit and seed are kept, so a long run can be
stopped and continued. The README section comparing with the model card is built from the file by make_readme.py.
"""

from __future__ import annotations

import argparse
import json
import time

from common import RESULTS, write_result

NAME = "benchmarks-smollm2"
MODEL = "smollm2-135m"
# SmolLM2-135M-Instruct's model card (zero-shot, lighteval); ARC is the mean of Easy and Challenge.
PUBLISHED = {"source": "SmolLM2-135M-Instruct model card (zero-shot, lighteval)",
             "arc_mean": 37.3, "mmlu_cloze": 29.3, "hellaswag": 40.9, "piqa": 66.3}


def main() -> None:
    from tunelab import inference
    from tunelab.evaluation.benchmarks import BUILTIN_BENCHMARKS, BenchmarkProbe, default_benchmark_dir
    from tunelab.evaluation.probes import default_data_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=200, help="documents per benchmark (0: all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tasks", default=",".join(BUILTIN_BENCHMARKS))
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--benchmark_data_dir", default=None)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()
    limit = args.limit or None
    folder = default_benchmark_dir(args.benchmark_data_dir, default_data_dir(args.data_dir))

    path = RESULTS / f"{NAME}.json"
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    same = previous.get("model") == MODEL and previous.get("limit") == limit and previous.get("seed") == args.seed
    measured = dict(previous.get("benchmarks") or {}) if same else {}

    lm = inference.load(MODEL, use_cpu=True)
    for name in args.tasks.split(","):
        if name in measured:
            print(f"{name}: kept from {path.name}", flush=True)
            continue
        probe = BenchmarkProbe(name, benchmark_dir=folder, limit=limit, seed=args.seed)
        started = time.perf_counter()
        score = probe(lm.model, lm.tokenizer, batch_size=args.batch_size)
        seconds = time.perf_counter() - started
        total = sum(len(t.eval_docs) for t in probe.tasks()["tasks"].values())
        measured[name] = {"metric": score.metric, "scores": score.scores, "chance_level": score.chance_level,
                          "num_examples": score.num_examples, "num_documents": total, "seconds": seconds}
        print(f"{name}: {score.num_examples} of {total} documents, {score.scores}, chance {score.chance_level:.3f}, "
              f"{seconds:.0f} s", flush=True)
        # saved after each benchmark, so that an interrupted run keeps what it measured
        write_result(NAME, {"model": MODEL, "limit": limit, "seed": args.seed, "batch_size": args.batch_size,
                            "command": "python bench/benchmarks.py" + (f" --limit {args.limit}"
                                                                       if args.limit != 200 else ""),
                            "published": PUBLISHED, "benchmarks": measured})


if __name__ == "__main__":
    main()
