"""`tunelab train --track_retention` and `--max_forgetting` on a tiny model: curves that start at the base (0) and
grow as the model overfits unrelated data, and a forgetting budget that keeps the last checkpoint within it."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main
from tunelab.config import TrainOptions
from tunelab.training import train

from conftest import CORPUS, write_jsonl

ROWS = [
    {"instruction": "Count the books.", "input": "", "output": "SELECT count(*) FROM books"},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital"},
    {"instruction": "Translate to French.", "input": "the cat", "output": "le chat sat on the mat"},
    {"instruction": "Give the label.", "input": "a fine sentence", "output": "positive label sentence"},
]

def _data(tmp_path):
    """Train and validation the same four rows: one repeated batch of four, every step."""
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    write_jsonl(d / "train.jsonl", ROWS)
    write_jsonl(d / "validation.jsonl", ROWS)
    return d


def _options(tiny_llama, tmp_path, name, **extra):
    values = dict(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(_data(tmp_path)),
                  output_dir=str(tmp_path / name), method="full", max_steps=8, eval_steps=2, logging_steps=1,
                  per_device_train_batch_size=4, max_seq_length=64, learning_rate=3e-3, warmup_ratio=0.0,
                  lr_scheduler_type="constant", save_steps=100, seed=0, use_cpu=True, track_samples=8,
                  per_device_eval_batch_size=8)
    values.update(extra)
    return TrainOptions(**values)


@pytest.fixture(scope="module")
def general(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("general") / "general.jsonl", [{"text": t} for t in sorted(set(CORPUS))])


@pytest.fixture(scope="module")
def pretrained(tiny_llama, general, tmp_path_factory):
    """A tiny base that knows some general text (a random model has nothing to forget)."""
    out = tmp_path_factory.mktemp("pretrained") / "model"
    train(TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(general), output_dir=str(out),
                       method="full", max_steps=15, per_device_train_batch_size=10, learning_rate=3e-3,
                       warmup_ratio=0.0, lr_scheduler_type="constant", save_steps=100, seed=0, use_cpu=True),
          explicit={"learning_rate"})
    return out


@pytest.fixture(scope="module")
def tracked(pretrained, general, tmp_path_factory):
    """Full fine-tuning of that base overfits one repeated batch of unrelated rows for 8 steps, the signals tracked
    every 2 (general text: the text the base learned)."""
    tmp = tmp_path_factory.mktemp("tracked")
    return train(_options(pretrained, tmp, "out", track_retention=["general_text", "task_kl"],
                          track_text=str(general), save_steps=8),  # checkpoint-8's trainer_state is read below
                 explicit={"learning_rate"})


def test_curves_start_at_zero_and_grow(tracked):
    curves = tracked.results["curves"]
    assert [p["step"] for p in curves] == [0, 2, 4, 6, 8]
    assert curves[0]["general_text"] == 0.0 and curves[0]["task_kl"] == 0.0  # the untouched model is the base
    # overfitting unrelated rows makes the general text the base knew less likely
    assert curves[-1]["general_text"] > curves[1]["general_text"] > 0
    # more steps on the same batch move the task's next-token distributions further from the base
    assert curves[-1]["task_kl"] > curves[1]["task_kl"] > 0
    assert all("eval_loss" in p for p in curves[1:])  # the validation loss at the same steps
    seconds = [p["seconds"] for p in curves]
    assert seconds == sorted(seconds)


def test_tracking_records_its_cost_and_logs_through_the_trainer(tracked):
    t = tracked.results["tracking"]
    assert t["every_steps"] == 2 and set(t["signals"]) == {"general_text", "task_kl"}
    assert t["task_kl_examples"] == "validation" and t["general_text_source"] == "--track_text"
    assert t["examples"] == {"general_text": 8, "task_kl": 4}
    assert t["signal_seconds"] > 0 and t["reference_seconds"] > 0 and t["overhead_fraction"] > 0
    assert t["overhead_seconds"] == pytest.approx(t["signal_seconds"] + t["validation_seconds"]
                                                  + t["reference_seconds"])
    state = json.loads((tracked.output_dir / "checkpoint-8" / "trainer_state.json").read_text())
    logged = [h for h in state["log_history"] if "eval_retention_task_kl" in h]
    assert [h["step"] for h in logged] == [0, 2, 4, 6, 8]
    assert logged[-1]["eval_retention_task_kl"] == tracked.results["curves"][-1]["task_kl"]


def test_max_forgetting_keeps_the_last_checkpoint_within_budget(tracked, pretrained, general, tmp_path):
    """A budget between two tracked values: training stops at the first step beyond it, and the model kept is the
    previous tracked step's (its validation loss is that step's)."""
    curve = tracked.results["curves"][1:]
    values = [p["task_kl"] for p in curve]
    j = max(i for i in range(1, len(values)) if values[i] > max(values[:i]))  # a step that sets a new maximum
    budget = (max(values[:j]) + values[j]) / 2
    result = train(_options(pretrained, tmp_path, "budget", max_forgetting=[f"task_kl={budget}"]),
                   explicit={"learning_rate"}).results
    chosen, stopped = curve[j - 1]["step"], curve[j]["step"]
    assert result["tracking"]["max_forgetting"] == {"budgets": {"task_kl": budget}, "chosen_step": chosen,
                                                    "stopped_at_step": stopped, "within_budget": True}
    assert result["global_step"] == stopped
    kept = next(p for p in result["curves"] if p["step"] == chosen)
    assert kept["task_kl"] <= budget
    assert result["final_eval_loss"] == pytest.approx(kept["eval_loss"], rel=1e-6)
    beyond = next(p for p in result["curves"] if p["step"] == stopped)
    assert result["final_eval_loss"] != pytest.approx(beyond["eval_loss"], rel=1e-6)


def test_lora_starts_at_zero_and_drifts(tiny_llama, tmp_path):
    """A fresh LoRA (B = 0) is the base, dropout or not (signals run in eval mode); training moves it away. The
    built-in general text is the base's own continuations of the drift prompts."""
    result = train(_options(tiny_llama, tmp_path, "lora", method="lora", lora_r=4, lora_alpha=8, lora_dropout=0.1,
                            learning_rate=2e-2, max_steps=4, track_retention=["general_text", "drift"]),
                   explicit={"learning_rate"}).results
    curves = result["curves"]
    assert curves[0]["general_text"] == 0.0 and curves[0]["drift"] == 0.0
    assert curves[-1]["drift"] > 0 and curves[-1]["general_text"] != 0.0
    assert result["tracking"]["general_text_source"] == "drift prompts' base continuations"


