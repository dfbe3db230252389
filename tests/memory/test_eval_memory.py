"""The inference side of `tunelab estimate`: the memory an evaluation of a run needs, from the config alone."""

from __future__ import annotations

import pytest

from tunelab.config import EstimateOptions
from tunelab.memory.evaluation import estimate_evaluation


def _estimate(**kw):
    opts = EstimateOptions(model_name_or_path="llama-2-7b", per_device_eval_batch_size=1, max_seq_length=128, **kw)
    return estimate_evaluation(opts, device="cuda", new_tokens=16)


def test_evaluating_a_7b_lora_run_trained_in_bf16_needs_half_the_memory_of_float32():
    bf16, fp32 = _estimate(method="lora", bf16=True), _estimate(method="lora", bf16=False)
    assert (bf16.dtype, fp32.dtype) == ("bfloat16", "float32")
    # 6.7B parameters: 2 bytes each in bf16, 4 in float32 (the LoRA adapter stays float32 in both)
    assert 12.4 * 2**30 < bf16.weights_bytes < 12.8 * 2**30 < 25 * 2**30 < fp32.weights_bytes < 25.4 * 2**30
    assert bf16.peak_bytes / fp32.peak_bytes == pytest.approx(0.5, abs=0.02)
    assert bf16.kv_cache_bytes * 2 == fp32.kv_cache_bytes > 0
    # retention probes load the untouched base beside it, in the same dtype
    assert bf16.base_copy_bytes * 2 == fp32.base_copy_bytes
    assert bf16.peak_bytes == max(bf16.generation_peak_bytes, bf16.scoring_peak_bytes) + bf16.base_copy_bytes


def test_a_qlora_runs_base_stays_4_bit_and_its_reference_base_is_in_its_compute_dtype():
    est = _estimate(method="qlora", use_4bit=True, bf16=True)
    assert est.quantized == "4-bit" and est.dtype == "float32"  # peft's k-bit preparation upcasts the rest
    assert est.weights_bytes < 5 * 2**30                         # 4-bit weights: about 3.5 GiB plus the rest
    assert est.base_copy_bytes == pytest.approx(_estimate(method="full", bf16=True).base_copy_bytes, rel=1e-3)
