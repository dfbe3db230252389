"""Labels are -100 exactly on prompt and padding tokens, for each format and template (multi-turn chat too)."""

from __future__ import annotations

import pytest

from tunelab.data.encode import IGNORE_INDEX, encode_causal
from tunelab.data.formats import Example, normalise
from tunelab.data.sources import Rows
from tunelab.data.templates import Template, resolve_template

ROWS = {
    "alpaca": {"instruction": "Count the books.", "input": "in the shop", "output": "SELECT count(*) FROM books"},
    "prompt_completion": {"prompt": "The capital of France is", "completion": "Paris"},
    "qa": {"question": "How many books?", "context": "CREATE TABLE books (id INT)", "answer": "SELECT count(*) FROM books"},
    "seq2seq": {"dialogue": "#Person1#: hi\n#Person2#: hello", "summary": "They greet."},
    "classification": {"text": "a fine sentence", "label": "positive"},
    "chat": {"messages": [{"role": "system", "content": "Be brief."},
                          {"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
                          {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"}]},
}


def _example(fmt: str) -> Example:
    from tunelab.data.formats import as_conversation

    row = ROWS[fmt]
    got_fmt, examples = normalise(Rows([row], ["row 1"], "test", list(row)))
    assert got_fmt == fmt
    return as_conversation(examples[0])


def _targets(example: Example) -> list[str]:
    return [m["content"] for m in example.messages if m["role"] == "assistant"]


@pytest.mark.parametrize("template", ["chat", "chatml", "alpaca", "plain"])
@pytest.mark.parametrize("fmt", list(ROWS))
def test_only_responses_are_labelled(fmt, template, tiny_tokenizer):
    tok = tiny_tokenizer
    example = _example(fmt)
    tmpl = resolve_template(template, tok, None)
    features, truncated = encode_causal(example, tmpl, tok, 512)
    assert not truncated
    ids, labels = features["input_ids"], features["labels"]
    assert len(ids) == len(labels)
    labelled = [i for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    for i, lab in zip(ids, labels):
        assert lab in (IGNORE_INDEX, i)
    # The labelled tokens are exactly the responses, each followed by the end-of-turn/EOS token.
    text = tok.decode(labelled)
    expected_targets = _targets(example)
    for target in expected_targets:
        assert target in text
    assert text.count(tok.eos_token) == len(expected_targets)
    stripped = text
    for target in expected_targets:
        stripped = stripped.replace(target, "", 1)
    assert stripped.replace(tok.eos_token, "").strip() == "", f"prompt text leaked into labels: {stripped!r}"
    # Everything that is not labelled is prompt: it contains the user turns.
    prompt_text = tok.decode([i for i, lab in zip(ids, labels) if lab == IGNORE_INDEX])
    for msg in example.messages:
        if msg["role"] == "user":
            assert msg["content"] in prompt_text


def test_train_on_prompt_labels_everything(tiny_tokenizer):
    example = _example("alpaca")
    features, _ = encode_causal(example, Template("alpaca", None), tiny_tokenizer, 512, train_on_prompt=True)
    assert features["labels"] == features["input_ids"]


def test_padding_is_masked_by_the_collator(tiny_tokenizer):
    from transformers import DataCollatorForSeq2Seq

    tmpl = Template("chatml", None)
    a, _ = encode_causal(_example("alpaca"), tmpl, tiny_tokenizer, 512)
    b, _ = encode_causal(_example("prompt_completion"), tmpl, tiny_tokenizer, 512)
    tiny_tokenizer.padding_side = "right"
    batch = DataCollatorForSeq2Seq(tiny_tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)([a, b])
    short = 1 if len(b["input_ids"]) < len(a["input_ids"]) else 0
    n = min(len(a["input_ids"]), len(b["input_ids"]))
    assert (batch["labels"][short, n:] == IGNORE_INDEX).all()
    assert (batch["attention_mask"][short, n:] == 0).all()


def test_truncation_keeps_rows_with_some_response_and_drops_the_rest(tiny_tokenizer):
    tmpl = Template("alpaca", None)
    example = _example("alpaca")
    full, _ = encode_causal(example, tmpl, tiny_tokenizer, 512)
    first_target = next(i for i, lab in enumerate(full["labels"]) if lab != IGNORE_INDEX)
    kept, truncated = encode_causal(example, tmpl, tiny_tokenizer, first_target + 2)
    assert truncated and len(kept["input_ids"]) == first_target + 2
    dropped, truncated = encode_causal(example, tmpl, tiny_tokenizer, first_target)
    assert truncated and dropped is None


def test_smollm2_chat_template_masks_its_default_system_prompt():
    """The real SmolLM2 template adds a default system prompt: it must be masked, the answer labelled."""
    from conftest import builtin_model
    from tunelab.models import load_tokenizer

    tok = load_tokenizer(builtin_model("smollm2-135m"), task_kind="causal_lm")
    tmpl = resolve_template("auto", tok, None)
    assert tmpl.name == "chat"
    features, _ = encode_causal(_example("chat"), tmpl, tok, 512)
    labelled = tok.decode([i for i, lab in zip(features["input_ids"], features["labels"]) if lab != IGNORE_INDEX])
    assert labelled.replace("<|im_end|>", "").split() == ["4", "6"]
    prompt = tok.decode([i for i, lab in zip(features["input_ids"], features["labels"]) if lab == IGNORE_INDEX])
    assert "Be brief." in prompt and "What is 2+2?" in prompt and "And 3+3?" in prompt
