"""Retention probes asked with and without the run's system prompt, on a finished comparison's models.

tunelab asks retention probes without the run's system prompt (tunelab.evaluation.retention.general_view): a task
instruction such as the demo's "Reply with SQL only" has a tuned model answer general-knowledge questions in SQL,
which scores as forgetting. This measures how much that changes the numbers: the general-knowledge probe (the
recipe's probe size and seed) on the base and on every run of the comparison, asked both ways.

    .venv/bin/python bench/compare_overhead.py            # the demo comparison, in runs/bench-compare-demo
    .venv/bin/python bench/probe_prompting.py [--comparison runs/bench-compare-demo] [--probe general_knowledge]

Writes bench/results/probe-prompting.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comparison", default=str(REPO / "runs" / "bench-compare-demo"))
    ap.add_argument("--probe", default="general_knowledge")
    args = ap.parse_args()
    from tunelab import inference, run_files
    from tunelab.comparison.results import ResultsFile
    from tunelab.evaluation import retention
    from tunelab.evaluation.probes import PROBES, ProbeContext
    from tunelab.evaluation.tasks import TaskSettings

    out = Path(args.comparison)
    records = [r for r in ResultsFile(out).records() if r.get("status") == "ok" and r.get("kind") != "trial"]
    probe = PROBES[args.probe]
    rows = {}
    for rec in records:
        eval_opts = run_files.read_yaml_mapping(Path(rec["eval_dir"]) / run_files.EVAL_OPTIONS)
        system = eval_opts.get("system_prompt")
        for key in ("model_name_or_path", "adapter"):  # saved relative to where the comparison ran
            value = eval_opts.get(key)
            if value and not Path(value).exists() and (REPO / value).exists():
                eval_opts[key] = str(REPO / value)
        model, adapter = eval_opts["model_name_or_path"], eval_opts.get("adapter")
        lm = inference.load(model, adapter, torch_dtype="auto", system_prompt=system)
        settings = TaskSettings(max_new_tokens=min(probe.max_new_tokens or 64, eval_opts["max_new_tokens"]),
                                batch_size=eval_opts["per_device_eval_batch_size"], seed=eval_opts["seed"])
        examples = probe.load(ProbeContext(None, eval_opts["probe_samples"], eval_opts["seed"]))
        scores, metric = {}, None
        for how, view in (("under the system prompt", lm), ("without it", retention.general_view(lm))):
            started = time.perf_counter()
            scored = retention.score_probe(probe.task, view, examples, settings)
            metric = scored["metric"]
            scores[how] = {"value": scored["value"], "seconds": time.perf_counter() - started,
                           "first_answer": scored["predictions"][0]["prediction"]}
            print(f"{rec['label']:<14} {how:<24} {probe.name} {scored['value']:.4f}  "
                  f"{scored['predictions'][0]['prediction'][:60]!r}", flush=True)
        # the comparison's own score (asked without the system prompt, in memory after training): a model loaded
        # from disk can answer a question differently in bf16
        in_comparison = ((rec.get("retention") or {}).get(probe.name) or {}).get("after")
        rows[rec["label"]] = {"system_prompt": system, "num_examples": len(examples), **scores,
                              "in_comparison": in_comparison,
                              "first_question": examples[0].prompt_messages[-1]["content"]}
        del lm
    write_result("probe-prompting", {"comparison": str(out.relative_to(REPO) if out.is_relative_to(REPO) else out),
                                     "probe": probe.name, "metric": metric, "runs": rows})


if __name__ == "__main__":
    main()
