"""Integration: the adapter lifecycle on the built-in smollm2-135m. Two adapters trained on different tiny tasks
answer differently through one loaded base, each as it does loaded alone, and `base` as the plain model does;
the merged model has the adapter's logits; the GGUF file loads back in transformers with the merged model's
logits (exactly for f32; q8_0 within the tolerance stated in the README)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tunelab.cli import main

from conftest import builtin_model, write_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("smollm2")]

QUESTIONS = ["Count the books.", "Name the capital of France.", "Translate to French.", "Give the label.",
             "What is the sum?", "Summarize the dialogue."]
# Stated tolerances for a q8_0 round trip of smollm2-135m (max |logit difference| measured about 1.1-1.3 over the
# 49,152-way vocabulary, mean about 0.14-0.21, next-token argmax agreeing at 95-97% of positions).
Q8_MAX_ABS, Q8_MEAN_ABS, Q8_TOP1 = 2.5, 0.3, 0.9


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    builtin_model("smollm2-135m")
    tmp = tmp_path_factory.mktemp("smol-lifecycle")
    # float32 training: the merged model and its f32 GGUF are then float32 too, and compared with the adapter exactly
    runs = {}
    for name, answer, extra in [("sql", "SELECT count(*) FROM books",
                                 ["--merge_adapter_with_base", "--convert_to_gguf", "--gguf_outtype", "f32"]),
                                ("paris", "The answer is Paris.", [])]:
        data = write_jsonl(tmp / f"{name}.jsonl", [{"instruction": q, "output": answer} for q in QUESTIONS])
        code = main(["train", "--model_name_or_path", "smollm2-135m", "--dataset_name_or_path", str(data),
                     "--output_dir", str(tmp / name), "--max_steps", "5", "--per_device_train_batch_size", "2",
                     "--max_seq_length", "64", "--lora_r", "8", "--learning_rate", "5e-3", "--save_steps", "100",
                     "--logging_steps", "5", "--use_cpu", "--no_bf16", *extra])
        assert code == 0
        runs[name] = tmp / name
    return tmp, runs


def test_smollm2_two_adapters_through_one_base(smol):
    from tunelab import inference
    from tunelab.adapters import AdapterSession

    _, runs = smol
    session = AdapterSession("smollm2-135m", {k: str(v) for k, v in runs.items()}, use_cpu=True)
    assert session.loaded_bases == 1
    prompts = QUESTIONS[:3] * 2
    names = ["sql", "paris", "base", "paris", "base", "sql"]
    answers = session.generate(prompts, names, max_new_tokens=10)  # one mixed batch
    by = {n: [a for a, m in zip(answers, names) if m == n] for n in ("sql", "paris", "base")}
    assert by["sql"] == ["SELECT count(*) FROM books"] * 2, answers
    assert by["paris"] == ["The answer is Paris."] * 2, answers
    assert all(a not in by["sql"] + by["paris"] for a in by["base"]), answers
    for name in ("sql", "paris", "base"):
        lm = inference.load("smollm2-135m", None if name == "base" else str(runs[name]), use_cpu=True)
        alone, _ = inference.generate(lm, [[{"role": "user", "content": p}]
                                           for p, m in zip(prompts, names) if m == name], max_new_tokens=10)
        assert by[name] == alone, name


def test_smollm2_merged_and_gguf_logits(smol):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp, runs = smol
    out = runs["sql"]
    exports = json.loads((out / "train_results.json").read_text())["exports"]
    merged = AutoModelForCausalLM.from_pretrained(exports["merged_model_dir"]).eval()
    tok = AutoTokenizer.from_pretrained(exports["merged_model_dir"])
    text = tok.apply_chat_template([{"role": "user", "content": "Count the books in the shop, 2024 edition."}],
                                   tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(builtin_model("smollm2-135m")),
                                        out).eval()
    with torch.no_grad():
        reference = merged(input_ids=ids).logits
        # W + BA summed once against x@W + (x@A)@B at every step: float32 re-association, measured up to 1.5e-4 on
        # logits of magnitude up to 40
        assert torch.allclose(reference, adapter(input_ids=ids).logits, atol=5e-4)
    del adapter

    # f32, written at the end of training: exact
    gguf_dir = tmp / "gguf"
    gguf_dir.mkdir()
    shutil.copy(out / "model-f32.gguf", gguf_dir / "model-f32.gguf")
    # q8_0, through `tunelab export gguf` with the adapter merged in memory
    assert main(["export", "gguf", "--model_name_or_path", "smollm2-135m", "--adapter", str(out), "--output",
                 str(gguf_dir / "model-q8_0.gguf"), "--outtype", "q8_0", "--use_cpu"]) == 0
    for outtype in ("f32", "q8_0"):
        name = f"model-{outtype}.gguf"
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = loaded(input_ids=ids).logits
        diff = (logits - reference).abs()
        if outtype == "f32":
            assert diff.max().item() == 0.0
            gguf_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
            assert gguf_tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
            assert gguf_tok.chat_template == tok.chat_template
        else:
            top1 = (logits.argmax(-1) == reference.argmax(-1)).float().mean().item()
            assert 0 < diff.max().item() <= Q8_MAX_ABS and diff.mean().item() <= Q8_MEAN_ABS and top1 >= Q8_TOP1, \
                (diff.max().item(), diff.mean().item(), top1)
        del loaded
