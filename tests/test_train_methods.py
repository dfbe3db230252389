"""Every method x every model kind it supports trains a few steps on a tiny real model.

The test matrix mirrors peft's TEST_CASES: a new method joins by being registered; nothing here names it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tunelab.config import TrainOptions
from tunelab.methods import get_method, method_names
from tunelab.training import train

from conftest import write_jsonl

KINDS = ("causal_lm", "seq2seq_lm", "seq_cls")
CASES = [(m, k) for m in method_names() for k in KINDS if k in get_method(m).task_kinds]

# Steps large enough to see a tiny random model's loss fall within 5 steps on one repeated batch.
TEST_LR = {"full": 1e-3, "prompt_tuning": 1e-2, "prefix_tuning": 1e-2, "llama_adapter": 5e-2, "vera": 2e-2,
           "ia3": 5e-2, "oft": 1e-2}

GEN_ROWS = [
    {"instruction": "Count the books.", "input": "", "output": "SELECT count(*) FROM books"},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital"},
    {"instruction": "Translate to French.", "input": "the cat", "output": "le chat sat on the mat"},
    {"instruction": "Give the label.", "input": "a fine sentence", "output": "positive label sentence"},
]
# 3:1 labels: even a method whose features barely depend on the input at initialisation (BERT + prompt tuning,
# where position 0 becomes a virtual token) lowers the loss by learning the label prior.
CLS_ROWS = [
    {"text": "a fine sentence with a good label", "label": "positive"},
    {"text": "the lazy dog count join", "label": "negative"},
    {"text": "quick brown fox positive", "label": "positive"},
    {"text": "order by limit positive", "label": "positive"},
]


def _run(method, kind, tiny_models, tmp_path, **extra):
    # float32 (not the bf16 default of a CPU with bf16 instructions): the reload below is a plain float32 one and must
    # give the trained model's logits exactly; tests/test_precision.py trains the methods under bf16
    extra.setdefault("bf16", False)
    data = write_jsonl(tmp_path / "data.jsonl", CLS_ROWS if kind == "seq_cls" else GEN_ROWS)
    opts = TrainOptions(model_name_or_path=str(tiny_models[kind]), dataset_name_or_path=str(data),
                        output_dir=str(tmp_path / "out"), method=method, max_steps=5, logging_steps=1,
                        per_device_train_batch_size=4, max_seq_length=64, lora_r=4, lora_alpha=8, lora_dropout=0.0,
                        num_virtual_tokens=4, learning_rate=TEST_LR.get(method, 5e-3), warmup_ratio=0.0,
                        lr_scheduler_type="constant", save_steps=100, seed=0, use_cpu=True, **extra)
    return train(opts, explicit={"learning_rate", "warmup_ratio"})


def _batch(kind, tokenizer):
    enc = tokenizer(["SELECT count(*) FROM books", "the quick brown fox"], return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    if kind == "seq2seq_lm":
        batch["decoder_input_ids"] = torch.zeros_like(enc["input_ids"][:, :3])
    return batch


def _reload(kind, base_path: Path, out: Path, peft: bool, quantized: bool = False):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    from tunelab.models import quantization_config

    cls = {"causal_lm": AutoModelForCausalLM, "seq2seq_lm": AutoModelForSeq2SeqLM,
           "seq_cls": AutoModelForSequenceClassification}[kind]
    if not peft:
        return cls.from_pretrained(out)
    from peft import PeftModel

    kwargs = {}
    if kind == "seq_cls":
        kwargs = dict(num_labels=2)
    if quantized:  # the same NF4 quantization of the same weights, as plain peft users would load it
        kwargs.update(quantization_config=quantization_config(use_4bit=True, use_8bit=False,
                                                              compute_dtype=torch.float32), device_map="cpu")
    model = PeftModel.from_pretrained(cls.from_pretrained(base_path, **kwargs), out)
    if quantized:
        # as tunelab computes: bitsandbytes' packed CPU inference kernel (used by default in eval mode on CPUs with
        # avx512_bf16) computes other logits than the path QLoRA trains through (models.keep_4bit_weights_unpacked)
        from tunelab.models import keep_4bit_weights_unpacked

        keep_4bit_weights_unpacked(model)
    return model


@pytest.mark.parametrize("method,kind", CASES, ids=[f"{m}-{k}" for m, k in CASES])
def test_method_trains_saves_and_reloads(method, kind, tiny_models, tmp_path):
    result = _run(method, kind, tiny_models, tmp_path)
    r = result.results
    curve = [p["loss"] for p in r["loss_curve"]]
    assert len(curve) == 5 and all(math.isfinite(x) for x in curve)
    assert curve[-1] < curve[0], f"loss did not fall on a repeated batch: {curve}"
    out = result.output_dir
    files = {p.name for p in out.iterdir()}
    peft = get_method(method).peft
    if peft:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= files
        assert "model.safetensors" not in files, "a PEFT run must save only the adapter"
    else:
        assert "model.safetensors" in files and "adapter_config.json" not in files
    assert r["checkpoint_bytes"] == sum((out / f).stat().st_size for f in files if f.endswith(".safetensors"))

    reloaded = _reload(kind, tiny_models[kind], out, peft, quantized=r.get("defaults_chosen", {}).get("use_4bit", False))
    reloaded.eval()
    trained = result.model.eval()
    batch = _batch(kind, result.tokenizer)
    with torch.no_grad():
        expected = trained(**batch).logits
        got = reloaded(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)

    # The reported count must equal the parameters the saved output holds (VeRA's shared random projections are
    # saved but frozen; AdaLoRA saves its pruned ranks, fewer than it trained).
    if peft:
        from safetensors import safe_open

        with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
            saved = sum(f.get_slice(k).get_shape().numel() if hasattr(f.get_slice(k).get_shape(), "numel")
                        else math.prod(f.get_slice(k).get_shape()) for k in f.keys()
                        if not k.endswith(("vera_A", "vera_B")))
        if method == "adalora":
            assert 0 < saved <= r["trainable_params"]
        else:
            assert r["trainable_params"] == saved
    else:
        assert r["trainable_params"] == r["total_params"] == sum(p.numel() for p in reloaded.parameters())


def _linear_shapes(model, names):
    return [(m.in_features, m.out_features) for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.split(".")[-1] in names and ".layers." in f".{n}"]


def test_lora_parameter_count_is_analytic(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    result = _run("lora", "causal_lm", tiny_models, tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_models["causal_lm"])
    names = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    expected = sum(4 * (i + o) for i, o in _linear_shapes(base, names))
    assert result.results["trainable_params"] == expected
    assert result.results["total_params"] == sum(p.numel() for p in base.parameters()) + expected


def test_dora_adds_one_magnitude_per_output(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    result = _run("dora", "causal_lm", tiny_models, tmp_path)
    base = AutoModelForCausalLM.from_pretrained(tiny_models["causal_lm"])
    names = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    expected = sum(4 * (i + o) + o for i, o in _linear_shapes(base, names))
    assert result.results["trainable_params"] == expected


def test_prefix_tuning_refuses_an_encoder_classifier(tiny_models, tmp_path):
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="past_key_values"):
        _run("prefix_tuning", "seq_cls", tiny_models, tmp_path)
    assert not (tmp_path / "out").exists(), "nothing may be written for a refused run"
