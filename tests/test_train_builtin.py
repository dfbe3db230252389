"""Integration: `tunelab train` on the built-in real models, and the outputs reload with plain peft/transformers."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.cli import main

from conftest import ALPACA_ROWS, CLASSIFICATION_ROWS, builtin_model, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]


@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_smollm2_trains_and_reloads(method, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models import quantization_config

    base = builtin_model("smollm2-135m")
    data = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS * 2)
    out = tmp_path / method
    code = main(["train", "--model_name_or_path", "smollm2-135m", "--dataset_name_or_path", str(data),
                 "--output_dir", str(out), "--method", method, "--max_steps", "3", "--per_device_train_batch_size",
                 "2", "--max_seq_length", "64", "--logging_steps", "1", "--use_cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert f"output: {out}" in captured.out
    r = json.loads((out / "train_results.json").read_text())
    assert r["method"] == method and r["global_step"] == 3 and len(r["loss_curve"]) == 3
    assert r["train_tokens"] > 0 and r["peak_memory_bytes"] > 100 * 2**20 and r["checkpoint_bytes"] > 0
    if method == "full":
        assert r["trainable_params"] == r["total_params"] > 100_000_000
    else:
        assert 0 < r["trainable_percent"] < 10

    tok = AutoTokenizer.from_pretrained(out)
    batch = tok(["SELECT count(*) FROM books"], return_tensors="pt")
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(out)
    else:
        from peft import PeftModel

        kwargs = {}
        if method == "qlora":
            kwargs = dict(quantization_config=quantization_config(use_4bit=True, use_8bit=False,
                                                                  compute_dtype=torch.float32), device_map="cpu")
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, **kwargs), out)
        assert not (out / "model.safetensors").exists()
    base_model = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        tuned = model.eval()(**batch).logits
        original = base_model.eval()(**batch).logits
    assert torch.isfinite(tuned).all()
    assert not torch.allclose(tuned, original, atol=1e-4), "training changed nothing"


def test_minilm_classifies_and_reloads(tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = builtin_model("minilm-l6")
    data = write_jsonl(tmp_path / "classes.jsonl", CLASSIFICATION_ROWS * 3)
    out = tmp_path / "cls"
    code = main(["train", "--model_name_or_path", "minilm-l6", "--dataset_name_or_path", str(data),
                 "--output_dir", str(out), "--method", "lora", "--max_steps", "3", "--per_device_train_batch_size",
                 "4", "--max_seq_length", "32", "--logging_steps", "1", "--use_cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    r = json.loads((out / "train_results.json").read_text())
    assert r["task_kind"] == "seq_cls" and r["data"]["labels"] == ["negative", "positive"]
    model = PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(base, num_labels=2), out)
    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model.eval()(**tok(["a fine sentence"], return_tensors="pt")).logits
    assert logits.shape == (1, 2)
    assert model.base_model.model.config.id2label in ({0: "LABEL_0", 1: "LABEL_1"}, {0: "negative", 1: "positive"})
