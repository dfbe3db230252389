"""One run of a comparison, in a process of its own (a clean peak-memory figure, and a crash stays contained).

``python -m tunelab.comparison.worker SPEC.json`` trains and evaluates through the same functions a user calls
(`tunelab train`, `tunelab eval`), measures inference cost, and writes run_result.json atomically. On failure
it writes run_error.json and exits non-zero.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_json
from tunelab import run_files
from tunelab.records import EvalRecord, TrainRecord

log = logging.getLogger("tunelab.comparison.worker")

# The inference-cost measurement: every figure is the median of BENCH_REPEATS timed generations of BENCH_PROMPTS
# answers forced to BENCH_NEW_TOKENS tokens each (256 new tokens a repeat), reported with the slowest and fastest
# repeat. (96 tokens measured once put 4-bit LoRA ahead of merged float32 generation: noise.)
BENCH_PROMPTS = 4
BENCH_NEW_TOKENS = 64
BENCH_REPEATS = 3


def _tokens_per_second(lm, prompts: list[list[dict[str, str]]]) -> dict[str, Any]:
    """Median tokens/s over BENCH_REPEATS generations of the same prompts, after a short warm-up, and the spread."""
    import statistics

    from tunelab import inference

    gen = dict(max_new_tokens=BENCH_NEW_TOKENS, min_new_tokens=BENCH_NEW_TOKENS, batch_size=len(prompts),
               desc="inference cost")
    inference.generate(lm, prompts[:1], **{**gen, "max_new_tokens": 2, "min_new_tokens": 2})  # warm-up
    runs = [inference.generate(lm, prompts, **gen)[1] for _ in range(BENCH_REPEATS)]
    rates = [r.tokens_per_second for r in runs if r.tokens_per_second]
    return {"tokens_per_second": statistics.median(rates) if rates else None,
            "tokens_per_second_range": [min(rates), max(rates)] if rates else None,
            "new_tokens": runs[0].new_tokens, "repeats": len(runs)}


def inference_cost(lm, prompts: list[list[dict[str, str]]], *, mergeable: bool) -> dict[str, Any]:
    """Generation tokens/s of the evaluated model (in memory, in the dtype it was evaluated in) with the adapter
    attached and, where the method merges, after merge_and_unload (which changes ``lm``: call it last). Every
    answer is forced to the same length so the figures compare. On the CPU, ``cpu_wait_share`` says whether other
    work slowed the measurement (tunelab.contention)."""
    from tunelab import contention

    threads_before = contention.snapshot()
    result = _inference_cost(lm, prompts, mergeable=mergeable)
    if lm.device.type == "cpu":
        result["cpu_wait_share"] = contention.wait_share(threads_before, contention.snapshot())
    return result


def _inference_cost(lm, prompts: list[list[dict[str, str]]], *, mergeable: bool) -> dict[str, Any]:
    measured = _tokens_per_second(lm, prompts)
    result: dict[str, Any] = {**measured, "torch_dtype": str(lm.dtype).replace("torch.", "")}
    if not lm.is_peft:
        return result
    result["adapter_tokens_per_second"] = result.pop("tokens_per_second")
    result["adapter_tokens_per_second_range"] = result.pop("tokens_per_second_range")
    quantized = getattr(lm.model, "hf_quantizer", None) is not None  # (transformers' own test; peft forwards it)
    if mergeable and not quantized:
        lm.model = lm.model.merge_and_unload()
        lm.adapters = {}
        merged = _tokens_per_second(lm, prompts)
        result["merged_tokens_per_second"] = merged["tokens_per_second"]
        result["merged_tokens_per_second_range"] = merged["tokens_per_second_range"]
    else:
        result["merged_tokens_per_second"] = None
        result["not_merged_because"] = "quantized base" if quantized else "the method cannot be merged"
    return result


def _bench_prompts(eval_opts) -> list[list[dict[str, str]]]:
    from tunelab.evaluation.probes import load_task_examples

    examples = load_task_examples(eval_opts.task, eval_opts.dataset_name_or_path,
                                  dataset_format=eval_opts.dataset_format, input_columns=eval_opts.input_columns,
                                  target_column=eval_opts.target_column)
    return [ex.prompt_messages for ex in examples[:BENCH_PROMPTS] if ex.messages]


class Phases:
    """Seconds spent in each phase of a run, for the comparison's overhead profile (run_result.json's "timings"):
    wall-clock seconds, and under "cpu_seconds" the process's CPU seconds (all its threads), which measure the work
    done also on a machine busy with other processes."""

    def __init__(self) -> None:
        self.seconds: dict[str, Any] = {"cpu_seconds": {}}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
            cpus = self.seconds["cpu_seconds"]
            cpus[name] = cpus.get(name, 0.0) + time.process_time() - cpu


def run(spec: dict[str, Any], phases: Phases | None = None) -> dict[str, Any]:
    phases = phases or Phases()
    with phases("imports_seconds"):
        from tunelab.config import EvalOptions, TrainOptions
        from tunelab.evaluation.run import evaluate, evaluation_of
        from tunelab.methods import get_method
        from tunelab.training import train

    run_dir = Path(spec["run_dir"])
    if spec["kind"] == "trial":  # a trial of the learning-rate search (comparison/search.py)
        from tunelab.comparison.search_trial import run_trial

        result = run_trial(spec)
        atomic_write_json(run_dir / run_files.WORKER_RESULT, result)
        return result
    eval_values = dict(spec["eval_options"])
    result: dict[str, Any] = {"kind": spec["kind"], "timings": phases.seconds}
    in_memory, train_record = None, None
    if spec["kind"] == "run":
        topts = TrainOptions(**spec["train_options"])
        with phases("train_call_seconds"):
            trained = train(topts, set(spec.get("explicit", [])))
        train_record = trained.record
        result["train_results"] = train_record.to_json()
        eval_values, in_memory = evaluation_of(trained, topts, eval_values)
        del trained
        gc.collect()  # the Trainer's optimizer states and gradients (held in reference cycles) go before evaluation
    eopts = EvalOptions(**eval_values)
    with phases("evaluate_call_seconds"):
        evaluated = evaluate(eopts, model=in_memory)
    result["eval_results"] = evaluated.record.to_json()
    result["eval_dir"] = str(evaluated.output_dir)
    curve = (train_record.tracking or {}).get("curve_checkpoints") if train_record is not None else None
    if curve:  # recipe curve_points: the run's saved points, evaluated as the run is (comparison/trajectories.py)
        from tunelab.comparison.trajectories import evaluate_points

        with phases("curve_points_seconds"):
            result["trajectory"] = evaluate_points(train_record, dict(spec["eval_options"]), run_dir,
                                                   peft=get_method(train_record.method).peft,
                                                   evaluate=evaluate)
    if spec.get("diagnostics") and spec["kind"] == "run":  # recipe diagnostics: ΔW of the run (comparison/weights.py)
        from tunelab.comparison.weights import diagnose_run

        with phases("weight_diagnostics_seconds"):
            result["weight_diagnostics"] = diagnose_run(spec["train_options"]["output_dir"], use_cpu=eopts.use_cpu)
    if eopts.task and evaluated.record.task_kind != "seq_cls" and evaluated.model is not None:
        prompts = _bench_prompts(eopts)
        if prompts:
            # (full fine-tuning: not mergeable)
            mergeable = train_record is not None and get_method(train_record.method).mergeable
            with phases("inference_cost_seconds"):
                result["inference"] = inference_cost(evaluated.model, prompts, mergeable=mergeable)
    _phase_breakdown(phases.seconds, train_record, evaluated.record)
    atomic_write_json(run_dir / run_files.WORKER_RESULT, result)
    return result


def _phase_breakdown(seconds: dict[str, Any], trained: TrainRecord | None, evaluated: EvalRecord) -> None:
    """The calls' inner phases, from the times training and evaluation record themselves."""
    train_seconds = trained.train_seconds if trained is not None else None
    if "train_call_seconds" in seconds and train_seconds is not None:
        seconds["training_seconds"] = train_seconds
        # data preparation, model loading and method set-up before the Trainer's loop; saving after it
        seconds["train_setup_and_save_seconds"] = seconds["train_call_seconds"] - train_seconds
    inner = evaluated.timings or {}
    seconds.update({f"eval_{k}": v for k, v in inner.items()})
    seconds["cpu_seconds"]["process_seconds"] = time.process_time()  # the whole process, start-up included


def main(argv: list[str] | None = None) -> int:
    phases = Phases()
    phases.seconds["process_start_seconds"] = time.time() - _process_created()
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    from tunelab.logs import setup_logging

    setup_logging()
    run_dir = Path(spec["run_dir"])
    try:
        run(spec, phases)
        return 0
    except TunelabError as e:
        atomic_write_json(run_dir / run_files.WORKER_ERROR, {"error": str(e), "kind": "user"})
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a crash of one run is recorded; the comparison goes on (Ctrl-C is not a crash)
        atomic_write_json(run_dir / run_files.WORKER_ERROR, {"error": f"{type(e).__name__}: {e}".strip(),
                                                 "traceback": traceback.format_exc()})
        traceback.print_exc()
        return 1


def _process_created() -> float:
    """When this process started (seconds since the epoch): the interpreter's start-up counts as overhead too."""
    import psutil

    return psutil.Process().create_time()


if __name__ == "__main__":
    sys.exit(main())
