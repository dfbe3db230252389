"""Evaluation tasks: how a model's answers are produced for a set of Examples and scored.

A task is one entry in TASKS: a runner (generate / classify / embed / score losses) and the metric from
``metrics.METRICS``. The same tasks serve the main evaluation and the retention probes.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tunelab import inference
from tunelab.data.formats import Example
from tunelab.errors import TunelabError
from tunelab.evaluation import metrics
from tunelab.evaluation.sql_exec import build_database, execution_accuracy

log = logging.getLogger(__name__)


@dataclass
class TaskSettings:
    max_new_tokens: int = 128
    batch_size: int = 8
    max_seq_length: int = 1024
    seed: int = 42
    sql_database: str | None = None


@dataclass
class TaskOutcome:
    task: str
    scores: dict[str, float]
    headline: str
    per_example: list[float]
    confidence_interval: tuple[float, float] | None
    rows: list[dict[str, Any]]           # one per example: input, reference, prediction, score
    generation: dict[str, Any] = field(default_factory=dict)
    note: str | None = None              # why the scores are missing, when they are

    @property
    def value(self) -> float:
        return self.scores[self.headline]


def _input_text(ex: Example) -> str:
    if ex.texts is not None:
        return " ||| ".join(ex.texts)
    return "\n".join(m["content"] for m in ex.prompt_messages if m["role"] != "system")


def _rows(examples, predictions, references, per_example) -> list[dict[str, Any]]:
    scores = per_example if per_example else [None] * len(examples)
    return [{"input": _input_text(ex), "reference": ref, "prediction": pred, "score": score}
            for ex, pred, ref, score in zip(examples, predictions, references, scores)]


def _generate(lm, examples, settings, task: str):
    prompts = [ex.prompt_messages for ex in examples]
    preds, stats = inference.generate(lm, prompts, max_new_tokens=settings.max_new_tokens,
                                      batch_size=settings.batch_size, max_prompt_tokens=settings.max_seq_length,
                                      desc=task, stop_when=ANSWER_ENDS.get(task))
    return preds, {"seconds": stats.seconds, "new_tokens": stats.new_tokens,
                   "tokens_per_second": stats.tokens_per_second}


def _references(examples) -> list[Any]:
    refs = []
    for ex in examples:
        aliases = (ex.fields or {}).get("answers")
        refs.append(aliases if isinstance(aliases, list) and aliases else ex.reference)
    return refs


def _generative(metric_name: str) -> Callable:
    def run(lm, examples, settings) -> TaskOutcome:
        preds, gen = _generate(lm, examples, settings, metric_name)
        refs = _references(examples)
        result = metrics.METRICS[metric_name](preds, refs)
        ci = metrics.headline_ci(metric_name, preds, refs, result["per_example"], seed=settings.seed)
        return TaskOutcome(metric_name, result["scores"], metrics.HEADLINE[metric_name], result["per_example"], ci,
                           _rows(examples, preds, refs, result["per_example"]), gen)
    return run


_SQL_START = re.compile(r"\b(SELECT|WITH)\b", re.I)
_SQL_ENDS = (";", "```", "\n\n")


def clean_sql(text: str) -> str:
    """The first SQL statement of a generated answer: from its first SELECT/WITH to a semicolon, a blank line or
    a code fence (models often wrap a query in prose or markdown, or echo the schema's CREATE TABLEs first)."""
    m = _SQL_START.search(text)
    if not m:
        return text.strip().splitlines()[0].strip() if text.strip() else ""
    rest = text[m.start():]
    for stop in _SQL_ENDS:
        rest = rest.split(stop, 1)[0]
    return " ".join(rest.split())


def sql_statement_complete(text: str) -> bool:
    """Whether ``clean_sql`` has its statement whole: a SELECT/WITH and one of its ends after it. Nothing a model
    writes after that changes the statement scored, so generation can stop there."""
    m = _SQL_START.search(text)
    return bool(m) and any(end in text[m.end():] for end in _SQL_ENDS)


def check_sql_schemas(examples: list[Example], *, skip_invalid: bool = False,
                      seed: int = 0) -> tuple[list[Example], list[dict[str, Any]]]:
    """Text-to-SQL examples whose database schema (the row's CREATE TABLE context) runs in SQLite, checked before a
    model is loaded. A row whose schema does not is an error naming its file, line and db_id; with
    ``skip_invalid`` it is left out instead. Returns (the examples kept, one {row, db_id, error} per row left out)."""
    kept, invalid = [], []
    verdicts: dict[str, str | None] = {}  # per schema: the error, or None (many rows share a database's schema)
    for ex in examples:
        context = (ex.fields or {}).get("context")
        if not context:
            kept.append(ex)  # (no schema to check: the task says what it needs)
            continue
        if context not in verdicts:
            try:
                build_database(str(context), seed=seed).close()
                verdicts[context] = None
            except TunelabError as e:
                verdicts[context] = str(e)
        error = verdicts[context]
        if error is None:
            kept.append(ex)
            continue
        db_id = (ex.fields or {}).get("db_id")
        where = f"{ex.locator}" + (f" (db_id {db_id})" if db_id not in (None, "") else "")
        if not skip_invalid:
            raise TunelabError(f"{where}: the row's database schema does not run in SQLite: {error}; or pass "
                               "--skip_invalid_rows to leave such rows out (they are counted in the results)")
        invalid.append({"row": ex.locator, "db_id": db_id, "error": error})
    if invalid:
        log.warning("%d of %d text-to-SQL rows left out (--skip_invalid_rows): their database schema does not run "
                    "in SQLite; first: %s", len(invalid), len(examples), invalid[0]["row"])
        if not kept:
            raise TunelabError(f"every one of the {len(examples)} text-to-SQL rows has a database schema that does "
                               "not run in SQLite; nothing is left to evaluate")
    return kept, invalid


def _text2sql(lm, examples, settings) -> TaskOutcome:
    raw, gen = _generate(lm, examples, settings, "text2sql")
    preds = [clean_sql(p) for p in raw]
    golds = [ex.reference for ex in examples]
    contexts = [(ex.fields or {}).get("context") for ex in examples]
    if settings.sql_database:
        result = execution_accuracy(preds, golds, db_paths=settings.sql_database, seed=settings.seed)
    else:
        if any(not c for c in contexts):
            bad = next(ex for ex, c in zip(examples, contexts) if not c)
            raise TunelabError(f"{bad.locator}: text2sql needs a 'context' column with the CREATE TABLE statements "
                               "(or pass --sql_database FILE.sqlite)")
        result = execution_accuracy(preds, golds, contexts=contexts, seed=settings.seed)
    rows = _rows(examples, preds, golds, result["per_example"])
    for row, raw_text in zip(rows, raw):
        row["raw_prediction"] = raw_text
    scores = dict(result["scores"], gold_errors=result.get("gold_errors", 0))
    return TaskOutcome("text2sql", scores, "execution_accuracy", result["per_example"],
                       metrics.headline_ci("text2sql", preds, golds, result["per_example"], seed=settings.seed), rows,
                       gen)


def _classification(lm, examples, settings) -> TaskOutcome:
    if lm.task_kind != "seq_cls":
        conversations = [_as_question(ex) for ex in examples]
        return _generative("classification")(lm, conversations, settings)
    if any(ex.texts is None for ex in examples):
        raise TunelabError("classification needs rows with a text (or sentence pair) and a label")
    preds = inference.classify(lm, examples, batch_size=settings.batch_size, max_length=settings.max_seq_length)
    refs = [ex.label for ex in examples]
    result = metrics.classification(preds, refs)
    names = sorted({str(n) for n in lm.model.config.id2label.values()})
    if not set(names) & {str(r).strip() for r in refs}:
        # An untrained head (a base encoder's) predicts labels of its own: 0% against the data's labels is no
        # measurement of the model.
        note = (f"the model has no classification head for these labels (its labels are {', '.join(names)}; the "
                f"data's are {', '.join(sorted(set(map(str, refs)))[:5])}): no accuracy is reported")
        log.warning(note)
        return TaskOutcome("classification", {"accuracy": None, "macro_f1": None}, "accuracy", [], None,
                           _rows(examples, preds, refs, result["per_example"]), note=note)
    return TaskOutcome("classification", result["scores"], "accuracy", result["per_example"],
                       metrics.headline_ci("classification", preds, refs, result["per_example"], seed=settings.seed),
                       _rows(examples, preds, refs, result["per_example"]))


def _as_question(ex: Example) -> Example:
    from tunelab.data.formats import as_conversation

    return as_conversation(ex)


def _language_modeling(lm, examples, settings) -> TaskOutcome:
    losses = inference.response_losses(lm, examples, batch_size=settings.batch_size,
                                       max_seq_length=settings.max_seq_length)
    nll = np.array([r["nll_sum"] for r in losses])
    tok = np.array([r["tokens"] for r in losses])
    if tok.sum() == 0:
        raise TunelabError("language_modeling: no tokens to score (every example was empty after truncation)")

    def ppl(idx: np.ndarray) -> float:
        return float(math.exp(nll[idx].sum() / max(tok[idx].sum(), 1)))

    all_idx = np.arange(len(losses))
    per_token = [float(n / t) if t else float("nan") for n, t in zip(nll, tok)]
    ci = metrics.bootstrap_ci(len(losses), ppl, seed=settings.seed) if len(losses) > 1 else None
    scores = {"perplexity": ppl(all_idx), "cross_entropy": float(nll.sum() / tok.sum()), "tokens": int(tok.sum())}
    refs = [ex.reference if ex.text is None else ex.text for ex in examples]
    rows = _rows(examples, [""] * len(examples), refs, per_token)
    for row, n in zip(rows, tok):  # perplexity is per token: a resample of examples weighs each by its tokens
        row["tokens"] = int(n)
    return TaskOutcome("language_modeling", scores, "perplexity", per_token, ci, rows)


def _similarity(lm, examples, settings) -> TaskOutcome:
    import torch

    if any(ex.texts is None or len(ex.texts) < 2 for ex in examples):
        raise TunelabError("similarity needs sentence pairs (sentence1, sentence2) with a gold score")
    try:
        gold = [float(ex.label) for ex in examples]
    except (TypeError, ValueError):
        raise TunelabError("similarity needs a numeric gold score per pair (column 'score' or 'label')") from None
    a = inference.embed(lm, [ex.texts[0] for ex in examples], batch_size=max(settings.batch_size, 32))
    b = inference.embed(lm, [ex.texts[1] for ex in examples], batch_size=max(settings.batch_size, 32))
    cos = torch.nn.functional.cosine_similarity(a, b).tolist()
    result = metrics.spearman(cos, gold)
    ci = metrics.spearman_ci(cos, gold, seed=settings.seed) if len(gold) > 2 else None
    return TaskOutcome("similarity", result["scores"], "spearman", [], ci,
                       _rows(examples, [f"{c:.4f}" for c in cos], [str(g) for g in gold], []))


# Where a task's answer naturally ends, besides the end of the model's turn (its end-of-turn tokens): generation stops
# there instead of running on to max_new_tokens. text2sql scores one statement (clean_sql), so what a model writes
# after it is never scored, only paid for.
ANSWER_ENDS: dict[str, Callable[[str], bool]] = {"text2sql": sql_statement_complete}

TASKS: dict[str, Callable[[Any, list[Example], TaskSettings], TaskOutcome]] = {
    "summarization": _generative("summarization"),
    "translation": _generative("translation"),
    "qa": _generative("qa"),
    "text2sql": _text2sql,
    "classification": _classification,
    "language_modeling": _language_modeling,
    "similarity": _similarity,
}

# Which way is better, for retention ratios and reports.
HIGHER_IS_BETTER = {"perplexity": False, "cross_entropy": False}


def run_task(task: str, lm, examples: list[Example], settings: TaskSettings) -> TaskOutcome:
    if task not in TASKS:
        raise TunelabError(f"--task {task}: unknown task; choose one of {', '.join(TASKS)}")
    if not examples:
        raise TunelabError(f"--task {task}: no examples to evaluate")
    return TASKS[task](lm, examples, settings)
