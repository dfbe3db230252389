"""Detect a dataset's format from its columns and normalise each row to an Example.

A new format is one entry in FORMATS: the columns that identify it and a function from a row to an Example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tunelab.errors import TunelabError


@dataclass
class Example:
    """One normalised row. Conversations train on assistant turns; ``text`` trains on everything; ``texts`` +
    ``label`` is classification."""

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    texts: tuple[str, ...] | None = None
    label: str | None = None
    locator: str = ""
    fields: dict[str, Any] | None = None  # the source row, for task metrics that need more (a SQL schema, say)

    @property
    def prompt_messages(self) -> list[dict[str, str]]:
        """The conversation up to (not including) the final assistant turn: what a model is asked at evaluation."""
        msgs = self.messages or []
        return msgs[:-1] if msgs and msgs[-1]["role"] == "assistant" else list(msgs)

    @property
    def reference(self) -> str | None:
        """The final assistant turn (or the label): what a model should answer."""
        if self.messages and self.messages[-1]["role"] == "assistant":
            return self.messages[-1]["content"]
        return self.label


def _text(row: dict, key: str, loc: str) -> str:
    value = row.get(key)
    if value is None:
        raise TunelabError(f"{loc}: column {key!r} is empty; fill it in or drop the row")
    if isinstance(value, (dict, list)):
        raise TunelabError(f"{loc}: column {key!r} should be text, got {type(value).__name__}")
    return str(value)


def _pair(user: str, assistant: str, loc: str) -> Example:
    return Example(messages=[{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
                   locator=loc)


def _alpaca(row: dict, loc: str, cols: dict) -> Example:
    instruction = _text(row, "instruction", loc)
    extra = row.get("input")
    user = f"{instruction}\n\n{extra}" if extra not in (None, "") else instruction
    return _pair(user, _text(row, "output" if "output" in row else "response", loc), loc)


def _prompt_completion(row: dict, loc: str, cols: dict) -> Example:
    return _pair(_text(row, "prompt", loc), _text(row, "completion", loc), loc)


def qa_prompt(question: str, context: str | None) -> str:
    """How a question with optional context (a schema, a passage) is put to the model."""
    return f"{context}\n\nQuestion: {question}" if context else question


def _qa(row: dict, loc: str, cols: dict) -> Example:
    context = row.get("context")
    answer_key = "answer" if "answer" in row else "answers"
    answer = row.get(answer_key)
    if isinstance(answer, dict) and "text" in answer:  # SQuAD-style {"text": [...]}
        answer = answer["text"]
    if isinstance(answer, list):
        if not answer:
            raise TunelabError(f"{loc}: column {answer_key!r} is an empty list; give at least one answer")
        answer = answer[0]
    if answer is None:
        raise TunelabError(f"{loc}: column {answer_key!r} is empty; fill it in or drop the row")
    return _pair(qa_prompt(_text(row, "question", loc), str(context) if context not in (None, "") else None),
                 str(answer), loc)


_ROLE_ALIASES = {"human": "user", "gpt": "assistant", "bot": "assistant", "model": "assistant", "user": "user",
                 "assistant": "assistant", "system": "system"}


def _chat(row: dict, loc: str, cols: dict) -> Example:
    key = next(k for k in ("messages", "conversations", "conversation") if k in row)
    turns = row[key]
    if not isinstance(turns, list) or not turns:
        raise TunelabError(f"{loc}: column {key!r} must be a non-empty list of turns with role and content")
    messages = []
    for i, turn in enumerate(turns, start=1):
        if not isinstance(turn, dict):
            raise TunelabError(f"{loc}: turn {i} of {key!r} should be an object with role and content")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in _ROLE_ALIASES:
            raise TunelabError(f"{loc}: turn {i} has role {role!r}; use system, user or assistant")
        if not isinstance(content, str):
            raise TunelabError(f"{loc}: turn {i} has no text content")
        messages.append({"role": _ROLE_ALIASES[role], "content": content})
    if not any(m["role"] == "assistant" for m in messages):
        raise TunelabError(f"{loc}: the conversation has no assistant turn to learn from")
    return Example(messages=messages, locator=loc)


def _plain_text(row: dict, loc: str, cols: dict) -> Example:
    return Example(text=_text(row, "text", loc), locator=loc)


SEQ2SEQ_PAIRS = (("source", "target"), ("dialogue", "summary"), ("document", "summary"), ("article", "highlights"),
                 ("article", "summary"), ("src", "tgt"), ("input", "output"), ("input", "target"))


def _seq2seq(row: dict, loc: str, cols: dict) -> Example:
    src, tgt = cols.get("pair") or next(p for p in SEQ2SEQ_PAIRS if p[0] in row and p[1] in row)
    return _pair(_text(row, src, loc), _text(row, tgt, loc), loc)


CLASSIFICATION_TEXTS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
                        ("text",), ("sentence",), ("content",), ("review",), ("title", "description"))


def _classification(row: dict, loc: str, cols: dict) -> Example:
    text_cols = cols.get("texts") or next(c for c in CLASSIFICATION_TEXTS if all(k in row for k in c))
    label_col = cols.get("label") or ("label" if "label" in row else "labels")
    label = row.get(label_col)
    if label is None or label == "":
        raise TunelabError(f"{loc}: column {label_col!r} is empty; every row needs a label")
    if isinstance(label, float) and label.is_integer():
        label = int(label)
    if isinstance(label, (dict, list)):
        raise TunelabError(f"{loc}: column {label_col!r} should be a single label, got {type(label).__name__}")
    return Example(texts=tuple(_text(row, c, loc) for c in text_cols), label=str(label).strip(), locator=loc)


@dataclass(frozen=True)
class Format:
    name: str
    matches: Callable[[set[str]], bool]
    normalise: Callable[[dict, str, dict], Example]
    description: str


def _has_classification_text(cols: set[str]) -> bool:
    return any(all(k in cols for k in c) for c in CLASSIFICATION_TEXTS)


# Order matters: the first match wins.
FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("chat", lambda c: bool(c & {"messages", "conversations", "conversation"}), _chat,
           "messages: a list of {role, content} turns"),
    Format("alpaca", lambda c: "instruction" in c and bool(c & {"output", "response"}), _alpaca,
           "instruction, optional input, output"),
    Format("prompt_completion", lambda c: {"prompt", "completion"} <= c, _prompt_completion, "prompt, completion"),
    Format("qa", lambda c: "question" in c and bool(c & {"answer", "answers"}), _qa,
           "question, optional context, answer"),
    Format("classification", lambda c: bool(c & {"label", "labels"}) and _has_classification_text(c),
           _classification, "text (or a sentence pair) and a label"),
    Format("seq2seq", lambda c: any(a in c and b in c for a, b in SEQ2SEQ_PAIRS), _seq2seq,
           "source/target pairs: source-target, dialogue-summary, document-summary, input-output ..."),
    Format("text", lambda c: "text" in c, _plain_text, "text: plain language-model text"),
)}


def flag_columns(inputs: str, target: str) -> str:
    """How a dataset flag's data names its columns (a probe names them in its own spec)."""
    return f"pass --input_columns {inputs} --target_column {target}"


