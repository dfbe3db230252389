"""Task metrics, one function each, all with the same return shape.

Every metric takes predictions and references and returns::

    {"scores": {name: float, ...}, "per_example": [float, ...]}

``per_example`` holds the task's headline metric (``HEADLINE[task]``) per example, for a bootstrap confidence
interval (:func:`mean_ci`); a corpus-level headline (BLEU) has its own interval in :data:`CORPUS_INTERVALS`.
Rank correlations have no per-example score: their ``per_example`` is empty and their interval comes from
resampling pairs (:func:`spearman_ci`, built on :func:`bootstrap_ci`).

The numbers come from the libraries made for them: ROUGE from ``rouge_score``, BLEU and chrF from ``sacrebleu``,
Spearman from ``scipy.stats``, macro-F1 from ``sklearn.metrics``. Adding a metric costs one function here and
one entry in :data:`METRICS` (and :data:`HEADLINE`).
"""

from __future__ import annotations

import re
import string
import warnings
from typing import Callable, Sequence, Union

import numpy as np

from tunelab.errors import TunelabError
from tunelab.evaluation.sql_exec import execution_accuracy

References = Sequence[Union[str, Sequence[str]]]

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _check_lengths(predictions: Sequence, references: Sequence, what: str) -> None:
    if len(predictions) != len(references):
        raise TunelabError(
            f"{what}: {len(predictions)} predictions but {len(references)} references; "
            "pass one reference (or one list of references) per prediction"
        )


def _as_reference_lists(references: References, what: str) -> list[list[str]]:
    """Each reference entry as a non-empty list of strings (a str is one reference)."""
    out = []
    for i, ref in enumerate(references):
        refs = [ref] if isinstance(ref, str) else list(ref)
        if not refs or not all(isinstance(r, str) for r in refs):
            raise TunelabError(
                f"{what}: reference {i} must be a string or a non-empty list of strings, got {ref!r}; "
                "fix that row of the evaluation data"
            )
        out.append(refs)
    return out


# --------------------------------------------------------------------------------------------- summarization

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _sentences_on_lines(text: str) -> str:
    """rougeLsum treats newlines as sentence boundaries; text without newlines is split after . ! ?"""
    text = text.strip()
    if "\n" in text:
        return "\n".join(line.strip() for line in text.splitlines() if line.strip())
    return "\n".join(s for s in _SENTENCE_END.split(text) if s)


def rouge(predictions: Sequence[str], references: References) -> dict:
    """ROUGE-1/2/L/Lsum mean F-measure (0-1) with Porter stemming, via ``rouge_score``.

    A reference entry may be a list of references: the one with the highest F-measure counts, per ROUGE type
    (``RougeScorer.score_multi``). per_example: rougeL F-measure.
    """
    from rouge_score import rouge_scorer

    _check_lengths(predictions, references, "rouge")
    ref_lists = _as_reference_lists(references, "rouge")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    per_type: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for pred, refs in zip(predictions, ref_lists):
        result = scorer.score_multi([_sentences_on_lines(r) for r in refs], _sentences_on_lines(pred))
        for t in ROUGE_TYPES:
            per_type[t].append(float(result[t].fmeasure))
    scores = {t: float(np.mean(v)) if v else float("nan") for t, v in per_type.items()}
    return {"scores": scores, "per_example": per_type["rougeL"]}


# ----------------------------------------------------------------------------------------------- translation

def bleu_chrf(predictions: Sequence[str], references: References) -> dict:
    """Corpus BLEU and chrF (0-100, as sacreBLEU reports them) with sacreBLEU's default settings.

    Entries with fewer references than others are padded with ``None``, which sacreBLEU ignores.
    per_example: sentence-level BLEU (``sacrebleu.sentence_bleu``, effective n-gram order).
    """
    import sacrebleu

    _check_lengths(predictions, references, "bleu_chrf")
    ref_lists = _as_reference_lists(references, "bleu_chrf")
    hyps = [str(p) for p in predictions]
    if not hyps:
        return {"scores": {"bleu": float("nan"), "chrf": float("nan")}, "per_example": []}
    streams = _reference_streams(ref_lists)
    bleu = sacrebleu.corpus_bleu(hyps, streams)
    chrf = sacrebleu.corpus_chrf(hyps, streams)
    per_example = [float(sacrebleu.sentence_bleu(h, refs).score) for h, refs in zip(hyps, ref_lists)]
    return {"scores": {"bleu": float(bleu.score), "chrf": float(chrf.score)}, "per_example": per_example}


