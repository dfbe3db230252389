"""The validation loss is the mean loss per predicted token over the whole validation set: it does not depend on
how the rows are batched or ordered (the Trainer's own figure, a mean of per-batch means repeated by the first
batch's size, does)."""

from __future__ import annotations

import pytest
import torch

from tunelab.data.encode import encode_causal, encode_seq2seq
from tunelab.data.formats import Example
from tunelab.data.templates import Template
from tunelab.training import _collator, trainer_class, validation_dataset

ROWS = [("Count the books.", "SELECT count(*) FROM books"), ("Hi", "Hello there, the quick brown fox jumps"),
        ("Translate to French: the cat sat on the mat", "le chat"), ("2+2?", "4"),
        ("Name a colour", "blue, or perhaps a deep sea green"), ("Why?", "because")]


def _features(tokenizer, task_kind):
    examples = [Example(messages=[{"role": "user", "content": u}, {"role": "assistant", "content": a}])
                for u, a in ROWS]
    encode = encode_causal if task_kind == "causal_lm" else encode_seq2seq
    return [encode(ex, Template("chatml", None), tokenizer, 128)[0] for ex in examples]


def _by_hand(model, features, shifted: bool) -> float:
    """Summed over every row's predicted tokens, divided by their number (each row alone: no padding)."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for f in features:
            labels = torch.tensor([f["labels"]])
            n = int((labels[..., 1:] if shifted else labels).ne(-100).sum())
            total += model(input_ids=torch.tensor([f["input_ids"]]), labels=labels).loss.item() * n
            tokens += n
    return total / tokens


def _evaluate(model, tokenizer, features, task_kind, batch_size, tmp_path) -> float:
    from transformers import Seq2SeqTrainingArguments, TrainingArguments

    arguments = Seq2SeqTrainingArguments if task_kind == "seq2seq_lm" else TrainingArguments
    args = arguments(output_dir=str(tmp_path / f"b{batch_size}"), per_device_eval_batch_size=batch_size,
                             use_cpu=True, report_to=[])
    trainer = trainer_class(task_kind)(model=model, args=args, eval_dataset=validation_dataset(features),
                                       data_collator=_collator(tokenizer, task_kind, model))
    return trainer.evaluate()["eval_loss"]


@pytest.mark.parametrize("task_kind", ["causal_lm", "seq2seq_lm"])
def test_validation_loss_is_per_token_and_does_not_depend_on_batching(task_kind, tiny_models, tiny_tokenizer,
                                                                      tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    causal = task_kind == "causal_lm"
    auto = AutoModelForCausalLM if causal else AutoModelForSeq2SeqLM
    model = auto.from_pretrained(tiny_models[task_kind]).eval()
    features = _features(tiny_tokenizer, task_kind)
    expected = _by_hand(model, features, shifted=causal)
    # batches of 4 then 2 rows (the Trainer's figure repeats the last batch's mean 4 times), of 3 and 3, and of 1
    for batch_size in (4, 3, 1):
        got = _evaluate(model, tiny_tokenizer, features, task_kind, batch_size, tmp_path)
        assert abs(got - expected) < 1e-5, (batch_size, got, expected)
