"""Token ids with a loss mask: prompt and padding positions get the label -100, so only responses are learned."""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.data.formats import Example
from tunelab.data.templates import Template

IGNORE_INDEX = -100


@dataclass
class EncodeReport:
    rows: int = 0
    kept: int = 0
    truncated: int = 0
    dropped: int = 0
    tokens: int = 0
    target_tokens: int = 0
    dropped_rows: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"rows": self.rows, "kept": self.kept, "truncated": self.truncated, "dropped": self.dropped,
                "tokens": self.tokens, "target_tokens": self.target_tokens,
                "dropped_examples": self.dropped_rows[:5]}


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts a BOS token in front of text by itself (Llama-2 style)."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == bos


def encode_causal(example: Example, template: Template, tokenizer, max_len: int, *, train_on_prompt: bool = False,
                  bos: bool = False) -> tuple[dict | None, bool]:
    """(features or None when nothing to learn survives truncation, whether it was truncated)."""
    input_ids: list[int] = []
    labels: list[int] = []
    is_target: list[bool] = []
    if bos and template.name != "chat":  # chat templates write their own BOS
        input_ids.append(tokenizer.bos_token_id)
        labels.append(IGNORE_INDEX)
        is_target.append(False)
    for text, target in template.segments(example, tokenizer):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        input_ids.extend(ids)
        labels.extend(ids if (target or train_on_prompt) else [IGNORE_INDEX] * len(ids))
        is_target.extend([target] * len(ids))
    truncated = len(input_ids) > max_len
    if truncated:
        input_ids, labels, is_target = input_ids[:max_len], labels[:max_len], is_target[:max_len]
    if not any(is_target):
        return None, truncated
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}, truncated


def encode_seq2seq(example: Example, template: Template, tokenizer, max_len: int) -> tuple[dict | None, bool]:
    source = template.source(example.prompt_messages)
    target = example.reference or ""
    src = tokenizer(source, add_special_tokens=True)["input_ids"]
    tgt = tokenizer(text_target=target, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None and (not tgt or tgt[-1] != tokenizer.eos_token_id):
        tgt = tgt + [tokenizer.eos_token_id]
    truncated = len(src) > max_len or len(tgt) > max_len
    src, tgt = src[:max_len], tgt[:max_len]
    if not tgt or not src:
        return None, truncated
    return {"input_ids": src, "attention_mask": [1] * len(src), "labels": tgt}, truncated


def encode_classification(example: Example, label2id: dict[str, int], tokenizer,
                          max_len: int) -> tuple[dict | None, bool]:
    texts = list(example.texts or ())
    full = tokenizer(*texts[:2], truncation=False)["input_ids"]
    enc = tokenizer(*texts[:2], truncation=True, max_length=max_len)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
            "labels": label2id[example.label]}, len(full) > max_len


def encode_all(examples: list[Example], encode, desc: str = "tokenizing") -> tuple[list[dict], EncodeReport]:
    from tqdm.auto import tqdm

    report = EncodeReport(rows=len(examples))
    out = []
    for ex in tqdm(examples, desc=desc, disable=len(examples) < 2000, leave=False):
        features, truncated = encode(ex)
        report.truncated += int(truncated)
        if features is None:
            report.dropped += 1
            report.dropped_rows.append(ex.locator)
            continue
        out.append(features)
        report.kept += 1
        report.tokens += len(features["input_ids"])
        labels = features["labels"]
        report.target_tokens += (sum(1 for t in labels if t != IGNORE_INDEX) if isinstance(labels, list) else 1)
    return out, report
