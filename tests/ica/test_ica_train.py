"""`tunelab train --mask_mode` and `tunelab ica build` end to end on tiny real models: masks are built, used and
gone before saving (adapters reload with plain peft), anti-drift keeps rows bit-identical through checkpoints and a
resume, every flag is wired, and bad input gets one line and exit code 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tunelab.cli import main
from tunelab.config import TrainOptions
from tunelab.ica.templates import IcaTemplates
from tunelab.run_files import ICA_TEMPLATES
from tunelab.ica.masks import zero_masks
from tunelab.training import train

from conftest import ALPACA_ROWS, write_jsonl

# float32 (not the bf16 default of a CPU with bf16 instructions): the trained model in memory is compared with a plain
# float32 reload of its saved adapter, exactly
FAST = dict(max_steps=3, per_device_train_batch_size=2, max_seq_length=48, lora_r=2, logging_steps=1, use_cpu=True,
            ica_samples=8, ica_components=3, ica_max_pca_components=32, bf16=False)


@pytest.fixture
def data(tmp_path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS * 4)


def _opts(model, data, out, **kw):
    return TrainOptions(model_name_or_path=str(model), dataset_name_or_path=str(data), output_dir=str(out),
                        **{**FAST, **kw})


def _no_masking_left(model):
    from torch.nn.utils import parametrize

    return all(not m._forward_hooks and not parametrize.is_parametrized(m) for m in model.modules())


def test_lora_preserve_builds_templates_trains_and_saves_a_plain_adapter(tiny_llama, data, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    result = train(_opts(tiny_llama, data, out, method="lora", mask_mode="preserve", learning_rate=1e-2,
                         validation_split=0.25, eval_steps=3))
    # evaluation during training sees the unmasked model too: at the last step it is the final model
    during = [e for e in result.results["eval_curve"] if e["step"] == 3][0]["eval_loss"]  # (the first of two)
    assert during == pytest.approx(result.results["final_eval_loss"], rel=1e-6)
    r = result.results["ica_masking"]
    assert r["mask_mode"] == "preserve" and r["templates_origin"] == "built" and r["component_ids"] == [0, 1, 2]
    assert r["zeroed_channels"] == 64 * len(r["masked_layers"]) - r["selected_channels"] > 0
    templates = IcaTemplates.load(out / ICA_TEMPLATES)       # saved in the output dir, in the one format
    assert len(templates.components) == 3 and templates.layout.num_layers == 2
    assert templates.build["samples"] == 8 and templates.build["dataset_name_or_path"] == str(data)

    assert _no_masking_left(result.model)
    adapter = load_file(str(out / "adapter_model.safetensors"))
    assert not any("parametriz" in k for k in adapter)
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in adapter.items()), "the adapter learned something"
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out)
    assert _no_masking_left(reloaded)
    ids = torch.randint(5, 300, (2, 9))
    result.model.eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=ids).logits, result.model(input_ids=ids).logits, atol=1e-5)
        with reloaded.disable_adapter():
            base = reloaded(input_ids=ids).logits
        assert not torch.allclose(base, reloaded(input_ids=ids).logits, atol=1e-4)


def _down_rows(state, prefix=""):
    return {i: state[f"{prefix}model.layers.{i}.mlp.down_proj.weight"] for i in range(2)}


@pytest.mark.parametrize("anti_drift", [True, False], ids=["anti-drift", "control"])
def test_full_anti_drift_keeps_non_selected_rows_bit_identical(anti_drift, tiny_llama, data, tmp_path):
    """With weight decay, rows that get no gradient still shrink (the control run shows it); anti-drift keeps them
    bit-identical in the final model and in every checkpoint, and a resumed run re-installs masks and anti-drift."""
    base = _down_rows(load_file(str(Path(tiny_llama) / "model.safetensors")))
    out = tmp_path / "full"
    opts = _opts(tiny_llama, data, out, method="full", mask_mode="preserve", anti_drift=anti_drift,
                 weight_decay=0.5, learning_rate=1e-2, warmup_ratio=0.0, save_steps=1)
    result = train(opts)
    templates = IcaTemplates.load(out / ICA_TEMPLATES)
    zeroed = zero_masks(templates.select(), "preserve", 64)       # preserve: non-selected channels are zeroed
    assert result.results["ica_masking"]["anti_drift"] is anti_drift

    def check(state, where):
        assert not any("parametriz" in k for k in state), where
        tuned = _down_rows(state)
        for layer, frozen in zeroed.items():
            same = torch.equal(tuned[layer][frozen], base[layer][frozen])
            assert same is anti_drift, f"{where}: layer {layer} frozen rows identical={same}"
            assert (tuned[layer][~frozen] != base[layer][~frozen]).any(), f"{where}: selected rows train"

    check(load_file(str(out / "model.safetensors")), "final model")
    if not anti_drift:
        return
    check(load_file(str(out / "checkpoint-1" / "model.safetensors")), "checkpoint-1")
    # Interrupt after step 2: the re-run resumes from checkpoint-2 with the templates it built before.
    shutil.rmtree(out / "checkpoint-3")
    for name in ("model.safetensors", "train_results.json"):
        (out / name).unlink()
    resumed = train(opts)
    assert resumed.results["global_step"] == 3
    assert resumed.results["ica_masking"]["templates_origin"] == "reused"
    check(load_file(str(out / "model.safetensors")), "resumed model")


def _gpt2(tmp_path, tokenizer) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=4, n_positions=128,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.bos_token_id)
    path = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_cli_build_then_train_with_every_flag_and_a_foreign_template(tiny_llama, tiny_tokenizer, data, tmp_path,
                                                                      capsys):
    llama_t = tmp_path / "llama.json"
    build = ["ica", "build", "--dataset_name_or_path", str(data), "--samples", "10", "--components", "4",
             "--percentile", "95", "--max_pca_components", "16", "--max_seq_length", "64", "--seed", "1",
             "--batch_size", "4"]
    assert main([*build, "--model_name_or_path", str(tiny_llama), "--output", str(llama_t)]) == 0
    stdout = capsys.readouterr().out
    assert f"templates: {llama_t}" in stdout and "4 components" in stdout
    t = IcaTemplates.load(llama_t)
    assert t.build["seed"] == 1 and t.build["max_seq_length"] == 64 and t.build["pca_components"] == 16
    assert t.build["sequences"] == 10 and t.build["percentile"] == 95.0
    assert all(sum(map(len, c.values())) == 7 for c in t.components)   # top 5% of 128 pairs

    out = tmp_path / "lesion"
    args = ["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(data), "--output_dir",
            str(out), "--max_steps", "2", "--per_device_train_batch_size", "2", "--max_seq_length", "48",
            "--lora_r", "2", "--use_cpu", "--mask_mode", "lesion", "--ica_templates", str(llama_t)]
    layer = max(t.components[1], key=lambda k: len(t.components[1][k]))
    assert main([*args, "--ica_component_ids", "1", "--ica_mask_layers", str(layer), "--anti_drift"]) == 0
    r = json.loads((out / "train_results.json").read_text())["ica_masking"]
    assert r["component_ids"] == [1] and r["masked_layers"] == [layer] and r["anti_drift"] is True
    assert r["selected_channels"] == r["zeroed_channels"] == len(t.components[1][layer])
    assert r["templates_origin"] == "file"
    assert IcaTemplates.load(out / ICA_TEMPLATES).components == t.components   # copied for the record
    capsys.readouterr()

    gpt2_t = tmp_path / "gpt2.json"
    assert main([*build, "--model_name_or_path", str(_gpt2(tmp_path, tiny_tokenizer)), "--output", str(gpt2_t)]) == 0
    assert IcaTemplates.load(gpt2_t).layout.describe() == "gpt2 (GPT2LMHeadModel), 3 layers, hidden size 32"
    capsys.readouterr()
    foreign = tmp_path / "foreign"
    args[args.index(str(out))] = str(foreign)
    args[args.index(str(llama_t))] = str(gpt2_t)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --ica_templates") and "gpt2 (GPT2LMHeadModel), 3 layers, hidden size 32" in err
    assert "llama (LlamaForCausalLM), 2 layers, hidden size 64" in err and "tunelab ica build" in err
    assert not foreign.exists()


BAD = {
    "anti_drift_without_mode": (["--anti_drift"], "--anti_drift has no effect without --mask_mode"),
    "templates_without_mode": (["--ica_templates", "t.json"], "--ica_templates has no effect without --mask_mode"),
    "ids_without_mode": (["--ica_component_ids", "0"], "--ica_component_ids has no effect"),
    "layers_without_mode": (["--ica_mask_layers", "0"], "--ica_mask_layers has no effect"),
    "unknown_mode": (["--mask_mode", "keep"], "invalid choice: 'keep'"),
    "anti_drift_method": (["--mask_mode", "lesion", "--method", "ia3", "--anti_drift"],
                          "--anti_drift restricts the rows of down_proj"),
    "missing_templates": (["--mask_mode", "lesion", "--ica_templates", "nope.json"],
                          "--ica_templates nope.json: file not found"),
    "bad_layer_range": (["--mask_mode", "lesion", "--ica_mask_layers", "3:1"], "--ica_mask_layers 3:1"),
    "layer_out_of_range": (["--mask_mode", "lesion", "--ica_mask_layers", "0,5"], "layer 5 does not exist"),
    "component_out_of_range": (["--mask_mode", "preserve", "--ica_component_ids", "0,7"],
                               "--ica_component_ids 7: the templates hold components 0 to 2"),
    "percentile": (["--mask_mode", "preserve", "--ica_percentile", "100"], "--ica_percentile 100.0: must be in"),
    "too_few_tokens": (["--mask_mode", "preserve", "--ica_components", "500", "--ica_max_pca_components", "600"],
                       "or lower --ica_components"),
    "not_a_decoder": (["--mask_mode", "lesion", "--model_name_or_path", "T5"], "ICA masking works on decoder-only"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_masking_flags_are_one_clear_line(case, tiny_llama, tiny_t5, data, tmp_path, capsys):
    extra, needle = BAD[case]
    extra = [str(tiny_t5) if x == "T5" else x for x in extra]
    out = tmp_path / "out"
    model = [] if "--model_name_or_path" in extra else ["--model_name_or_path", str(tiny_llama)]
    code = main(["train", *model, "--dataset_name_or_path", str(data), "--output_dir", str(out), "--max_steps", "1",
                 "--use_cpu", "--ica_samples", "8", "--ica_components", "3", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and needle in line and "Traceback" not in err, line
    assert not out.exists()


def test_boolean_and_mode_flags_can_be_turned_off(tiny_llama, data, tmp_path):
    from tunelab.options import parse_options

    opts, _ = parse_options(TrainOptions, ["--model_name_or_path", "m", "--dataset_name_or_path", "d",
                                           "--output_dir", "o", "--mask_mode", "lesion", "--anti_drift", "false",
                                           "--ica_component_ids", "0,2", "--ica_mask_layers", "0,2:5"],
                            "tunelab train", "")
    assert opts.anti_drift is False and opts.mask_mode == "lesion"
    assert opts.ica_component_ids == [0, 2] and opts.ica_mask_layers == "0,2:5"
    # --mask_mode none trains without masks even with the build settings given (they have defaults)
    result = train(_opts(tiny_llama, data, tmp_path / "none", mask_mode="none", max_steps=1))
    assert "ica_masking" not in result.results and not (tmp_path / "none" / ICA_TEMPLATES).exists()


def test_ica_command_usage_errors(capsys):
    assert main(["ica", "frobnicate"]) == 2
    assert "unknown action 'frobnicate'; the action is build" in capsys.readouterr().err
    assert main(["ica", "build", "--model_name_or_path", "m"]) == 2
    assert "missing required option(s): --dataset_name_or_path, --output" in capsys.readouterr().err
    assert main(["ica", "--help"]) == 0 and "tunelab ica build" in capsys.readouterr().out


def test_anti_drift_without_weight_decay_changes_nothing_and_says_so(tiny_llama, data, tmp_path, caplog):
    """The rows anti-drift freezes are those of zeroed channels, which get no gradient; without weight decay
    nothing moves them, so the trained weights equal the mask's alone, and the run says so."""
    runs = {}
    for anti_drift in (False, True):
        with caplog.at_level("WARNING", logger="tunelab.ica.training"):
            caplog.clear()
            train(_opts(tiny_llama, data, tmp_path / str(anti_drift), method="full", mask_mode="lesion",
                        anti_drift=anti_drift, weight_decay=0.0, learning_rate=1e-2, warmup_ratio=0.0))
        assert ("--anti_drift changes nothing here" in caplog.text) is anti_drift
        runs[anti_drift] = load_file(str(tmp_path / str(anti_drift) / "model.safetensors"))
    assert runs[True].keys() == runs[False].keys()
    assert all(torch.equal(runs[True][k], runs[False][k]) for k in runs[True])