def _reference_streams(ref_lists: list[list[str]]) -> list[list[str | None]]:
    n_streams = max(len(r) for r in ref_lists)
    return [[refs[k] if k < len(refs) else None for refs in ref_lists] for k in range(n_streams)]


def corpus_bleu_ci(predictions: Sequence[str], references: References, **kwargs) -> tuple[float, float]:
    """Bootstrap interval of corpus BLEU: sentences are resampled and the corpus score recomputed from their summed
    n-gram statistics (Koehn 2004; what ``sacrebleu --confidence`` does). Corpus BLEU is not the mean of sentence
    BLEU, so an interval of that mean would not contain the score. Keywords as :func:`bootstrap_ci`."""
    _check_lengths(predictions, references, "corpus_bleu_ci")
    if not predictions:
        return (float("nan"), float("nan"))
    corpus_bleu_of = corpus_bleu_resampler(predictions, references)
    return bootstrap_ci(len(predictions), corpus_bleu_of, **kwargs)


def corpus_bleu_resampler(predictions: Sequence[str], references: References) -> Callable[[np.ndarray], float]:
    """A function of example indices (drawn with replacement) giving the corpus BLEU of those sentences, computed
    from their summed n-gram statistics: what a bootstrap of corpus BLEU resamples (Koehn 2004)."""
    from sacrebleu.metrics import BLEU

    _check_lengths(predictions, references, "corpus_bleu_resampler")
    ref_lists = _as_reference_lists(references, "corpus_bleu_resampler")
    metric = BLEU()
    # sacreBLEU's own bootstrap (sacrebleu.significance) works on these per-sentence statistics the same way.
    stats = np.asarray(metric._extract_corpus_statistics([str(p) for p in predictions],
                                                         _reference_streams(ref_lists)), dtype=float)
    return lambda idx: float(metric._compute_score_from_stats(stats[idx].sum(0)).score)


# -------------------------------------------------------------------------------------------- classification

def classification(predictions: Sequence[str], references: Sequence[str]) -> dict:
    """Accuracy and macro-F1 over string labels compared after ``strip()``.

    Macro-F1 (``sklearn.metrics.f1_score``) averages over the labels that occur in the references, so a
    generated label outside the label set counts as a miss, not as an extra class. per_example: 1.0/0.0.
    """
    from sklearn.metrics import f1_score

    _check_lengths(predictions, references, "classification")
    preds = [str(p).strip() for p in predictions]
    refs = [str(r).strip() for r in references]
    if not refs:
        return {"scores": {"accuracy": float("nan"), "macro_f1": float("nan")}, "per_example": []}
    per_example = [float(p == r) for p, r in zip(preds, refs)]
    labels = sorted(set(refs))
    macro_f1 = f1_score(refs, preds, labels=labels, average="macro", zero_division=0)
    return {"scores": {"accuracy": float(np.mean(per_example)), "macro_f1": float(macro_f1)},
            "per_example": per_example}


# ------------------------------------------------------------------------------------------------ similarity

def _spearman_rho(scores: np.ndarray, gold: np.ndarray) -> float:
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns nan; nan is the answer
        return float(spearmanr(scores, gold).statistic)


