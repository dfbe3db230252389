"""One run of a comparison, in a process of its own (a clean peak-memory figure, and a crash stays contained).

``python -m tunelab.comparison.worker SPEC.json`` trains and evaluates through the same functions a user calls
(`tunelab train`, `tunelab eval`), measures inference cost, and writes run_result.json atomically. On failure
it writes run_error.json and exits non-zero.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_json

log = logging.getLogger("tunelab.comparison.worker")

RESULT_FILE = "run_result.json"
ERROR_FILE = "run_error.json"
BENCH_PROMPTS = 4
BENCH_NEW_TOKENS = 24


def inference_cost(model: str, adapter: str | None, prompts: list[list[dict[str, str]]], *, use_cpu: bool,
                   mergeable: bool, quantized: bool) -> dict[str, Any]:
    """Generation tokens/s with the adapter attached and, where the method merges, after merge_and_unload.
    Every answer is forced to the same length so the figures compare."""
    from tunelab import inference

    lm = inference.load(model, adapter, use_cpu=use_cpu)
    gen = dict(max_new_tokens=BENCH_NEW_TOKENS, min_new_tokens=BENCH_NEW_TOKENS, batch_size=len(prompts),
               desc="inference cost")
    inference.generate(lm, prompts[:1], **{**gen, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    _, stats = inference.generate(lm, prompts, **gen)
    result: dict[str, Any] = {"tokens_per_second": stats.tokens_per_second, "new_tokens": stats.new_tokens}
    if adapter is None:
        return result
    result["adapter_tokens_per_second"] = result.pop("tokens_per_second")
    if mergeable and not quantized:
        lm.model = lm.model.merge_and_unload()
        inference.generate(lm, prompts[:1], **{**gen, "max_new_tokens": 2, "min_new_tokens": 2})
        _, merged = inference.generate(lm, prompts, **gen)
        result["merged_tokens_per_second"] = merged.tokens_per_second
    else:
        result["merged_tokens_per_second"] = None
        result["not_merged_because"] = "4-bit base" if quantized else "the method cannot be merged"
    return result


def _bench_prompts(eval_opts) -> list[list[dict[str, str]]]:
    from tunelab.evaluation.probes import load_task_examples

    examples = load_task_examples(eval_opts.task, eval_opts.dataset_name_or_path,
                                  dataset_format=eval_opts.dataset_format, input_columns=eval_opts.input_columns,
                                  target_column=eval_opts.target_column)
    return [ex.prompt_messages for ex in examples[:BENCH_PROMPTS] if ex.messages]


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from tunelab.config import EvalOptions, TrainOptions
    from tunelab.evaluation.run import evaluate
    from tunelab.methods import get_method
    from tunelab.training import train

    run_dir = Path(spec["run_dir"])
    if spec["kind"] == "trial":  # a trial of the learning-rate search (comparison/search.py)
        from tunelab.comparison.search import run_trial

        result = run_trial(spec)
        atomic_write_json(run_dir / RESULT_FILE, result)
        return result
    eval_values = dict(spec["eval_options"])
    result: dict[str, Any] = {"kind": spec["kind"]}
    if spec["kind"] == "run":
        topts = TrainOptions(**spec["train_options"])
        trained = train(topts, set(spec.get("explicit", [])))
        result["train_results"] = trained.results
        method = get_method(trained.results["method"])
        if method.peft:
            eval_values.update(model_name_or_path=topts.model_name_or_path, adapter=str(trained.output_dir))
        else:
            eval_values.update(model_name_or_path=str(trained.output_dir), adapter=None)
        del trained  # free the trained model before evaluation loads it again
    eopts = EvalOptions(**eval_values)
    evaluated = evaluate(eopts)
    result["eval_results"] = evaluated.results
    result["eval_dir"] = str(evaluated.output_dir)
    if eopts.task and result.get("eval_results", {}).get("task_kind") != "seq_cls":
        prompts = _bench_prompts(eopts)
        if prompts:
            tr = result.get("train_results") or {}
            mergeable = bool(tr) and get_method(tr["method"]).mergeable and tr.get("peft", False)
            quantized = bool(spec.get("train_options", {}).get("use_4bit") or tr.get("defaults_chosen", {})
                             .get("use_4bit") or spec.get("train_options", {}).get("use_8bit"))
            result["inference"] = inference_cost(eopts.model_name_or_path, eopts.adapter, prompts,
                                                 use_cpu=eopts.use_cpu, mergeable=mergeable, quantized=quantized)
    atomic_write_json(run_dir / RESULT_FILE, result)
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    from tunelab.logs import setup_logging

    setup_logging()
    run_dir = Path(spec["run_dir"])
    try:
        run(spec)
        return 0
    except TunelabError as e:
        atomic_write_json(run_dir / ERROR_FILE, {"error": str(e), "kind": "user"})
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a crash of one run is recorded; the comparison goes on (Ctrl-C is not a crash)
        atomic_write_json(run_dir / ERROR_FILE, {"error": f"{type(e).__name__}: {e}".strip(),
                                                 "traceback": traceback.format_exc()})
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
