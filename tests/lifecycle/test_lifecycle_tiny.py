"""The adapter lifecycle on tiny real models: several adapters through one loaded base (`tunelab generate`),
merging (`tunelab merge`), GGUF export and its round trip through transformers (`tunelab export gguf`), and the
same two steps at the end of `tunelab train`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from tunelab.cli import main

from conftest import write_jsonl

QUESTIONS = ["Count the books.", "Name the capital of France.", "Translate to French.", "Give the label.",
             "What is the sum?", "Summarize the dialogue."]
FAST = ["--max_steps", "60", "--per_device_train_batch_size", "6", "--max_seq_length", "48", "--lora_r", "4",
        "--save_steps", "1000", "--logging_steps", "60", "--use_cpu"]


def _train(tmp: Path, base, name: str, answer: str, *extra: str) -> Path:
    data = write_jsonl(tmp / f"{name}.jsonl", [{"instruction": q, "input": "", "output": answer} for q in QUESTIONS])
    out = tmp / name
    code = main(["train", "--model_name_or_path", str(base), "--dataset_name_or_path", str(data),
                 "--output_dir", str(out), *FAST, *extra])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def runs(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """A fully fine-tuned tiny base that answers 'positive' (so that 'base' answers are not empty), and adapters
    trained on it for different one-answer tasks: two LoRA, one DoRA (no mixed batches in peft), one prompt tuning.
    The first LoRA run also merges and writes a GGUF file at the end of training."""
    tmp = tmp_path_factory.mktemp("lifecycle")
    base = _train(tmp, tiny_llama, "fullbase", "positive", "--method", "full", "--learning_rate", "1e-3",
                  "--max_steps", "24")
    return {
        "base": base,
        "sql": _train(tmp, base, "sql", "SELECT count(*) FROM books", "--learning_rate", "1e-2",
                      "--merge_adapter_with_base", "--convert_to_gguf", "--gguf_outtype", "f32"),
        "paris": _train(tmp, base, "paris", "Paris", "--learning_rate", "1e-2"),
        "chat": _train(tmp, base, "chat", "le chat", "--method", "dora", "--learning_rate", "1e-2"),
        "soft": _train(tmp, base, "soft", "negative", "--method", "prompt_tuning", "--num_virtual_tokens", "4",
                       "--max_steps", "4"),
    }


def _alone(base, adapter, prompts) -> list[str]:
    from tunelab import inference

    lm = inference.load(str(base), None if adapter is None else str(adapter), use_cpu=True)
    return inference.generate(lm, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens=8)[0]


def test_adapters_switch_per_prompt_through_one_base(runs):
    from tunelab.adapters import AdapterSession

    session = AdapterSession(str(runs["base"]), {k: str(runs[k]) for k in ("sql", "paris", "chat")}, use_cpu=True)
    assert session.loaded_bases == 1 and session.names == ["base", "sql", "paris", "chat"]
    info = session.adapter_info()
    assert info["sql"]["mixed_batches"] and not info["chat"]["mixed_batches"]  # DoRA: grouped, set_adapter
    prompts = QUESTIONS[:4] * 2
    names = ["sql", "paris", "base", "chat", "paris", "sql", "chat", "base"]
    answers = session.generate(prompts, names, max_new_tokens=8)
    by = {n: [a for a, m in zip(answers, names) if m == n] for n in set(names)}
    assert by["sql"] == ["SELECT count(*)"] * 2, answers
    assert by["paris"] == ["Paris"] * 2 and by["chat"] == ["le chat"] * 2, answers
    assert by["base"][0] and by["base"][0] not in ("SELECT count(*)", "Paris", "le chat")
    for name in ("sql", "paris", "chat", "base"):  # each equals that adapter (or the plain base) loaded alone
        expected = _alone(runs["base"], None if name == "base" else runs[name],
                          [p for p, m in zip(prompts, names) if m == name])
        assert by[name] == expected, name


def test_generate_cli_input_file_mixed_methods(runs, tmp_path, capsys):
    """Adapters of different peft types cannot share a peft model: the prompt-tuning adapter gets its own copy of
    the base, and its answers still equal the adapter loaded alone."""
    rows = [{"prompt": "Count the books.", "adapter": "sql"}, {"instruction": "Translate to French."},
            {"messages": [{"role": "user", "content": "Give the label."}], "adapter": "soft"},
            {"question": "What is the sum?", "adapter": "base"}]
    inputs = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "answers.jsonl"
    code = main(["generate", "--model_name_or_path", str(runs["base"]), "--adapter", f"sql={runs['sql']}",
                 "--adapter", f"soft={runs['soft']}", "--input_file", str(inputs), "--use", "sql",
                 "--max_new_tokens", "8", "--output_file", str(out), "--use_cpu"])
    assert code == 0, capsys.readouterr().err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["adapter"] for g in got] == ["sql", "sql", "soft", "base"]
    assert got[0]["response"] == got[1]["response"] == "SELECT count(*)"
    assert got[1]["instruction"] == "Translate to French."  # the input row travels with its answer
    assert got[2]["response"] == _alone(runs["base"], runs["soft"], ["Give the label."])[0]
    assert got[3]["response"] == _alone(runs["base"], None, ["What is the sum?"])[0]


def test_generate_single_prompt_prints_the_answer(runs, capsys):
    code = main(["generate", "--model_name_or_path", str(runs["base"]), "--adapter", f"paris={runs['paris']}",
                 "--prompt", "Name the capital of France.", "--max_new_tokens", "8", "--use_cpu"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "Paris"


def test_generate_finds_the_base_its_adapters_were_trained_on(runs, other_base, tmp_path, capsys):
    """As tunelab eval and merge do: left out, --model_name_or_path is the base the adapters name; adapters that
    name different bases are one line."""
    import shutil

    import yaml

    code = main(["generate", "--adapter", f"paris={runs['paris']}", f"sql={runs['sql']}", "--use", "paris",
                 "--prompt", "Name the capital of France.", "--max_new_tokens", "8", "--use_cpu"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip().splitlines()[-1] == "Paris"
    assert f"--model_name_or_path {runs['base']}: the base --adapter {runs['paris']} was trained on" in captured.err
    elsewhere = shutil.copytree(runs["sql"], tmp_path / "elsewhere")
    saved = yaml.safe_load((elsewhere / "tunelab_config.yaml").read_text())
    (elsewhere / "tunelab_config.yaml").write_text(yaml.safe_dump({**saved, "model_name_or_path": str(other_base)}))
    code = main(["generate", "--adapter", f"paris={runs['paris']}", f"sql={elsewhere}", "--use", "paris",
                 "--prompt", "x", "--use_cpu"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "the adapters were trained on different bases" in line
    assert f"sql: {other_base}" in line and "pass --model_name_or_path" in line


@pytest.fixture(scope="module")
def other_base(tmp_path_factory, tiny_tokenizer) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    out = tmp_path_factory.mktemp("other") / "other-llama"
    LlamaForCausalLM(config).save_pretrained(out)
    tiny_tokenizer.save_pretrained(out)
    return out


def _bad_generate(runs, other_base, tmp_path):
    inputs = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "a", "adapter": "sql"}, {"prompt": "b", "adapter": "sqll"}])
    base, sql = str(runs["base"]), f"sql={runs['sql']}"
    return {
        "unknown_adapter_in_file": (["--model_name_or_path", base, "--adapter", sql, "--input_file", str(inputs)],
                                    ["in.jsonl line 2", "no adapter named 'sqll'", "loaded: base, sql"]),
        "unknown_use": (["--model_name_or_path", base, "--adapter", sql, "--prompt", "x", "--use", "chat"],
                        ["--use chat", "no adapter of that name"]),
        "different_base": (["--model_name_or_path", str(other_base), "--adapter", sql, "--prompt", "x"],
                           ["made for another base model", "pass the base model it was trained on"]),
        "reserved_name": (["--model_name_or_path", base, "--adapter", f"base={runs['sql']}", "--prompt", "x"],
                          ["'base' is not a usable adapter name"]),
        "prefix_name": (["--model_name_or_path", base, "--adapter", f"lora={runs['sql']}", "--prompt", "x"],
                        ["weight prefix 'lora_'"]),
        "not_an_adapter": (["--model_name_or_path", base, "--adapter", f"x={tmp_path}", "--prompt", "x"],
                           ["no adapter_config.json"]),
        "no_adapter_named": (["--model_name_or_path", base, "--adapter", sql, f"paris={runs['paris']}",
                              "--prompt", "x"], ["several adapters are loaded", "--use NAME"]),
    }


@pytest.mark.parametrize("case", ["unknown_adapter_in_file", "unknown_use", "different_base", "reserved_name",
                                  "prefix_name", "not_an_adapter", "no_adapter_named"])
def test_generate_bad_input_is_one_clear_line(case, runs, other_base, tmp_path, capsys):
    args, needles = _bad_generate(runs, other_base, tmp_path)[case]
    code = main(["generate", *args, "--use_cpu"])
    err = capsys.readouterr().err
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in line, line


def test_merge_gives_a_plain_model_with_the_adapter_logits(runs, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # By default the adapter is merged into the base in the dtype the run trained it in (bf16 where bf16 is the
    # default); --torch_dtype float32 merges at full precision, which the exact logits check below needs.
    default = tmp_path / "merged-default"
    code = main(["merge", "--model_name_or_path", str(runs["base"]), "--adapter", str(runs["paris"]),
                 "--output_dir", str(default), "--use_cpu"])
    assert code == 0, capsys.readouterr().err
    from tunelab.inference import read_run_config

    trained_bf16 = read_run_config(runs["paris"]).get("bf16") is True
    saved = AutoModelForCausalLM.from_pretrained(default, dtype="auto")
    assert saved.dtype == (torch.bfloat16 if trained_bf16 else torch.float32)
    out = tmp_path / "merged"
    code = main(["merge", "--model_name_or_path", str(runs["base"]), "--adapter", str(runs["paris"]),
                 "--output_dir", str(out), "--use_cpu", "--torch_dtype", "float32"])
    assert code == 0, capsys.readouterr().err
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(runs["base"]), runs["paris"]).eval()
    batch = AutoTokenizer.from_pretrained(out)(["Name the capital of France. Paris"], return_tensors="pt")
    with torch.no_grad():
        a, b = merged(**batch).logits, adapter(**batch).logits
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
    # the merged folder answers like the adapter, with the template it was trained with
    assert _alone(out, None, ["Name the capital of France."]) == ["Paris"]
    info = json.loads((out / "merge_info.json").read_text())
    assert info["method"] == "lora" and info["adapter_train_results"]["method"] == "lora"


def test_an_adapter_alone_is_merged_into_and_evaluated_on_the_base_it_was_trained_on(runs, tmp_path, capsys):
    # (as `tunelab diagnose --mitigate` tells the user to run it: `tunelab eval --adapter DIR`)
    out = tmp_path / "merged"
    assert main(["merge", "--adapter", str(runs["paris"]), "--output_dir", str(out), "--use_cpu"]) == 0
    assert json.loads((out / "merge_info.json").read_text())["base_model_name_or_path"] == str(runs["base"])
    assert f"adapter into {runs['base']}" in capsys.readouterr().out
    evaluated = tmp_path / "eval"
    assert main(["eval", "--adapter", str(runs["paris"]), "--retention", "general_knowledge", "--probe_samples", "2",
                 "--max_new_tokens", "4", "--output_dir", str(evaluated), "--use_cpu"]) == 0
    results = json.loads((evaluated / "eval_results.json").read_text())
    assert results["model_name_or_path"] == str(runs["base"]) and results["adapter"] == str(runs["paris"])


def test_merge_refuses_unmergeable_methods_and_writes_nothing(runs, tmp_path, capsys):
    out = tmp_path / "merged"
    code = main(["merge", "--model_name_or_path", str(runs["base"]), "--adapter", str(runs["soft"]),
                 "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "prompt_tuning adapters cannot be merged" in err and "tunelab generate" in err
    assert not out.exists()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("outtype,tolerance,flag", [("f32", 0.0, "--output"), ("f16", 2e-3, "--outfile"),
                                                    ("q8_0", 3e-2, "--output")])
def test_gguf_round_trip_through_transformers(outtype, tolerance, flag, runs, tmp_path, capsys):
    """Export base + adapter (merged), load the file back with transformers' GGUF loader: same tokenizer, same
    chat template, and logits equal to the merged model's (exactly for f32). --outfile is llama.cpp's name."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.merge import load_merged

    path = tmp_path / f"tiny-{outtype}.gguf"
    code = main(["export", "gguf", "--model_name_or_path", str(runs["base"]), "--adapter", str(runs["chat"]),
                 flag, str(path), "--outtype", outtype, "--use_cpu"])
    assert code == 0, capsys.readouterr().err
    assert f"wrote {path}" in capsys.readouterr().out
    source = load_merged(str(runs["base"]), str(runs["chat"]))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    text = source.tokenizer.apply_chat_template([{"role": "user", "content": "Translate to French: 12 cats."}],
                                                tokenize=False, add_generation_prompt=True)
    ids = source.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    assert tok.chat_template == source.tokenizer.chat_template
    assert (tok.eos_token, tok.pad_token) == (source.tokenizer.eos_token, source.tokenizer.pad_token)
    x = torch.tensor([ids])
    diff = (_logits(loaded, x) - _logits(source.model, x)).abs().max().item()
    assert diff <= tolerance, diff
    if outtype != "f32":
        assert diff > 0  # the weights really were stored in the smaller type


