"""``tunelab estimate``: will this run fit, and why. Takes every ``tunelab train`` flag, plus its own."""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

from tunelab.config import EstimateOptions
from tunelab.errors import TunelabError
from tunelab.options import parse_options
from tunelab.units import format_bytes

DESCRIPTION = """\
Predict the peak memory of a training run before starting it, without loading weights: the model is built on
fake tensors from its config and one real training step (forward, backward, optimizer step) of the actual
architecture and method is traced, counting live tensor bytes. Accepts every `tunelab train` flag, so the
command line of the run you are about to start works unchanged. The precision is the one `tunelab train` would
pick for the target device (bf16 autocast on a GPU, assumed to support it, and on a CPU with avx512_bf16/AMX;
else float32); the output says which and why; --no_bf16 estimates a float32 run.

examples:
  tunelab estimate --model_name_or_path llama-2-7b --method qlora --per_device_train_batch_size 4 --bf16
  tunelab estimate --model_name_or_path meta-llama/Llama-2-70b-hf --method lora --fit 80
  tunelab estimate --table --max_seq_length 1024 --per_device_train_batch_size 1 --bf16
  tunelab estimate --validate
"""


def cmd_estimate(argv: list[str]) -> int:
    opts, _ = parse_options(EstimateOptions, argv, "tunelab estimate", DESCRIPTION)
    _check_sizes(opts)
    _quiet_transformers()
    if opts.validate:
        return _validate(opts)
    if opts.table:
        return _table(opts)
    if not opts.model_name_or_path:
        raise TunelabError("missing --model_name_or_path (or pass --table or --validate)")
    if opts.fit is not None:
        return _fit(opts)
    from tunelab.memory.estimator import estimate

    est = estimate(opts, device=opts.device, num_labels=opts.num_labels)
    from tunelab.memory.evaluation import estimate_evaluation, format_evaluation

    evaluation = estimate_evaluation(opts, device=opts.device, num_labels=opts.num_labels)  # the inference side
    if opts.json:
        print(json.dumps({**est.to_dict(), "evaluation": evaluation.to_dict()}, indent=2))
        return 0
    print(format_estimate(est, gpus=opts.gpu_memory_gb or [16.0, 24.0, 40.0, 80.0], headroom_gb=opts.headroom_gb))
    print()
    print(format_evaluation(evaluation))
    return 0


def _check_sizes(opts: EstimateOptions) -> None:
    """GPU sizes are positive and the headroom is not negative: a GPU of -3 GB fits nothing, and answering "no
    proposal" would hide the typo."""
    for flag, value in [("--fit", opts.fit), *(("--gpu_memory_gb", g) for g in opts.gpu_memory_gb or [])]:
        if value is not None and value <= 0:
            raise TunelabError(f"{flag} {value:g}: a GPU's memory in GB must be positive, e.g. {flag} 24")
    if opts.headroom_gb < 0:
        raise TunelabError(f"--headroom_gb {opts.headroom_gb:g}: must be 0 or more (GiB kept beyond the peak)")