def detect_format(columns: list[str], source: str, name_columns: Callable[[str, str], str] = flag_columns) -> str:
    cols = {c.lower() for c in columns}
    for fmt in FORMATS.values():
        if fmt.matches(cols):
            return fmt.name
    known = "; ".join(f"{f.name} ({f.description})" for f in FORMATS.values())
    # Two columns (a sentence pair in two languages, say) are most likely a prompt and its answer: name them.
    how = (f"{name_columns(columns[0], columns[1])} (or the other way round)" if len(columns) == 2
           else name_columns("INPUT", "TARGET"))
    raise TunelabError(f"{source}: cannot tell the data format from the columns {', '.join(columns)}; rename "
                       f"columns to a known format ({known}) or {how}")


def normalise(rows, *, dataset_format: str = "auto", input_columns: list[str] | None = None,
              target_column: str | None = None, classification: bool = False,
              name_columns: Callable[[str, str], str] = flag_columns) -> tuple[str, list[Example]]:
    """Turn Rows into Examples; returns (format name, examples). Missing columns are reported per row.
    ``name_columns`` says how the user names the columns of data whose format is not recognised."""
    if input_columns or target_column:
        return _normalise_columns(rows, input_columns, target_column, classification or
                                  dataset_format == "classification")
    fmt = detect_format(rows.columns, rows.source, name_columns) if dataset_format == "auto" else dataset_format
    if fmt not in FORMATS:
        raise TunelabError(f"--dataset_format {fmt}: unknown; choose one of {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    if not spec.matches({c.lower() for c in rows.columns}):
        raise TunelabError(f"{rows.source}: --dataset_format {fmt} needs the columns {spec.description}; the file "
                           f"has {', '.join(rows.columns)}")
    # Column-name matching is case-insensitive: lower-case keys once.
    examples = []
    for row, loc in zip(rows.rows, rows.locators):
        lowered = {str(k).lower(): v for k, v in row.items()}
        example = spec.normalise(lowered, loc, {})
        example.fields = lowered
        examples.append(example)
    return fmt, examples


def _normalise_columns(rows, input_columns, target_column, classification) -> tuple[str, list[Example]]:
    if not input_columns or not target_column:
        raise TunelabError("--input_columns and --target_column go together; pass both")
    missing = [c for c in [*input_columns, target_column] if c not in rows.columns]
    if missing:
        raise TunelabError(f"{rows.source}: no column(s) {', '.join(missing)}; the columns are "
                           f"{', '.join(rows.columns)}")
    examples = []
    for row, loc in zip(rows.rows, rows.locators):
        if classification:
            example = _classification(row, loc, {"texts": tuple(input_columns), "label": target_column})
        else:
            example = _pair("\n".join(_text(row, c, loc) for c in input_columns), _text(row, target_column, loc), loc)
        example.fields = dict(row)
        examples.append(example)
    return ("classification" if classification else "columns"), examples


def as_conversation(example: Example) -> Example:
    """Classification rows given to a generative model become question -> label-text conversations."""
    if example.texts is not None:
        converted = _pair("\n".join(example.texts), example.label or "", example.locator)
        converted.fields = example.fields
        return converted
    return example
