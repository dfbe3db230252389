"""Padding-free packing and length-grouped batching: same loss, less padding, and the waste is reported."""

from __future__ import annotations

import torch

from tunelab.config import TrainOptions
from tunelab.data.encode import encode_causal
from tunelab.data.formats import Example
from tunelab.data.templates import Template
from tunelab.training import train, validation_dataset

from conftest import write_jsonl


def _features(tokenizer):
    rows = [("Count the books.", "SELECT count(*) FROM books"), ("Hi", "Hello there, the quick brown fox"),
            ("Translate to French: the cat sat on the mat", "le chat")]
    examples = [Example(messages=[{"role": "user", "content": u}, {"role": "assistant", "content": a}])
                for u, a in rows]
    return [encode_causal(ex, Template("chatml", None), tokenizer, 128)[0] for ex in examples]


def test_packed_batch_gives_the_padded_batch_loss(tiny_llama, tiny_tokenizer):
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, DataCollatorWithFlattening

    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    feats = _features(tiny_tokenizer)
    tiny_tokenizer.padding_side = "right"
    padded = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=-100, padding=True)(feats)
    packed = DataCollatorWithFlattening(return_position_ids=True, separator_id=-100)(feats)
    assert packed["input_ids"].shape[0] == 1 and "attention_mask" not in packed
    with torch.no_grad():
        loss_padded = model(**padded).loss
        loss_packed = model(**packed, use_cache=False).loss
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-5, rtol=1e-5)


VARIED = [{"prompt": "p " * n, "completion": "c " * (1 + n % 5)} for n in (2, 30, 3, 28, 4, 31, 5, 27)]


def _run(tiny_llama, tmp_path, name, **kw):
    data = write_jsonl(tmp_path / "varied.jsonl", VARIED)
    opts = TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data),
                        output_dir=str(tmp_path / name), max_steps=4, max_seq_length=128, lora_r=2, save_steps=100,
                        use_cpu=True, seed=0, **{"per_device_train_batch_size": 2, **kw})
    return train(opts).results


def test_padding_waste_is_reported_and_reduced(tiny_llama, tmp_path):
    plain = _run(tiny_llama, tmp_path, "plain")
    grouped = _run(tiny_llama, tmp_path, "grouped", group_by_length=True)
    packed = _run(tiny_llama, tmp_path, "packed", packing=True)
    assert plain["padding_fraction"] > 0.2
    assert grouped["padding_fraction"] < plain["padding_fraction"]
    assert packed["padding_fraction"] == 0.0
    assert packed["global_step"] == 4 and all(p["loss"] > 0 for p in packed["loss_curve"])


def test_validation_batches_are_not_counted_as_training_padding(tiny_llama, tmp_path):
    # Training batches of one row have no padding; the validation batch (rows of different lengths) has some, and
    # the Trainer collates it with the training collator.
    one = _run(tiny_llama, tmp_path, "validated", per_device_train_batch_size=1, validation_split=0.5, eval_steps=2)
    assert one["final_eval_loss"] is not None
    assert one["padding_fraction"] == 0.0


def test_validation_rows_are_evaluated_longest_first():
    rows = [{"input_ids": [1] * n, "labels": [1] * n} for n in (3, 9, 1, 5)]
    assert [len(row["input_ids"]) for row in validation_dataset(rows)] == [9, 5, 3, 1]
