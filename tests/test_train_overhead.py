"""What a training run spends besides training (issue 22): no extra checkpoint of the last step, the fused AdamW
that transformers itself defaults to, and a results file that still has every key."""

from __future__ import annotations

import json

from tunelab.config import TrainOptions
from tunelab.training import train

RESULT_KEYS = {"train_seconds", "train_tokens", "train_tokens_per_second", "global_step", "peak_memory_bytes",
               "peak_memory_kind", "loss_curve", "final_train_loss", "mean_train_loss", "padding_fraction",
               "processed_token_positions", "checkpoint_bytes", "trainable_params", "total_params"}


def _options(tiny_llama, alpaca_file, out, **extra) -> TrainOptions:
    values = dict(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(alpaca_file), output_dir=str(out),
                  method="full", max_steps=3, per_device_train_batch_size=2, max_seq_length=48, logging_steps=10,
                  use_cpu=True, seed=0)
    values.update(extra)
    return TrainOptions(**values)


def test_last_step_is_not_checkpointed_unless_save_steps_asks(tiny_llama, alpaca_file, tmp_path):
    """The Trainer's own checkpoint of the last step is skipped (the finished model is saved into the output
    directory anyway); --save_steps checkpoints stay, the last step's included when it falls on one."""
    out = tmp_path / "every2"
    result = train(_options(tiny_llama, alpaca_file, out, save_steps=2)).results
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (out / "model.safetensors").is_file()
    assert RESULT_KEYS <= set(result), RESULT_KEYS - set(result)
    assert json.loads((out / "train_results.json").read_text()) == json.loads(json.dumps(result))
    assert result["global_step"] == 3 and [p["step"] for p in result["loss_curve"]] == [1, 3]  # last step logged

    out = tmp_path / "every3"
    train(_options(tiny_llama, alpaca_file, out, save_steps=3))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]


def test_long_lived_objects_are_frozen_for_the_garbage_collector_during_training_only(tiny_llama, alpaca_file,
                                                                                       tmp_path):
    """The objects alive when training starts are frozen (accelerate's gc.collect() at the start of Trainer.train()
    and Python's own full collections then skip them: ~0.3 s each on smollm2-135m), and unfrozen afterwards."""
    import gc

    from transformers import TrainerCallback

    seen = []

    class Frozen(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(gc.get_freeze_count())

    train(_options(tiny_llama, alpaca_file, tmp_path / "out", max_steps=2), extra_callbacks=(Frozen(),))
    assert len(seen) == 2 and min(seen) > 10_000  # the model, tokenizer, torch and transformers themselves
    assert gc.get_freeze_count() == 0


def test_tensor_peak_is_counted_only_when_asked(tiny_llama, alpaca_file, tmp_path):
    """Counting live tensor bytes sends every op of the first two steps through Python (5-20% slower steps on
    smollm2-135m), so `tunelab train` counts them only with --tensor_peak; tunelab compare asks for it."""
    plain = train(_options(tiny_llama, alpaca_file, tmp_path / "plain", max_steps=2)).results
    assert plain["peak_tensor_bytes"] is None and plain["peak_tensor_steps"] is None
    assert plain["peak_memory_bytes"] > 0  # the resident-set peak costs nothing and is always there
    counted = train(_options(tiny_llama, alpaca_file, tmp_path / "counted", max_steps=2, tensor_peak=True)).results
    assert 0 < counted["peak_tensor_bytes"] < counted["peak_memory_bytes"] and counted["peak_tensor_steps"] == 2


def test_compare_runs_count_the_tensor_peak():
    from tunelab.comparison.recipe import load_recipe

    recipe = load_recipe("demo")
    entry = recipe.methods[0]
    assert recipe.train_options(entry, 0, train_file="t.jsonl", output_dir="o", device="cpu").tensor_peak is True


def test_default_optimizer_is_fused_adamw(tiny_llama, alpaca_file, tmp_path):
    """transformers' own default for torch >= 2.8; on the CPU one fused kernel per parameter group instead of a
    chain of per-tensor operations (smollm2-135m: about a third of the optimizer step's time)."""
    from transformers import Trainer

    from tunelab.config import resolve
    from tunelab.training import training_arguments

    opts, _ = resolve(_options(tiny_llama, alpaca_file, tmp_path / "out", bf16=False), set())
    assert opts.optim == "adamw_torch_fused"
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(training_arguments(opts, False, "causal_lm"))
    assert cls.__name__ == "AdamW" and kwargs.get("fused") is True


def test_bf16_steps_keep_outputs_in_bf16_and_train_the_same(tiny_llama, alpaca_file, tmp_path, monkeypatch):
    """Under --bf16 the forward stays autocast but its outputs are not copied to float32 (accelerate's
    convert_outputs_to_fp32: the whole logits tensor every step, thrown away by the Trainer). The loss is computed
    in float32 inside the model either way, so the run trains exactly as with the copy; the model train() returns
    has neither wrapper."""
    import torch
    from transformers import TrainerCallback

    from tunelab import training

    def run(out):
        dtypes = []

        class LogitsDtype(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                with torch.no_grad():
                    dtypes.append(model(input_ids=torch.tensor([[1, 2, 3]])).logits.dtype)

        result = train(_options(tiny_llama, alpaca_file, out, max_steps=2, logging_steps=1, bf16=True),
                       extra_callbacks=(LogitsDtype(),))
        return result, dtypes

    dropped, dtypes = run(tmp_path / "dropped")
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    with torch.no_grad():
        assert dropped.model(input_ids=torch.tensor([[1, 2, 3]])).logits.dtype == torch.float32  # no autocast left
    monkeypatch.setattr(training, "drop_fp32_output_cast", lambda model: False)
    kept, dtypes = run(tmp_path / "kept")
    assert dtypes == [torch.float32, torch.float32]
    assert dropped.results["loss_curve"] == kept.results["loss_curve"]
    assert len(dropped.results["loss_curve"]) == 2


def test_dropping_the_output_cast_leaves_other_forwards_alone():
    import torch

    from tunelab.training import drop_fp32_output_cast

    layer = torch.nn.Linear(2, 2)
    assert drop_fp32_output_cast(layer) is False and "forward" not in layer.__dict__
