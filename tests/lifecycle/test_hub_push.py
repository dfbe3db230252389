"""`tunelab push`: everything up to the network call. The model card's content, the file list for an adapter-only
and a full/merged model, and a clear error (exit 2, no traceback, no token shown) when the Hub cannot be used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main

from conftest import QA_ROWS, write_jsonl

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_seq_length", "48", "--lora_r", "4",
        "--save_steps", "1", "--logging_steps", "1", "--use_cpu"]


@pytest.fixture(scope="module")
def folders(tiny_llama, tmp_path_factory) -> dict[str, Path]:
    """A LoRA run (with a checkpoint folder, a merged model and a GGUF file inside it), its evaluation, and a full
    fine-tuning run."""
    tmp = tmp_path_factory.mktemp("hub")
    data = write_jsonl(tmp / "qa.jsonl", QA_ROWS)
    lora, full = tmp / "lora", tmp / "full"
    assert main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(data),
                 "--output_dir", str(lora), *FAST, "--merge_adapter_with_base", "--convert_to_gguf",
                 "--gguf_outtype", "q8_0"]) == 0
    assert main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(data),
                 "--output_dir", str(full), "--method", "full", *FAST]) == 0
    evals = tmp / "eval"
    assert main(["eval", "--model_name_or_path", str(tiny_llama), "--adapter", str(lora), "--task", "qa",
                 "--dataset_name_or_path", str(data), "--retention", f"language_modeling:{data}", "drift",
                 "--probe_samples", "4", "--max_new_tokens", "4", "--output_dir", str(evals), "--use_cpu"]) == 0
    return {"lora": lora, "full": full, "merged": lora / "merged", "eval": evals / "eval_results.json"}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_adapter_card_reports_training_evaluation_and_retention(folders):
    from tunelab.hub import model_card

    card = model_card(folders["lora"], repo_id="me/tiny-lora", eval_results=folders["eval"])
    meta = _front_matter(card)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "text-generation"
    assert {"tunelab", "peft", "lora"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local base folder is no Hub id: the Hub would reject it
    train = json.loads((folders["lora"] / "train_results.json").read_text())
    evals = json.loads(folders["eval"].read_text())
    assert f"{train['trainable_params']:,} of {train['total_params']:,}" in card
    assert "| method | lora |" in card and "`qa.jsonl`" in card
    assert "| rank | 4 |" in card and "| alpha | 32 |" in card  # what peft used (the method's hyperparameters)
    assert "## Evaluation: qa" in card and f"{evals['metrics'][evals['headline_metric']]:.4f}" in card
    assert "## Retention" in card and "| language_modeling:qa.jsonl | perplexity |" in card
    assert "| drift | KL from base" in card and "| learning rate | 0.0002 |" in card
    assert "PeftModel.from_pretrained(base, \"me/tiny-lora\")" in card
    assert str(folders["lora"].parent) not in card  # local directory layout is not published


def test_builtin_base_is_named_by_its_hub_id(folders, tmp_path):
    """A run on a built-in model names the real Hub model as base_model (the card is built from the results
    files only, so a copy of the run with its base renamed stands for a smollm2 run)."""
    from tunelab.hub import model_card

    run = tmp_path / "run"
    run.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors", "tunelab_config.yaml"):
        (run / name).write_bytes((folders["lora"] / name).read_bytes())
    results = json.loads((folders["lora"] / "train_results.json").read_text())
    (run / "train_results.json").write_text(json.dumps({**results, "model_name_or_path": "smollm2-135m"}))
    meta = _front_matter(model_card(run, repo_id="me/smol"))
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_full_and_merged_cards_are_transformers_models(folders):
    from tunelab.hub import model_card

    full = model_card(folders["full"], repo_id="me/tiny-full")
    assert _front_matter(full)["library_name"] == "transformers" and "a fully fine-tuned model" in full
    assert "AutoModelForCausalLM.from_pretrained(\"me/tiny-full\")" in full and "PeftModel" not in full
    merged = model_card(folders["merged"], repo_id="me/tiny-merged")
    meta = _front_matter(merged)
    assert meta["library_name"] == "transformers" and "merged-adapter" in meta["tags"] and "lora" in meta["tags"]
    assert "a merged model (adapter folded into the base)" in merged
    results = json.loads((folders["lora"] / "train_results.json").read_text())
    assert f"{results['trainable_params']:,} of" in merged  # the adapter run's figures travel with the merge


def test_file_lists_adapter_only_versus_full(folders):
    from tunelab.hub import upload_files

    files, skipped = upload_files(folders["lora"])
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "train_results.json",
            "tunelab_config.yaml"} <= set(files)
    assert not any(f.endswith(".gguf") or f == "model.safetensors" or f == "training_args.bin" for f in files)
    assert {"merged/", "checkpoint-1/", "model-q8_0.gguf"} <= set(skipped)
    files, _ = upload_files(folders["full"])
    assert {"model.safetensors", "config.json", "tokenizer.json", "train_results.json"} <= set(files)
    assert "adapter_config.json" not in files
    files, _ = upload_files(folders["merged"])
    assert {"model.safetensors", "config.json", "merge_info.json"} <= set(files)


def test_dry_run_shows_files_and_card(folders, capsys):
    code = main(["push", "--model_name_or_path", str(folders["lora"]), "--repo_id", "me/tiny-lora", "--dry_run",
                 "--eval_results", str(folders["eval"])])
    out = capsys.readouterr().out
    assert code == 0
    assert out.startswith("would upload adapter to me/tiny-lora: ") and "eval_results.json" in out
    assert "library_name: peft" in out
    # an adapter named as the other commands name one
    assert main(["push", "--adapter", str(folders["lora"]), "--repo_id", "me/tiny-lora", "--dry_run"]) == 0
    assert capsys.readouterr().out.startswith("would upload adapter to me/tiny-lora: ")


def _push(folder: Path, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tunelab", "push", "--model_name_or_path", str(folder),
                           "--repo_id", "me/tiny-lora", *extra], capture_output=True, text=True, env=env, timeout=120)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
    (tmp_path / "hf_home").mkdir(exist_ok=True)
    return {**env, "HF_HOME": str(tmp_path / "hf_home"), **extra}


def test_push_offline_is_a_clear_error(folders, tmp_path):
    done = _push(folders["lora"], _env(tmp_path, HF_HUB_OFFLINE="1", HF_TOKEN="hf_secret_value_never_shown"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: cannot upload: HF_HUB_OFFLINE is set")
    assert "Traceback" not in done.stderr and "hf_secret_value_never_shown" not in done.stderr + done.stdout


def test_push_without_token_is_a_clear_error_before_any_request(folders, tmp_path):
    done = _push(folders["merged"], _env(tmp_path, HF_HUB_OFFLINE="0"))
    assert done.returncode == 2
    line = done.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot upload: no Hugging Face token found") and "hf auth login" in line


@pytest.mark.parametrize("args,needle", [
    (["--repo_id", "not a repo"], "--repo_id not a repo: not a Hub repository id"),
    (["--repo_id", "me/x", "--eval_results", "missing.json"], "--eval_results missing.json: file not found"),
])
def test_push_bad_input(args, needle, folders, capsys):
    code = main(["push", "--model_name_or_path", str(folders["lora"]), *args, "--dry_run"])
    assert code == 2 and needle in capsys.readouterr().err


def test_push_refuses_a_folder_that_is_no_model(tmp_path, capsys):
    code = main(["push", "--model_name_or_path", str(tmp_path), "--repo_id", "me/x", "--dry_run"])
    assert code == 2 and "neither an adapter (adapter_config.json) nor a model" in capsys.readouterr().err


@pytest.mark.parametrize("four_bit", [True, False], ids=["qlora", "lora"])
def test_a_4bit_adapters_card_says_how_to_compute_as_it_was_evaluated(four_bit, tmp_path):
    """bitsandbytes' packed CPU kernel computes other logits than the path QLoRA trained and was evaluated through;
    a plain load on such a CPU uses it unless told not to."""
    from tunelab.hub import model_card

    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 16, "lora_alpha": 32}))
    (folder / "tunelab_config.yaml").write_text(yaml.safe_dump({"method": "qlora" if four_bit else "lora",
                                                                "use_4bit": four_bit}))
    card = model_card(folder, repo_id="me/adapter")
    assert ("`support_avx512bf16_for_cpu = False`" in card) is four_bit
