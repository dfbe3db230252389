"""`tunelab train` data parallel on two CPU processes (gloo): started by tunelab itself (--num_processes 2, which
runs `accelerate launch`) and by a launcher the user runs (torchrun), against one process with the same global
batch. Two processes must train the same thing: same trainable parameters, same loss, an adapter plain peft loads.

(`accelerate launch --cpu --num_processes 2` is not among them: accelerate's --cpu path starts one process unless
mpirun is set up, so it would test nothing distributed; see examples/distributed/README.md.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tunelab.cli import main

from conftest import write_jsonl

pytestmark = pytest.mark.xdist_group("distributed")

# Eight short rows: no row is truncated or dropped at 32 tokens, and 8 = 2 global batches of 4, so the two layouts
# see the same examples in every step (a ragged last batch would be padded differently across processes).
ROWS = [{"prompt": f"Count {w}.", "completion": f"{i} {w} sum"}
        for i, w in enumerate(["books", "cats", "dogs", "the fox", "tables", "rows", "order by", "limit"])]
STEPS = 3
# Validation rows, evaluated 2 at a time: 3 batches, so the second process's last batch is accelerate's repeat of the
# first (even_batches). The validation loss must leave the repeat out, as one process has none.
VALIDATION = [{"prompt": f"Say {w}.", "completion": f"{w} {i}"}
              for i, w in enumerate(["a", "bb", "c d", "ee", "f", "g h i"])]
# Dropout off (lora_dropout 0; the tiny Llama has none), no warmup so that every step moves the weights. float32
# (--no_bf16, not the bf16 default of a CPU with bf16 instructions): split batches round bf16 matmuls differently, so
# the two layouts would agree only to bf16's precision, not to the 1e-5 compared here.
COMMON = ["--method", "lora", "--lora_r", "2", "--lora_dropout", "0", "--no_bf16", "--max_steps", str(STEPS),
          "--max_seq_length", "32", "--learning_rate", "0.01", "--warmup_ratio", "0", "--logging_steps", "1",
          "--save_steps", "100", "--seed", "7", "--use_cpu"]


def _flags(model: Path, data: Path, out: Path, batch: int) -> list[str]:
    return ["--model_name_or_path", str(model), "--dataset_name_or_path", str(data), "--output_dir", str(out),
            "--per_device_train_batch_size", str(batch), "--per_device_eval_batch_size", "2", *COMMON]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ddp")
    write_jsonl(folder / "train.jsonl", ROWS)
    write_jsonl(folder / "validation.jsonl", VALIDATION)
    return folder


@pytest.fixture(scope="module")
def single(tiny_llama, data, tmp_path_factory) -> tuple[dict, Path]:
    """The reference: one process, batch 4. One thread, as each of the two processes gets: the suite's two
    workers share two cores, and two threads per process only wait for each other (several times slower here)."""
    import torch

    out = tmp_path_factory.mktemp("single") / "out"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *_flags(tiny_llama, data, out, 4)]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((out / "train_results.json").read_text()), out


def _check_against_single(out: Path, reference: tuple[dict, Path], tiny_llama: Path) -> None:
    single, single_out = reference
    results = json.loads((out / "train_results.json").read_text())
    assert results["world_size"] == 2
    assert results["effective_batch_size"] == 4 == single["effective_batch_size"]
    assert results["trainable_params"] == single["trainable_params"]
    assert results["global_step"] == STEPS
    # Every process's tokens are counted (the Trainer gathers them); same examples, so the same count.
    assert results["train_tokens"] == single["train_tokens"] > 0
    assert results["processed_token_positions"] >= results["train_tokens"]
    # Same seed, same examples per optimizer step (accelerate shards each global batch of 4 into 2 + 2), and the
    # loss averaged over all processes' tokens (average_tokens_across_devices): the losses differ only by the
    # order of float32 sums (one batch of 4 against an all-reduce of two batches of 2), ~1e-7 relative. 1e-5 is
    # far below what a real difference makes: a per-device mean or one different example moves it by ~1e-2.
    got = [p["loss"] for p in results["loss_curve"]]
    want = [p["loss"] for p in single["loss_curve"]]
    assert len(got) == len(want) == STEPS
    assert got == pytest.approx(want, rel=1e-5)
    assert got[-1] < got[0], "the run did not train"
    # The mean loss per predicted token over the 6 validation rows, each counted once and weighed by its own
    # tokens: 5.879 against 5.799 when the repeated batch counted and each process's loss was read as its own
    # batch's mean (under several processes the Trainer divides it by all processes' tokens instead).
    assert single["final_eval_loss"] is not None
    assert results["final_eval_loss"] == pytest.approx(single["final_eval_loss"], rel=1e-5)
    # Written by the main process: the files of a one-process run, no per-process leftovers.
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in single_out.iterdir())
    # The adapter loads with plain peft, onto the plain base model.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out)
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) == results["trainable_params"]
    # ... and holds the weights the one-process run trained. Adam moves each weight by up to ~lr (1e-2) a step
    # whatever the gradient's size, so where a gradient is near zero float noise in it can move a weight by a
    # few 1e-6 (seen: 3e-6); a different batch would move weights by ~lr. atol 1e-4 = 1% of one step.
    import torch
    from safetensors.torch import load_file

    mine, theirs = (load_file(d / "adapter_model.safetensors") for d in (out, single_out))
    assert mine.keys() == theirs.keys()
    for name, tensor in mine.items():
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=1e-4)


def test_num_processes_2_starts_accelerate_and_matches_one_process(tiny_llama, data, single, tmp_path, capfd):
    out = tmp_path / "out"
    assert main(["train", *_flags(tiny_llama, data, out, 2), "--num_processes", "2"]) == 0
    captured = capfd.readouterr()
    assert "accelerate.commands.launch --multi_gpu --num_processes 2" in captured.err
    assert captured.out.count("method lora:") == 1, "only the main process reports"
    _check_against_single(out, single, tiny_llama)
    assert yaml_load(out / "tunelab_config.yaml")["num_processes"] == 2


def test_torchrun_runs_tunelab_train_unchanged(tiny_llama, data, single, tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "tunelab", "train", *_flags(tiny_llama, data, out, 2)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("method lora:") == 1
    _check_against_single(out, single, tiny_llama)


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
