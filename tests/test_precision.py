"""bf16 by default where the hardware runs it fast: the rule (fed the CPU's flags, so any machine can be simulated
without mocking), the flags that turn it on and off, and what a run saves about it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tunelab import precision
from tunelab.cli import main
from tunelab.config import CompareOptions, TrainOptions
from tunelab.options import build, load_yaml_config, parse_options

EPYC_FLAGS = {"fpu", "sse2", "avx2", "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
SAPPHIRE_RAPIDS_FLAGS = {"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"}
NO_BF16_FLAGS = {"fpu", "sse2", "avx2", "avx512f", "avx512bw"}  # AVX-512 without its bf16 extension


def test_cpu_with_avx512_bf16_defaults_to_bf16():
    p = precision.decide(bf16=None, fp16=False, on_gpu=False, cpu_flags=EPYC_FLAGS)
    assert (p.bf16, p.name) == (True, "bf16")
    assert p.reason == "auto: this CPU has avx512_bf16"


def test_cpu_with_amx_defaults_to_bf16():
    p = precision.decide(bf16=None, fp16=False, on_gpu=False, cpu_flags=SAPPHIRE_RAPIDS_FLAGS)
    assert p.bf16 and "amx_bf16" in p.reason


def test_cpu_without_bf16_instructions_defaults_to_float32():
    p = precision.decide(bf16=None, fp16=False, on_gpu=False, cpu_flags=NO_BF16_FLAGS)
    assert (p.bf16, p.fp16, p.name) == (False, False, "fp32")
    assert p.reason.startswith("CPU without bf16 instructions")


def test_explicit_choices_win_over_the_hardware():
    off = precision.decide(bf16=False, fp16=False, on_gpu=False, cpu_flags=EPYC_FLAGS)
    assert off.name == "fp32" and "--no_bf16" in off.reason
    on = precision.decide(bf16=True, fp16=False, on_gpu=False, cpu_flags=NO_BF16_FLAGS)
    assert on.name == "bf16" and on.reason == "--bf16 asked"
    fp16 = precision.decide(bf16=None, fp16=True, on_gpu=True, gpu_bf16=True)
    assert fp16.name == "fp16" and "fp16" in fp16.reason


@pytest.mark.parametrize("gpu_bf16, expected", [(True, "bf16"), (False, "fp32"), (None, "bf16")])
def test_gpu_default(gpu_bf16, expected):
    p = precision.decide(bf16=None, fp16=False, on_gpu=True, gpu_bf16=gpu_bf16)
    assert p.name == expected
    if gpu_bf16 is None:
        assert "assumed" in p.reason


def test_cpu_flags_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    flags = precision.cpu_flags(info)
    assert "avx512_bf16" in flags and "AuthenticAMD" not in flags
    assert precision.decide(bf16=None, fp16=False, on_gpu=False, cpu_flags=flags).bf16


def test_the_cpu_model_is_named_with_its_family_and_model(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                    "model name\t: AMD EPYC\nflags\t\t: fpu\n\nprocessor\t: 1\nmodel name\t: AMD EPYC\n")
    assert precision.cpu_model(info) == "AMD EPYC (family 25, model 17)"
    info.write_text("processor\t: 0\nflags\t\t: fpu\n")  # (an ARM board's cpuinfo names no model)
    assert precision.cpu_model(info) is None and precision.cpu_model(tmp_path / "missing") is None


def test_four_bit_compute_dtype_follows_the_run():
    f = precision.four_bit_compute_dtype
    assert f("auto", bf16=True, on_gpu=False) == torch.bfloat16   # no float32 copy for autocast to cast again
    assert f("auto", bf16=False, on_gpu=False) == torch.float32
    assert f("auto", bf16=False, on_gpu=True, gpu_bf16=True) == torch.bfloat16
    assert f("auto", bf16=True, on_gpu=True, gpu_bf16=False) == torch.float32
    assert f("float16", bf16=True, on_gpu=False) == torch.float16


# --- flags ----------------------------------------------------------------------------------------------------------

REQUIRED = ["--model_name_or_path", "m", "--dataset_name_or_path", "d", "--output_dir", "o"]


@pytest.mark.parametrize("argv, expected", [([], None), (["--bf16"], True), (["--bf16", "true"], True),
                                            (["--bf16", "false"], False), (["--no_bf16"], False)])
def test_bf16_flags_parse(argv, expected):
    opts, explicit = parse_options(TrainOptions, [*REQUIRED, *argv], "tunelab train", "")
    assert opts.bf16 is expected
    assert ("bf16" in explicit) == (expected is not None)


def test_bf16_in_yaml_and_in_a_saved_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("bf16: true\nprecision: bf16\nprecision_reason: '--bf16 asked'\n")
    values = load_yaml_config(config, TrainOptions)  # a saved tunelab_config.yaml goes back in as --config
    assert values == {"bf16": True}
    config.write_text("bf16: false\n")
    opts, _ = build(TrainOptions, (dict(model_name_or_path="m", dataset_name_or_path="d", output_dir="o"), "t"),
                    (load_yaml_config(config, TrainOptions), "--config"))
    assert opts.bf16 is False


def test_compare_takes_no_bf16():
    opts, _ = parse_options(CompareOptions, ["--recipe", "demo", "--no_bf16"], "tunelab compare", "")
    assert opts.bf16 is False
    from tunelab.comparison.api import recipe_from_options

    recipe = recipe_from_options(opts)
    assert recipe.budget["bf16"] is False  # shared by every run, and part of the runs' keys
    default = recipe_from_options(parse_options(CompareOptions, ["--recipe", "demo"], "tunelab compare", "")[0])
    assert "bf16" not in default.budget
    assert recipe.run_key(recipe.methods[0], 0) != default.run_key(default.methods[0], 0)


def test_train_help_states_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--no_bf16" in text and "avx512_bf16" in text
    assert "on this machine:" in text


# --- what a run saves -------------------------------------------------------------------------------------------

FAST = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--max_seq_length", "32", "--lora_r", "2",
        "--save_steps", "100", "--use_cpu"]


def test_saved_config_and_results_say_which_precision_and_why(tiny_llama, alpaca_file, tmp_path, capsys):
    from types import SimpleNamespace

    here = precision.for_options(SimpleNamespace(bf16=None, fp16=False, use_cpu=True))
    for argv, name, reason in (([], here.name, here.reason), (["--no_bf16"], "fp32", "--no_bf16")):
        out = tmp_path / f"out{len(argv)}"
        code = main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(alpaca_file),
                     "--output_dir", str(out), *FAST, *argv])
        err = capsys.readouterr().err
        assert code == 0, err
        saved = yaml.safe_load((out / "tunelab_config.yaml").read_text())
        results = json.loads((out / "train_results.json").read_text())
        for record in (saved, results):
            assert record["precision"] == name and reason in record["precision_reason"]
        assert saved["bf16"] is (name == "bf16")
        assert f"precision: {name} (" in err  # logged at start
    # the saved file reproduces the run as --config: recognised as the same finished run
    code = main(["train", "--config", str(tmp_path / "out1" / "tunelab_config.yaml")])
    assert code == 0 and "already holds this finished run" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU does")
def test_bf16_trains_on_a_machine_without_a_gpu_without_use_cpu(tiny_llama, alpaca_file, tmp_path, capsys):
    """The README's first command has no --use_cpu: on a machine without a GPU the run is on the CPU anyway, and
    transformers refuses bf16 there unless told use_cpu (a traceback before this was handled)."""
    code = main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(alpaca_file),
                 "--output_dir", str(tmp_path / "out"), "--bf16", *[a for a in FAST if a != "--use_cpu"]])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "out" / "train_results.json").read_text())["precision"] == "bf16"


# --- training under bf16 on the CPU -------------------------------------------------------------------------------

def _bf16_run(method, model, data, out, **extra):
    from tunelab.config import TrainOptions
    from tunelab.training import train

    opts = TrainOptions(model_name_or_path=str(model), dataset_name_or_path=str(data), output_dir=str(out),
                        method=method, max_steps=4, logging_steps=1, per_device_train_batch_size=4,
                        max_seq_length=48, lora_r=4, lora_alpha=8, learning_rate=5e-3, warmup_ratio=0.0,
                        lr_scheduler_type="constant", save_steps=100, seed=0, use_cpu=True, bf16=True, **extra)
    return train(opts)


def test_lora_under_bf16_keeps_a_bf16_base_and_float32_trainable_tensors(tiny_bert, classification_file, tmp_path):
    result = _bf16_run("lora", tiny_bert, classification_file, tmp_path / "out")
    r = result.results
    assert r["precision"] == "bf16" and r["precision_reason"] == "--bf16 asked"
    trainable = {n: p.dtype for n, p in result.model.named_parameters() if p.requires_grad}
    assert any("classifier" in n or "score" in n for n in trainable)  # the head peft trains in full
    assert set(trainable.values()) == {torch.float32}, trainable
    frozen = {p.dtype for p in result.model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert all(map(lambda x: x == x, [p["loss"] for p in r["loss_curve"]]))


def test_qlora_trains_on_the_cpu_under_bf16(tiny_llama, alpaca_file, tmp_path):
    """bitsandbytes' CPU path: 4-bit weights dequantized to bf16 (the compute dtype of a bf16 run) for each matmul."""
    result = _bf16_run("qlora", tiny_llama, alpaca_file, tmp_path / "out", tensor_peak=True)
    r = result.results
    curve = [p["loss"] for p in r["loss_curve"]]
    assert len(curve) == 4 and all(x == x and x < 1e4 for x in curve)
    import bitsandbytes as bnb

    layers = [m for m in result.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and {m.compute_dtype for m in layers} == {torch.bfloat16}
    assert {p.dtype for p in result.model.parameters() if p.requires_grad} == {torch.float32}
    assert r["peak_tensor_bytes"] > 0 and r["peak_tensor_steps"] == 2
