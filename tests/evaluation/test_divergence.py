"""KL and cross-entropy change against a base: exactly 0 where the model is the base, "before" taken with the adapter
disabled, logits shifted against labels. The two bugs of peft's forgetting metric (unshifted logits; "before" with an
untrained adapter active) each fail a test here."""

from __future__ import annotations

import pytest

from tunelab import inference
from tunelab.data.encode import adds_bos, encode_causal
from tunelab.data.formats import Example
from tunelab.evaluation.divergence import BaseReference, base_view

EXAMPLES = [Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}], locator=f"row {i}")
            for i, (q, a) in enumerate([("What is the capital of France?", "Paris is the capital."),
                                        ("Count the books.", "SELECT count(*) FROM books"),
                                        ("Translate to French: the cat", "le chat sat on the mat")])]


def _peft(tiny_llama, config):
    from peft import get_peft_model

    lm = inference.load(str(tiny_llama), use_cpu=True)
    lm.model = get_peft_model(lm.model, config).eval()
    return lm


def test_untouched_model_compares_to_exactly_zero(tiny_llama):
    base = inference.load(str(tiny_llama), use_cpu=True)
    result = BaseReference.of(base, EXAMPLES, batch_size=2).compare(base, batch_size=2)
    assert result["kl_divergence"] == 0.0 and result["delta_cross_entropy"] == 0.0
    assert result["num_tokens"] > 0 and result["num_examples"] == len(EXAMPLES)


def test_cross_entropy_is_the_shifted_loss_transformers_computes(tiny_llama):
    """Per example, the base's cross-entropy equals the model's own loss (which shifts labels inside): an unshifted
    comparison of logits at t with the token at t scores something else."""
    import torch

    base = inference.load(str(tiny_llama), use_cpu=True)
    for ex in EXAMPLES:
        ref = BaseReference.of(base, [ex])
        features, _ = encode_causal(ex, base.template, base.tokenizer, 1024, bos=adds_bos(base.tokenizer))
        with torch.no_grad():
            loss = base.model(input_ids=torch.tensor([features["input_ids"]]),
                              labels=torch.tensor([features["labels"]])).loss
        assert ref.nll_sum / ref.tokens == pytest.approx(float(loss), rel=1e-5)


def test_batched_losses_are_each_row_s_own(tiny_llama):
    """A row batched with longer and shorter ones (right-padded, masked) gets the figures it gets alone, at its own
    position."""
    base = inference.load(str(tiny_llama), use_cpu=True)
    rows = [Example(messages=[{"role": "user", "content": "Say it."}, {"role": "assistant", "content": answer}])
            for answer in ("one two three four five six seven", "one", "one two three")]
    batched = inference.response_losses(base, rows, batch_size=2)
    alone = [inference.response_losses(base, [ex], batch_size=1)[0] for ex in rows]
    assert [r["tokens"] for r in batched] == [r["tokens"] for r in alone]
    assert len({r["tokens"] for r in alone}) == len(rows)
    assert [r["nll_sum"] for r in batched] == pytest.approx([r["nll_sum"] for r in alone], rel=1e-5)


def test_fresh_lora_is_the_base(tiny_llama):
    from peft import LoraConfig

    base = inference.load(str(tiny_llama), use_cpu=True)
    plain = BaseReference.of(base, EXAMPLES, batch_size=2)
    lm = _peft(tiny_llama, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"], task_type="CAUSAL_LM"))
    with base_view(lm) as inside:
        ref = BaseReference.of(inside, EXAMPLES, batch_size=2)
    assert ref.nll_sum == pytest.approx(plain.nll_sum, rel=1e-6)
    result = ref.compare(lm, batch_size=2)  # the adapter active: B = 0 adds nothing
    assert abs(result["kl_divergence"]) < 1e-7 and abs(result["delta_cross_entropy"]) < 1e-6


def test_prompt_tuning_before_is_taken_with_the_adapter_disabled(tiny_llama):
    """An untrained prompt-tuning adapter already changes the outputs (random virtual tokens). The reference taken
    through base_view is the base's; with the adapter disabled the change is 0, with it active it is not."""
    from peft import PromptTuningConfig

    base = inference.load(str(tiny_llama), use_cpu=True)
    plain = BaseReference.of(base, EXAMPLES, batch_size=2)
    lm = _peft(tiny_llama, PromptTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"))
    with base_view(lm) as inside:
        ref = BaseReference.of(inside, EXAMPLES, batch_size=2)
        disabled = ref.compare(inside, batch_size=2)
    assert ref.nll_sum == pytest.approx(plain.nll_sum, rel=1e-6)
    assert disabled["kl_divergence"] == pytest.approx(0.0, abs=1e-7)
    assert disabled["delta_cross_entropy"] == pytest.approx(0.0, abs=1e-6)
    active = ref.compare(lm, batch_size=2)
    assert active["kl_divergence"] > 1e-4
    # peft's bug: "before" measured with the untrained adapter active is not the base
    wrong = BaseReference.of(lm, EXAMPLES, batch_size=2)
    assert abs(wrong.nll_sum - plain.nll_sum) / plain.tokens > 1e-4