def spearman(scores: Sequence[float], gold: Sequence[float]) -> dict:
    """Spearman rank correlation (``scipy.stats.spearmanr``) between predicted and gold similarity scores.

    nan when either side is constant. per_example is empty: use :func:`spearman_ci` for an interval.
    """
    _check_lengths(scores, gold, "spearman")
    try:
        s = np.asarray(scores, dtype=float)
        g = np.asarray(gold, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TunelabError(f"spearman: scores and gold must be numbers ({exc}); check the score column") from None
    if len(s) < 2:
        return {"scores": {"spearman": float("nan")}, "per_example": []}
    return {"scores": {"spearman": _spearman_rho(s, g)}, "per_example": []}


# ------------------------------------------------------------------------------------- confidence intervals

def bootstrap_ci(
    n: int,
    statistic: Callable[[np.ndarray], float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``n`` examples.

    ``statistic`` receives an array of ``n`` example indices drawn with replacement and returns a float, so
    it can compute anything over the resampled examples (a mean of per-example scores, a correlation over
    resampled pairs). Resamples whose statistic is nan (e.g. a constant resample for a rank correlation) are
    left out. Deterministic for a seed. ``(nan, nan)`` when ``n`` is 0 or every resample is nan.
    """
    if not 0 < confidence < 1:
        raise TunelabError(f"bootstrap_ci: confidence must be between 0 and 1, got {confidence}; use e.g. 0.95")
    if n_resamples < 1:
        raise TunelabError(f"bootstrap_ci: n_resamples must be at least 1, got {n_resamples}")
    if n <= 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    stats = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(n_resamples)], dtype=float)
    stats = stats[~np.isnan(stats)]
    if stats.size == 0:
        return (float("nan"), float("nan"))
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return (float(low), float(high))


def mean_ci(values: Sequence[float], **kwargs) -> tuple[float, float]:
    """Bootstrap interval of the mean of per-example values (keywords as :func:`bootstrap_ci`)."""
    arr = np.asarray(values, dtype=float)
    return bootstrap_ci(len(arr), lambda idx: float(arr[idx].mean()), **kwargs)


def headline_ci(task: str, predictions: Sequence[str], references: References, per_example: Sequence[float],
                **kwargs) -> tuple[float, float] | None:
    """The 95% interval of a task's headline score: recomputed over resampled examples where the headline is a
    corpus-level score (:data:`CORPUS_INTERVALS`), else the interval of the mean of ``per_example``. None with
    fewer than two examples."""
    if len(predictions) < 2:
        return None
    if task in CORPUS_INTERVALS:
        return CORPUS_INTERVALS[task](predictions, references, **kwargs)
    return mean_ci(per_example, **kwargs)


def spearman_ci(scores: Sequence[float], gold: Sequence[float], **kwargs) -> tuple[float, float]:
    """Bootstrap interval of Spearman rho, resampling (score, gold) pairs (keywords as :func:`bootstrap_ci`)."""
    _check_lengths(scores, gold, "spearman_ci")
    s = np.asarray(scores, dtype=float)
    g = np.asarray(gold, dtype=float)
    return bootstrap_ci(len(s), lambda idx: _spearman_rho(s[idx], g[idx]), **kwargs)


# ------------------------------------------------------------------------------------------ short answers

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower-case, drop punctuation and articles, collapse whitespace."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _aliases(answer: Union[str, Sequence[str]]) -> list[str]:
    aliases = [answer] if isinstance(answer, str) else list(answer)
    return [a for a in (normalize_answer(x) for x in aliases) if a]


def normalized_match(prediction: str, answer: Union[str, Sequence[str]]) -> float:
    """1.0 when the normalised prediction equals a normalised answer (or any alias), else 0.0."""
    pred = normalize_answer(prediction)
    return float(any(pred == a for a in _aliases(answer)))


def contains_answer(prediction: str, answer: Union[str, Sequence[str]]) -> float:
    """1.0 when a normalised answer (or alias) occurs in the normalised prediction as whole words, else 0.0.

    Whole words: the answer "1" is not found in "1990", "cat" is not found in "category".
    """
    pred = f" {normalize_answer(prediction)} "
    return float(any(f" {a} " in pred for a in _aliases(answer)))


def qa(predictions: Sequence[str], references: References) -> dict:
    """Short-answer accuracy: normalised exact match and containment; references may be alias lists.

    per_example: containment (generative models tend to answer in a sentence).
    """
    _check_lengths(predictions, references, "qa")
    _as_reference_lists(references, "qa")  # validates
    exact = [normalized_match(p, r) for p, r in zip(predictions, references)]
    contains = [contains_answer(p, r) for p, r in zip(predictions, references)]
    mean = (lambda v: float(np.mean(v)) if v else float("nan"))
    return {"scores": {"exact_match": mean(exact), "contains_answer": mean(contains)}, "per_example": contains}


# ---------------------------------------------------------------------------------------------- registry

METRICS: dict[str, Callable[..., dict]] = {
    "summarization": rouge,
    "translation": bleu_chrf,
    "classification": classification,
    "text2sql": execution_accuracy,  # needs contexts= or db_paths= as keywords
    "similarity": spearman,
    "qa": qa,
}

# Headlines that are corpus-level scores, not means of per-example ones: their interval resamples the corpus.
CORPUS_INTERVALS: dict[str, Callable[..., tuple[float, float]]] = {
    "translation": corpus_bleu_ci,
}

HEADLINE: dict[str, str] = {
    "summarization": "rougeL",
    "translation": "bleu",
    "classification": "accuracy",
    "text2sql": "execution_accuracy",
    "similarity": "spearman",
    "qa": "contains_answer",
}