def test_tracking_changes_nothing_about_how_qlora_trains(tiny_llama, tmp_path):
    """Retention signals run the model in eval mode before and during training. On a CPU with avx512_bf16 that used
    to make bitsandbytes repack the 4-bit weights for good, and QLoRA then trained differently (models.
    keep_4bit_weights_unpacked). Every step's loss equals the untracked run's, and every step is in the curve (a
    tracked step's loss used to be dropped: Trainer.log() clears should_log)."""
    common = dict(method="qlora", lora_r=4, lora_alpha=8, learning_rate=2e-2, max_steps=4)
    plain = train(_options(tiny_llama, tmp_path, "plain", eval_steps=None, **common),
                  explicit={"learning_rate"}).results
    tracked = train(_options(tiny_llama, tmp_path, "tracked", track_retention=["drift"], **common),
                    explicit={"learning_rate"}).results
    assert [p["step"] for p in tracked["loss_curve"]] == [1, 2, 3, 4]
    assert tracked["loss_curve"] == plain["loss_curve"]
    assert len(tracked["curves"]) == 3  # the base, steps 2 and 4


def test_four_bit_layers_are_never_repacked_for_the_cpu(tiny_llama):
    import torch

    from tunelab.models import load_model, quantization_config

    quant = quantization_config(use_4bit=True, use_8bit=False, quant_type="nf4", compute_dtype=torch.bfloat16,
                                double_quant=True)
    model = load_model(str(tiny_llama), "causal_lm", quantization=quant, device_map="cpu", dtype=torch.bfloat16)
    four_bit = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert four_bit and not any(m.support_avx512bf16_for_cpu for m in four_bit)
    before = [m.weight.data.clone() for m in four_bit]
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    assert all(torch.equal(b, m.weight.data) for b, m in zip(before, four_bit))  # not rewritten in place