def _quiet_transformers() -> None:
    """Building models from configs makes transformers chatty (cache and loss notices, load reports, bars)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --- formatting ---------------------------------------------------------------------------------------------------

LABELS = {
    "weights_bytes": "weights",
    "gradients_bytes": "gradients",
    "optimizer_states_bytes": "optimizer states",
    "activations_bytes": "activations kept for backward",
    "temporaries_bytes": "temporaries",
    "cuda_workspace_bytes": "cuBLAS workspaces",
}


def format_estimate(est, *, gpus: list[float], headroom_gb: float) -> str:
    from tunelab.memory.estimator import fits

    s = est.settings
    pct = 100.0 * est.trainable_params / est.total_params if est.total_params else 0.0
    precision = "bf16 autocast" if s["bf16"] else ("fp16 autocast" if s["fp16"] else "fp32")
    if s.get("precision_reason"):  # the precision tunelab train would pick, and why
        precision += f" ({s['precision_reason']})"
    gas = s["gradient_accumulation_steps"]
    accumulated = f" x {gas} accumulated" if gas > 1 else ""
    other = s.get("weights_dtype", "float32")
    weights = (f"4-bit base (compute {s['bnb_4bit_compute_dtype']}), other weights {other}" if s["use_4bit"]
               else f"8-bit base, other weights {other}" if s["use_8bit"] else f"{other} weights")
    lines = [
        f"{est.model} ({est.model_source}, {est.task_kind}), --method {est.method}, for a "
        f"{'CUDA GPU' if est.target_device == 'cuda' else 'CPU'} run",
        f"  batch {s['per_device_train_batch_size']} x {s['max_seq_length']} tokens{accumulated}"
        f", gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, {weights}, "
        f"{precision}, --optim {s['optim']}",
        f"  parameters: {est.total_params:,} total, {est.trainable_params:,} trainable ({pct:.3f}%)",
        "",
        f"peak memory: {format_bytes(est.peak_bytes)} ({est.peak_bytes / 1e9:.2f} GB), during {est.peak_phase}",
    ]
    w = est.weights_detail
    detail = {
        "weights_bytes": ", ".join(f"{k.replace('_bytes', '').replace('_', ' ')} {format_bytes(v)}"
                                   for k, v in w.items() if v),
        "gradients_bytes": "of the trainable parameters, at the peak",
        "optimizer_states_bytes": f"{s['optim']}, held from the first step on",
        "activations_bytes": "tensors saved in the forward pass, still held",
        "temporaries_bytes": "buffers of the peak's phase (e.g. logits gradients, dequantized weights, "
                             "recomputed activations, optimizer scratch)",
        "cuda_workspace_bytes": "PyTorch's default per matmul thread",
    }
    for key, label in LABELS.items():
        value = est.breakdown[key]
        if key == "cuda_workspace_bytes" and not value:
            continue
        lines.append(f"  {label:<31}{format_bytes(value):>12}   {detail[key]}")
    lines.append(f"  {'total':<31}{format_bytes(est.peak_bytes):>12}")
    lines.append("")
    lines.append("peak by phase: " + ", ".join(f"{ph} {format_bytes(v['peak_bytes'])}" for ph, v in est.phases.items()))
    if est.largest_temporaries:
        lines.append("largest allocations:")
        for a in est.largest_temporaries[:5]:
            lines.append(f"  {format_bytes(a['bytes']):>12}  {a['op']}  {a['shape']} "
                         f"{a['dtype'].replace('torch.', '')}")
    kind = "adapter" if est.method != "full" else "model"
    lines.append(f"checkpoint ({kind} weights): {format_bytes(est.checkpoint_bytes)}")
    a = est.analytic
    check = [f"gradients {format_bytes(a['gradients_formula_bytes'])} by formula (4 B per trainable parameter)"]
    if a.get("optimizer_states_formula_bytes") is not None:
        check.append(f"optimizer states {format_bytes(a['optimizer_states_formula_bytes'])} by formula vs "
                     f"{format_bytes(a['optimizer_states_traced_bytes'])} traced")
    if a.get("weights_gradients_states_formula_bytes"):
        check.append(f"16 B per parameter for full fp32 AdamW: "
                     f"{format_bytes(a['weights_gradients_states_formula_bytes'])}")
    check.append(f"Korthikanti et al. activations (16-bit, no flash attention) "
                 f"{format_bytes(a['korthikanti_activations_bytes'])}, with full recomputation "
                 f"{format_bytes(a['korthikanti_recompute_activations_bytes'])}")
    lines.append("cross-check: " + "; ".join(check))
    verdicts = ", ".join(f"{g:g} GB {'yes' if fits(est.peak_bytes, g, headroom_gb) else 'no'}" for g in gpus)
    if est.target_device == "cuda":
        lines.append(f"fits ({headroom_gb:g} GiB headroom): {verdicts}")
    for note in est.notes:
        lines.append(f"note: {note}")
    lines.append(f"traced in {est.trace_seconds:.1f}s on fake tensors ({est.trace_device})")
    return "\n".join(lines)


# --- modes --------------------------------------------------------------------------------------------------------

def _fit(opts: EstimateOptions) -> int:
    from tunelab.memory.estimator import propose_fit

    result = propose_fit(opts, opts.fit, headroom_gb=opts.headroom_gb, device=opts.device,
                         num_labels=opts.num_labels)
    if opts.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{opts.model_name_or_path}, --method {opts.method}: fitting {opts.fit:g} GB "
          f"(peak + {opts.headroom_gb:g} GiB headroom)")
    for t in result["tried"]:
        print(f"  {t['change']:<70} {format_bytes(t['peak_bytes']):>12}  {'fits' if t['fits'] else 'too big'}")
    if result["fits"]:
        changes = " ".join(result["changes"]) or "(no change needed)"
        print(f"proposal: {changes}")
    else:
        print("no proposal: even with every change the run does not fit; use a larger GPU, a smaller model, "
              "a shorter --max_seq_length or more GPUs")
    return 0


def _table(opts: EstimateOptions) -> int:
    from tunelab.memory.estimator import size_table

    def progress(row: dict[str, Any]) -> None:
        print(f"[tunelab] {row['size']} {row['method']}: {format_bytes(row['peak_bytes'])}", file=sys.stderr,
              flush=True)

    result = size_table(opts, sizes=opts.table_sizes, methods=opts.table_methods, gpus=opts.gpu_memory_gb,
                        headroom_gb=opts.headroom_gb, device=opts.device, progress=None if opts.json else progress)
    if opts.json:
        print(json.dumps(result, indent=2))
        return 0
    print(format_table(result))
    return 0


def format_table(result: dict[str, Any]) -> str:
    s = result["settings"]
    methods = list(dict.fromkeys(r["method"] for r in result["rows"]))
    gpus = result["gpus_gb"]
    lines = [f"peak training memory, batch {s['per_device_train_batch_size']} x {s['max_seq_length']} tokens, "
             f"{'bf16 autocast' if s['bf16'] else 'fp32'}"
             f"{' (' + s['precision_reason'] + ')' if s.get('precision_reason') else ''}, --optim {s['optim']}, "
             f"gradient checkpointing "
             f"{'on' if s['gradient_checkpointing'] else 'off'}; -> the smallest of "
             f"{'/'.join(f'{g:g}' for g in gpus)} GB it fits ({result['headroom_gb']:g} GiB headroom)",
             f"{'size':<6}{'model':<28}" + "".join(f"{m:>20}" for m in methods)]
    by_size: dict[str, dict[str, dict]] = {}
    for r in result["rows"]:
        by_size.setdefault(r["size"], {})[r["method"]] = r
    for size, cells in by_size.items():
        model = next(iter(cells.values()))["model"]
        row = f"{size:<6}{model:<28}"
        for m in methods:
            r = cells.get(m)
            if r is None:
                row += f"{'':>20}"
                continue
            smallest = next((g for g in gpus if r["fits"][f"{g:g}"]), None)
            cell = f"{r['peak_bytes'] / 1024 ** 3:.1f} GiB -> {f'{smallest:g}' if smallest else 'none'}"
            row += f"{cell:>20}"
        lines.append(row)
    return "\n".join(lines)


def _validate(opts: EstimateOptions) -> int:
    from tunelab.memory.estimator import TINY_MODEL, validate_case, validation_cases

    import torch

    if opts.device == "auto":  # measure where this machine can: on its GPU if it has one
        opts = dataclasses.replace(opts, device="cuda" if torch.cuda.is_available() and not opts.use_cpu else "cpu")
    models = opts.validate_models or [TINY_MODEL, "smollm2-135m"]
    methods = opts.validate_methods or ["full", "lora", "qlora"]
    lengths = tuple(opts.validate_seq_lengths or [64, 256])
    cases = validation_cases(models=models, methods=methods, seq_lengths={m: lengths for m in models})
    results = []
    if not opts.json:
        print(f"{'model':<14}{'method':<8}{'ckpt':<6}{'seq':>6}{'predicted':>16}{'measured':>16}{'error':>10}")
    for case in cases:
        case.batch_size = opts.validate_batch_size
        base = dataclasses.replace(opts, model_name_or_path=case.model, dataset_name_or_path="-", output_dir="-")
        validate_case(case, base, device=opts.device)
        results.append(case)
        if not opts.json:
            flag = "" if abs(case.error) <= opts.tolerance else "  FAIL"
            print(f"{case.model:<14}{case.method:<8}{'on' if case.gradient_checkpointing else 'off':<6}"
                  f"{case.max_seq_length:>6}{case.predicted_bytes:>16,}{case.measured_bytes:>16,}"
                  f"{100 * case.error:>+9.3f}%{flag}", flush=True)
    worst = max((abs(c.error) for c in results), default=0.0)
    failed = [c for c in results if abs(c.error) > opts.tolerance]
    if opts.json:
        print(json.dumps({"tolerance": opts.tolerance, "worst_error": worst,
                          "cases": [c.to_dict() for c in results]}, indent=2))
    else:
        print(f"worst |error| {100 * worst:.3f}% over {len(results)} cases (tolerance {100 * opts.tolerance:g}%)")
    return 1 if failed else 0
