"""From options to tokenized train and validation sets: the whole data flow in one function."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from tunelab.data import sources
from tunelab.data.encode import (EncodeReport, adds_bos, encode_all, encode_causal, encode_classification,
                                 encode_seq2seq)
from tunelab.data.formats import Example, as_conversation, normalise
from tunelab.data.templates import Template, resolve_template
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)


@dataclass
class PreparedData:
    train: list[dict]
    eval: list[dict] | None
    format: str
    template: Template
    label_names: list[str] | None
    train_examples: list[Example]
    eval_examples: list[Example] | None
    train_report: EncodeReport
    eval_report: EncodeReport | None

    def report(self) -> dict:
        return {"format": self.format, "template": self.template.name, "labels": self.label_names,
                "train": self.train_report.as_dict(),
                "eval": self.eval_report.as_dict() if self.eval_report else None}

    def summary(self, source) -> str:
        """One line on what was read, so a user sees how their columns were understood before any step runs."""
        rep = self.train_report
        labels = ""
        if self.label_names:  # a classification head
            labels = f", {len(self.label_names)} labels ({_first(self.label_names)})"
        elif self.format == "classification":  # a generative model, taught to write the label
            answers = label_set(self.train_examples, key=lambda ex: ex.reference)
            labels = f", {len(answers)} labels ({_first(answers)}) answered as text"
        evals = (f"{_rows(self.eval_report.kept, 'validation row')}" if self.eval_report
                 else "no validation rows (--validation_split carves some from the training rows)")
        return (f"{source}: {_rows(rep.kept, 'training row')} read as {self.format}{labels}, template "
                f"{self.template.name}; {rep.tokens:,} tokens, the loss covers {rep.target_tokens:,}; {evals}")


def _rows(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def _first(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def load_examples(opts, *, classification: bool) -> tuple[str, list[Example], list[Example] | None]:
    train_rows, eval_rows = sources.load_splits(opts.dataset_name_or_path, train_split=opts.train_split,
                                                eval_split=opts.eval_split, dataset_config=opts.dataset_config)
    if eval_rows is None and opts.validation_split:
        train_rows, eval_rows = sources.carve_validation(train_rows, opts.validation_split, opts.seed)
    train_rows = sources.sample(train_rows, opts.max_train_samples, opts.seed)
    if eval_rows is not None:
        eval_rows = sources.sample(eval_rows, opts.max_eval_samples, opts.seed)
    kwargs = dict(dataset_format=opts.dataset_format, input_columns=opts.input_columns,
                  target_column=opts.target_column, classification=classification)
    fmt, train = normalise(train_rows, **kwargs)
    evals = normalise(eval_rows, **kwargs)[1] if eval_rows is not None else None
    return fmt, train, evals


def label_set(examples: list[Example], key=lambda ex: ex.label) -> list[str]:
    labels = {key(ex) for ex in examples}
    try:
        return sorted(labels, key=lambda x: float(x))
    except ValueError:
        return sorted(labels)


CLASSES_WITH_FRACTIONS = 10  # at most this many fractional labels are still classes (half-star ratings 0.5-5.0)


def _refuse_continuous_labels(examples: list[Example], source) -> None:
    """Scores such as STS-B's 0-5 similarity are numbers with fractions and many values; as a label set each value
    would be a class of its own. Whole numbers written as decimals ("1.0") and a few fractional values (half-star
    ratings) stay classes."""
    try:
        values = [float(ex.label) for ex in examples]
    except (TypeError, ValueError):
        return
    fractional = next((ex for ex, v in zip(examples, values) if not v.is_integer()), None)
    distinct = len(set(values))
    if fractional is not None and distinct > CLASSES_WITH_FRACTIONS:
        raise TunelabError(f"{fractional.locator}: label {fractional.label!r} looks like a continuous score "
                           f"({distinct} different values in {source}); a sequence-classification run learns a "
                           "fixed set of classes and tunelab has no regression head: round the scores to classes, "
                           "or score sentence similarity with `tunelab eval --task similarity`")


def prepare(opts, tokenizer, task_kind: str) -> PreparedData:
    fmt, train_ex, eval_ex = load_examples(opts, classification=task_kind == "seq_cls")
    template = resolve_template(opts.template, tokenizer, opts.system_prompt, task_kind=task_kind)
    label_names = None
    if task_kind == "seq_cls":
        if any(ex.texts is None for ex in train_ex):
            raise TunelabError(f"{opts.dataset_name_or_path}: a sequence-classification model needs classification "
                               f"data (a text or sentence pair and a label), but the rows are in {fmt} format; pass "
                               "--input_columns/--target_column or a generative --task_type")
        label_names = label_set(train_ex)
        _refuse_continuous_labels(train_ex, opts.dataset_name_or_path)
        if len(label_names) < 2:
            raise TunelabError(f"{opts.dataset_name_or_path}: classification needs at least two labels; the training "
                               f"rows all have label {label_names[0]!r}")
        known = set(label_names)
        for ex in eval_ex or []:
            if ex.label not in known:
                raise TunelabError(f"{ex.locator}: label {ex.label!r} is not in the training label set "
                                   f"({', '.join(label_names)}); fix the label or add training rows with it")
        label2id = {name: i for i, name in enumerate(label_names)}
        encode = partial(encode_classification, label2id=label2id, tokenizer=tokenizer, max_len=opts.max_seq_length)
    else:
        train_ex = [as_conversation(ex) for ex in train_ex]
        eval_ex = [as_conversation(ex) for ex in eval_ex] if eval_ex is not None else None
        if task_kind == "seq2seq_lm":
            if any(ex.text is not None for ex in train_ex):
                raise TunelabError(f"{opts.dataset_name_or_path}: plain-text rows have no target for a seq2seq "
                                   "model; give source/target pairs")
            encode = partial(encode_seq2seq, template=template, tokenizer=tokenizer, max_len=opts.max_seq_length)
        else:
            encode = partial(encode_causal, template=template, tokenizer=tokenizer, max_len=opts.max_seq_length,
                             train_on_prompt=opts.train_on_prompt, bos=adds_bos(tokenizer))
    train, train_report = encode_all(train_ex, encode, "tokenizing train")
    if not train:
        raise TunelabError(f"{opts.dataset_name_or_path}: every training row was dropped because its prompt fills "
                           f"--max_seq_length {opts.max_seq_length}; raise --max_seq_length")
    evals, eval_report = (encode_all(eval_ex, encode, "tokenizing validation") if eval_ex is not None
                          else (None, None))
    if evals is not None and not evals:
        raise TunelabError("every validation row was dropped by --max_seq_length; raise it")
    for name, rep in (("train", train_report), ("validation", eval_report)):
        if rep and (rep.truncated or rep.dropped):
            log.warning("%s: %d of %d rows truncated to %d tokens, %d dropped (prompt alone too long)", name,
                        rep.truncated, rep.rows, opts.max_seq_length, rep.dropped)
    return PreparedData(train, evals, fmt, template, label_names, train_ex, eval_ex, train_report, eval_report)