def test_gguf_export_refuses_other_architectures(tiny_t5, tmp_path, capsys):
    out = tmp_path / "t5.gguf"
    code = main(["export", "gguf", "--model_name_or_path", str(tiny_t5), "--output", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "supports the Llama family" in err and "not model_type 't5'" in err and "smollm2-135m" in err
    assert not out.exists()


def test_train_merges_and_converts_at_the_end(runs, tmp_path):
    from transformers import AutoModelForCausalLM

    out = runs["sql"]
    results = json.loads((out / "train_results.json").read_text())
    exports = results["exports"]
    assert Path(exports["merged_model_dir"]) == out / "merged"
    gguf = exports["gguf"]["f32"]
    assert Path(gguf["gguf_file"]) == out / "model-f32.gguf" and gguf["gguf_tensor_types"] == {"F32": 20}
    # (the merged folder holds the run's dtype, bf16 where it trained in bf16: read in float32, as the f32 GGUF is)
    merged = AutoModelForCausalLM.from_pretrained(out / "merged", dtype=torch.float32).eval()
    # (transformers reads a folder holding adapter_config.json as an adapter, so the file is loaded from elsewhere)
    (tmp_path / "model-f32.gguf").symlink_to(out / "model-f32.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="model-f32.gguf", dtype=torch.float32).eval()
    x = torch.tensor([[5, 17, 42, 99, 3]])
    assert torch.equal(_logits(merged, x), _logits(loaded, x))
    assert _alone(out / "merged", None, ["Count the books."]) == ["SELECT count(*)"]


@pytest.mark.parametrize("method,flags,needle", [
    ("prompt_tuning", ["--merge_adapter_with_base"], "prompt_tuning adapters cannot be merged"),
    ("prompt_tuning", ["--convert_to_gguf"], "--convert_to_gguf: --method prompt_tuning adapters cannot be merged"),
    ("full", ["--merge_adapter_with_base"], "there is no adapter to merge"),
])
def test_train_refuses_impossible_exports_before_training(method, flags, needle, tiny_llama, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"instruction": q, "output": "x"} for q in QUESTIONS])
    out = tmp_path / "out"
    code = main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(data),
                 "--output_dir", str(out), "--method", method, *flags, *FAST])
    err = capsys.readouterr().err
    assert code == 2 and needle in err
    assert not out.exists()