BAD = {
    "unknown_signal": (["--track_retention", "perplexity"], "--track_retention perplexity: unknown signal"),
    "bad_budget": (["--max_forgetting", "drift"], "--max_forgetting drift: expected SIGNAL=VALUE"),
    "budget_not_a_number": (["--max_forgetting", "drift=low"], "'low' is not a number"),
    "budget_and_early_stopping": (["--max_forgetting", "drift=0.1", "--early_stopping_patience", "1",
                                   "--eval_steps", "1"], "use one of them"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_tracking_flags_are_one_line(case, tiny_llama, tmp_path, capsys):
    flags, needle = BAD[case]
    out = tmp_path / "out"
    code = main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(_data(tmp_path)),
                 "--output_dir", str(out), "--max_steps", "2", "--use_cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in err, err
    assert not out.exists()


@pytest.mark.parametrize("flags, named", [(["--track_retention", "drift"], "--track_retention"),
                                          (["--curve_points", "2"], "--curve_points 2")])
def test_tracking_needs_a_causal_lm(tiny_bert, tmp_path, capsys, flags, named):
    d = tmp_path / "cls"
    d.mkdir()
    write_jsonl(d / "train.jsonl", [{"text": "a good one", "label": "positive"}, {"text": "bad", "label": "negative"}])
    out = tmp_path / "out"
    code = main(["train", "--model_name_or_path", str(tiny_bert), "--dataset_name_or_path", str(d), "--output_dir",
                 str(out), "--max_steps", "2", "--use_cpu", *flags])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith(f"error: {named}") and "needs a causal language model" in err, err
    assert not out.exists()


def test_default_frequency_fits_the_cost_target():
    """Without --eval_steps, as many tracked steps as fit 15% of the training compute, at most ten."""
    from tunelab.tracking import COST_TARGET, default_every

    # a long run affords the ten evaluations
    assert default_every(1000, per_eval=5600, per_step=2000, step_zero=False) == 100
    # a 20-step run whose evaluation costs ~3 training steps affords only the last step
    assert default_every(20, per_eval=5600, per_step=2000, step_zero=False) == 20
    # in between: (evaluations + references) x per_eval stays within the target
    every = default_every(200, per_eval=5600, per_step=2000, step_zero=True)
    evaluations = 200 // every
    assert (evaluations + 2) * 5600 <= COST_TARGET * 200 * 2000 < (evaluations + 3) * 5600


def test_prompt_tuning_step_zero_is_measured(tiny_llama, tmp_path):
    """A fresh prompt-tuning adapter already changes the outputs: its step 0 is measured, not assumed 0."""
    result = train(_options(tiny_llama, tmp_path, "pt", method="prompt_tuning", num_virtual_tokens=4,
                            learning_rate=1e-2, max_steps=2, track_retention=["drift"]),
                   explicit={"learning_rate"}).results
    assert result["tracking"]["step_0"] == "measured"
    assert result["curves"][0]["step"] == 0 and result["curves"][0]["drift"] > 0


def test_curve_points_save_loadable_points(tiny_llama, tmp_path):
    """--curve_points 2 over 4 steps: steps 2 and 4 tracked; step 2's adapter saved where `tunelab eval` loads it
    (the end is the run's own output)."""
    from tunelab import inference

    result = train(_options(tiny_llama, tmp_path, "curve", method="lora", lora_r=4, learning_rate=2e-2, max_steps=4,
                            eval_steps=None, curve_points=2), explicit={"learning_rate"}).results
    assert [p["step"] for p in result["curves"]] == [0, 2, 4]
    assert set(result["tracking"]["signals"]) == {"general_text", "drift", "task_kl"}  # all, when none is named
    [point] = result["tracking"]["curve_checkpoints"]
    assert point["step"] == 2
    lm = inference.load(str(tiny_llama), point["path"], use_cpu=True)
    assert lm.is_peft and lm.run_config["method"] == "lora"


def test_signals_run_in_the_trainings_precision(tiny_llama, tmp_path):
    """Under bf16 mixed precision, the base's side (computed before the Trainer wraps the model's forward in
    autocast) and the tracked steps run in the same precision: weights that do not move give signals of 0, not the
    gap between float32 and bfloat16 arithmetic."""
    result = train(_options(tiny_llama, tmp_path, "bf16", bf16=True, learning_rate=1e-30, max_steps=2,
                            track_retention=["drift", "task_kl"]), explicit={"learning_rate"}).results
    last = result["curves"][-1]
    assert last["drift"] == 0.0 and last["task_kl"] == 0.0, last
