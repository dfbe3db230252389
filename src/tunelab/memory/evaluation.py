"""The inference side of ``tunelab estimate``: the memory an evaluation of the run needs, predicted the way the
training estimate is (the model built from its config on fake tensors, no weights read, live tensor bytes counted).

The evaluated model is the trained one as ``tunelab eval`` loads it: the base in the dtype the run trains in
(``inference.decide_dtype``: bf16 after bf16 training, float32 for a QLoRA run's non-quantized tensors, whose base
stays 4-bit), with the method's adapter. Two forward passes over a batch of ``per_device_eval_batch_size`` rows of
``max_seq_length`` prompt tokens plus ``new_tokens`` are traced:

- generation: one pass over the whole length that keeps its key/value cache and the last position's logits: the
  cache at the end of greedy generation and more activations than any decoding step holds (an upper bound);
- scoring (per-token losses, the drift probe): a pass without a cache that keeps every position's logits and their
  float32 copy, as ``inference.response_losses`` does.

Retention probes score the untouched base beside the tuned model ("before"), a second copy of the base weights in
the dtype the model computes in (``inference.reference_dtype``: a QLoRA run's base unquantized, in its 4-bit compute
dtype), which the peak adds.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

EVAL_NEW_TOKENS = 128  # `tunelab eval --max_new_tokens`' default


@dataclass
class EvalEstimate:
    model: str
    method: str
    task_kind: str
    target_device: str
    dtype: str                   # of the weights that are not quantized
    quantized: str | None        # "4-bit" or "8-bit" base
    batch_size: int
    prompt_tokens: int
    new_tokens: int
    weights_bytes: int           # the evaluated model: base and adapter
    kv_cache_bytes: int          # at the end of generation
    generation_peak_bytes: int   # weights + cache + activations of the generation pass
    scoring_peak_bytes: int      # weights + activations and logits of the scoring pass
    base_copy_bytes: int         # the untouched base loaded beside it for the retention probes' "before"
    peak_bytes: int              # max(generation, scoring) + base copy

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def estimate_evaluation(opts, *, device: str = "auto", new_tokens: int = EVAL_NEW_TOKENS,
                        num_labels: int = 2) -> EvalEstimate:
    """Predict the peak memory of evaluating the run ``opts`` describes (TrainOptions fields)."""
    import torch

    from tunelab import inference, precision
    from tunelab.config import resolve
    from tunelab.memory import estimator
    from tunelab.memory.trace import LiveBytes, new_fake_mode, resident_tensors
    from tunelab.options import to_dict

    opts, _ = estimator.settle_precision(opts, device)
    opts, _ = resolve(opts, set())
    spec = estimator.resolve_spec(opts.model_name_or_path, task_type=opts.task_type,
                                  trust_remote_code=opts.trust_remote_code)
    method = estimator.check_estimate_options(opts, spec)
    settings = estimator.run_settings(opts, device=device)
    on_gpu = settings.target == "cuda"
    dtype = inference.decide_dtype(to_dict(opts), on_gpu=on_gpu,
                                   cpu_flags=() if on_gpu else precision.cpu_flags())
    dtype_name = str(dtype).replace("torch.", "")
    # The model as training builds it, its non-quantized weights in the evaluation dtype (the trained model).
    build_opts = dataclasses.replace(opts, torch_dtype=dtype_name, prompt_tuning_init="random")
    fake_mode = new_fake_mode()
    model, method = estimator.build_model(build_opts, spec, settings, fake_mode=fake_mode, num_labels=num_labels)
    model.eval()
    trainable, total = estimator._count_parameters(model)
    base_params = total - trainable if method.peft else total
    base_copy = base_params * inference.reference_dtype(to_dict(opts), dtype, on_gpu=on_gpu).itemsize
    counter = LiveBytes(granularity=settings.granularity,
                        device_type="cuda" if settings.trace_device == "cuda" else None)
    counter.register(resident_tensors(model))
    weights = counter.current
    batch, prompt = opts.per_device_eval_batch_size, opts.max_seq_length
    length = prompt + (new_tokens if spec.task_kind != "seq_cls" else 0)
    vocab = int(getattr(model.config, "vocab_size", None) or spec.config.vocab_size)
    dev = settings.trace_device
    with warnings.catch_warnings(), estimator.fake_run_shims(), fake_mode, counter, torch.no_grad():
        warnings.simplefilter("ignore")
        counter.phase = "forward"
        if spec.task_kind == "seq_cls":
            out = model(input_ids=torch.randint(0, vocab, (batch, prompt), device=dev))
            kv_cache, generation_peak = 0, counter.peak
        else:
            out = _generation_pass(model, spec.task_kind, batch, prompt, new_tokens, vocab, dev)
            logits_bytes = out.logits.untyped_storage().nbytes()
            kv_cache = counter.current - weights - logits_bytes
            generation_peak = counter.peak
        del out
        counter.peak = counter.current
        ids = torch.randint(0, vocab, (batch, length if spec.task_kind != "seq2seq_lm" else prompt), device=dev)
        extra = {"decoder_input_ids": torch.randint(0, vocab, (batch, new_tokens), device=dev)} \
            if spec.task_kind == "seq2seq_lm" else {}
        out = model(input_ids=ids, use_cache=False, **extra) if spec.task_kind != "seq_cls" else model(input_ids=ids)
        scores = out.logits.float()  # noqa: F841 (response_losses' float32 copy, alive at the peak)
        scoring_peak = counter.peak
        del out, scores
    quant = "4-bit" if opts.use_4bit else "8-bit" if opts.use_8bit else None
    return EvalEstimate(model=spec.name, method=opts.method, task_kind=spec.task_kind, target_device=settings.target,
                        dtype=dtype_name, quantized=quant, batch_size=batch, prompt_tokens=prompt,
                        new_tokens=new_tokens if spec.task_kind != "seq_cls" else 0, weights_bytes=weights,
                        kv_cache_bytes=kv_cache, generation_peak_bytes=generation_peak,
                        scoring_peak_bytes=scoring_peak, base_copy_bytes=base_copy,
                        peak_bytes=max(generation_peak, scoring_peak) + base_copy)


def _generation_pass(model, task_kind: str, batch: int, prompt: int, new_tokens: int, vocab: int, device):
    """One forward over prompt + new tokens that keeps its key/value cache and the last position's logits."""
    import torch

    if task_kind == "seq2seq_lm":
        return model(input_ids=torch.randint(0, vocab, (batch, prompt), device=device),
                     decoder_input_ids=torch.randint(0, vocab, (batch, new_tokens), device=device), use_cache=True)
    import inspect

    ids = torch.randint(0, vocab, (batch, prompt + new_tokens), device=device)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    # generate() asks for the last position's logits only; an architecture that cannot computes them all
    last = {"logits_to_keep": 1} if "logits_to_keep" in inspect.signature(inner.forward).parameters else {}
    return model(input_ids=ids, use_cache=True, **last)


def format_evaluation(est: EvalEstimate) -> str:
    from tunelab.units import format_bytes

    weights = f"{est.quantized} base, other weights {est.dtype}" if est.quantized else f"{est.dtype} weights"
    lines = [f"evaluation (tunelab eval of this run: {weights}, batch {est.batch_size} x {est.prompt_tokens} prompt "
             f"+ {est.new_tokens} new tokens)",
             f"  peak memory: {format_bytes(est.peak_bytes)} ({est.peak_bytes / 1e9:.2f} GB)",
             f"  {'model weights':<31}{format_bytes(est.weights_bytes):>12}",
             f"  {'generation peak':<31}{format_bytes(est.generation_peak_bytes):>12}   weights, key/value cache "
             f"{format_bytes(est.kv_cache_bytes)}, activations",
             f"  {'scoring peak':<31}{format_bytes(est.scoring_peak_bytes):>12}   weights, activations, every "
             "position's logits (losses, drift)"]
    if est.base_copy_bytes:
        lines.append(f"  {'+ the untouched base':<31}{format_bytes(est.base_copy_bytes):>12}   loaded beside it for "
                     "the retention probes' 'before'")
    return "\n".join(lines)