def test_train_convert_to_gguf_refuses_other_architectures(tiny_t5, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", [{"input": q, "target": "x"} for q in QUESTIONS])
    out = tmp_path / "out"
    code = main(["train", "--model_name_or_path", str(tiny_t5), "--dataset_name_or_path", str(data),
                 "--output_dir", str(out), "--convert_to_gguf", *FAST])
    err = capsys.readouterr().err
    assert code == 2 and "--convert_to_gguf: GGUF export supports the Llama family" in err
    assert not out.exists()


def test_export_checks_install_and_convert_nothing(tmp_path, monkeypatch):
    """lifecycle.check runs before anything is loaded: it reads a built-in model's architecture without fetching or
    converting the model (an empty cache stays empty), and still refuses what cannot be exported."""
    from tunelab import lifecycle
    from tunelab.config import TrainOptions
    from tunelab.errors import TunelabError

    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNELAB_CACHE", str(cache))
    opts = TrainOptions(model_name_or_path="smollm2-135m", dataset_name_or_path="d.jsonl", output_dir="out",
                        method="lora", convert_to_gguf=True)
    lifecycle.check(opts)  # a Llama-family model: accepted
    assert not cache.exists()
    with pytest.raises(TunelabError, match="not model_type 'bert'"):
        lifecycle.check(TrainOptions(**{**vars(opts), "model_name_or_path": "minilm-l6"}))
    assert not cache.exists()


def test_a_runs_weights_are_as_readable_as_its_results(runs):
    """safetensors writes 0600 files; a run's folder (its weights, the merged model and GGUF file written at the end
    of training) takes the permissions the umask asks for, as its JSON results do."""
    mask = os.umask(0)
    os.umask(mask)
    for name in ("base", "sql"):
        files = [p for p in runs[name].rglob("*") if p.is_file()]
        assert any(p.suffix == ".safetensors" for p in files)
        wrong = {str(p.relative_to(runs[name])): oct(p.stat().st_mode & 0o777) for p in files
                 if p.stat().st_mode & 0o777 != 0o666 & ~mask}
        assert not wrong, f"{name}: {wrong} (umask {oct(mask)})"
