"""Task metrics against values worked out by hand on small fixed inputs."""

import math

import numpy as np
import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.metrics import (
    HEADLINE,
    METRICS,
    bleu_chrf,
    bootstrap_ci,
    classification,
    contains_answer,
    corpus_bleu_ci,
    headline_ci,
    mean_ci,
    normalized_match,
    qa,
    rouge,
    spearman,
    spearman_ci,
)


# ---------------------------------------------------------------------------------------------------- ROUGE

def test_rouge_partial_overlap_matches_hand_computation():
    # pred 3 tokens, ref 6 tokens, all 3 pred unigrams in ref: P=1, R=1/2, F=2/3.
    # bigrams: pred {the cat, cat sat} both in ref (5 bigrams): P=1, R=2/5, F=4/7. LCS = 3: same as ROUGE-1.
    result = rouge(["the cat sat"], ["the cat sat on the mat"])
    s = result["scores"]
    assert s["rouge1"] == pytest.approx(2 / 3)
    assert s["rouge2"] == pytest.approx(4 / 7)
    assert s["rougeL"] == pytest.approx(2 / 3)
    assert result["per_example"] == [pytest.approx(2 / 3)]


def test_rouge_uses_stemming():
    assert rouge(["cats running"], ["cat run"])["scores"]["rouge1"] == pytest.approx(1.0)


def test_rouge_lsum_splits_sentences_but_rouge_l_does_not():
    # Same two sentences in swapped order: one LCS over the whole text finds 3 of 6 tokens (F=0.5), while the
    # summary-level LCS matches each reference sentence with its twin (F=1).
    s = rouge(["The cat sat. The dog ran."], ["The dog ran. The cat sat."])["scores"]
    assert s["rougeL"] == pytest.approx(0.5)
    assert s["rougeLsum"] == pytest.approx(1.0)


def test_rouge_multiple_references_takes_the_best():
    result = rouge(["alpha beta gamma", "delta"], [["x y z", "alpha beta gamma"], "delta"])
    assert result["scores"]["rouge1"] == pytest.approx(1.0)
    assert rouge(["alpha beta gamma"], [["x y z"]])["scores"]["rouge1"] == 0.0


def test_rouge_rejects_length_mismatch():
    with pytest.raises(TunelabError, match="2 predictions but 1 references"):
        rouge(["a", "b"], ["a"])


# ------------------------------------------------------------------------------------------- BLEU and chrF

def test_bleu_matches_hand_computation():
    # n-gram precisions 5/6, 3/5, 2/4, 1/3; same length so no brevity penalty.
    expected = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    result = bleu_chrf(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert result["scores"]["bleu"] == pytest.approx(expected, abs=0.01)
    assert result["per_example"][0] == pytest.approx(expected, abs=0.01)
    assert 0 < result["scores"]["chrf"] < 100


def test_bleu_identical_and_disjoint():
    same = bleu_chrf(["one two three four five"], ["one two three four five"])
    assert same["scores"]["bleu"] == pytest.approx(100.0)
    assert same["scores"]["chrf"] == pytest.approx(100.0)
    other = bleu_chrf(["one two three four five"], ["six seven eight nine ten"])
    assert other["scores"]["bleu"] == pytest.approx(0.0)
    assert other["per_example"] == [pytest.approx(0.0)]


def test_bleu_uneven_reference_counts_are_padded():
    # The first example matches only its second reference; the second example has a single reference.
    preds = ["a b c d e", "f g h i j"]
    refs = [["q r s t u", "a b c d e"], "f g h i j"]
    result = bleu_chrf(preds, refs)
    assert result["scores"]["bleu"] == pytest.approx(100.0)
    assert result["per_example"] == [pytest.approx(100.0), pytest.approx(100.0)]


# --------------------------------------------------------------------------------------------- classification

def test_classification_accuracy_and_macro_f1():
    # a: P=1 R=1 F=1; b: P=1/2 R=1 F=2/3; c: P=1 R=1/2 F=2/3 -> macro 7/9. Whitespace is stripped.
    result = classification([" a", "b", "b", "c"], ["a", "b", "c", "c "])
    assert result["scores"]["accuracy"] == pytest.approx(0.75)
    assert result["scores"]["macro_f1"] == pytest.approx(7 / 9)
    assert result["per_example"] == [1.0, 1.0, 0.0, 1.0]


def test_classification_label_outside_the_label_set_is_a_miss_not_a_class():
    # labels {a, b}: a F=1, b F=0 -> 0.5 (a third class "zzz" would make it 1/3)
    assert classification(["a", "zzz"], ["a", "b"])["scores"]["macro_f1"] == pytest.approx(0.5)


# -------------------------------------------------------------------------------------------------- Spearman

def test_spearman_matches_hand_computation():
    # ranks differ by d = (-1, 1, -1, 1, 0): rho = 1 - 6*4 / (5*24) = 0.8
    result = spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5])
    assert result["scores"]["spearman"] == pytest.approx(0.8)
    assert result["per_example"] == []
    assert spearman([1, 2, 3], [30, 20, 10])["scores"]["spearman"] == pytest.approx(-1.0)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3])["scores"]["spearman"])


# ------------------------------------------------------------------------------------- confidence intervals

def test_bootstrap_is_deterministic_and_seed_dependent():
    values = [i / 36 for i in range(37)]  # mean 0.5, standard error about 0.05
    a = mean_ci(values, seed=0)
    assert a == mean_ci(values, seed=0)
    assert a != mean_ci(values, seed=1)
    low, high = a
    assert 0.35 < low < 0.45 and 0.55 < high < 0.65
    narrow = mean_ci(values, confidence=0.5)
    assert low < narrow[0] < 0.5 < narrow[1] < high


def test_bootstrap_statistic_receives_resampled_indices():
    seen = []

    def statistic(idx: np.ndarray) -> float:
        seen.append(idx)
        return float(len(idx))

    assert bootstrap_ci(7, statistic, n_resamples=20) == (7.0, 7.0)
    assert len(seen) == 20
    assert all(i.min() >= 0 and i.max() < 7 for i in seen)
    assert len({tuple(i) for i in seen}) > 1  # drawn with replacement, not the identity
    assert all(math.isnan(x) for x in bootstrap_ci(0, statistic))


def test_mean_ci_of_constant_values_and_spearman_ci_over_pairs():
    assert mean_ci([0.25] * 10) == (0.25, 0.25)
    # A perfectly monotonic relation stays at rho = 1 in every resample (constant resamples are dropped).
    assert spearman_ci([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 12], n_resamples=200) == pytest.approx((1.0, 1.0))
    low, high = spearman_ci([1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 4, 3, 6, 5, 8, 7], n_resamples=300)
    assert -1.0 <= low < 0.9 < high <= 1.0


# Weak translations, as a small model writes them: short, French-looking, few n-grams in common with the reference.
_REFS = ["un homme en manteau bleu tire un traîneau dans la neige", "deux enfants jouent au ballon dans un parc",
         "une femme vend des fleurs au marché", "un chien noir nage dans un lac avec une balle",
         "des ouvriers réparent une route en ville", "une petite fille court vers la mer",
         "un groupe de gens regarde un match de football", "un vieil homme lit le journal sur un banc"]
_HYPS = ["je suis le début de la nuit de la femme", "le coeur des enfants dans le parc",
         "la femme de la femme de la femme", "un chien dans le lac", "je ne comprends pas la ville",
         "la fille de la mer", "le match de la femme", "un homme sur le banc"]


def test_translation_interval_is_of_corpus_bleu_and_contains_it():
    bleu = bleu_chrf(_HYPS, _REFS)
    score, sentence_mean = bleu["scores"]["bleu"], float(np.mean(bleu["per_example"]))
    low, high = corpus_bleu_ci(_HYPS, _REFS, seed=0)
    assert low < score < high
    # Sentence BLEU (effective order) is far above corpus BLEU on such text: the interval of its mean misses the score.
    assert sentence_mean > 2 * score and not mean_ci(bleu["per_example"], seed=0)[0] < score
    assert headline_ci("translation", _HYPS, _REFS, bleu["per_example"], seed=0) == (low, high)
    assert (low, high) == corpus_bleu_ci(_HYPS, [[r] for r in _REFS], seed=0)  # one-reference lists, same thing
    assert corpus_bleu_ci(_HYPS, _REFS, seed=1) != (low, high)


def test_headline_interval_is_of_the_mean_for_per_example_metrics():
    per_example = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    preds = ["x"] * len(per_example)
    assert headline_ci("classification", preds, preds, per_example, seed=3) == mean_ci(per_example, seed=3)
    assert headline_ci("classification", ["x"], ["x"], [1.0], seed=3) is None


def test_bootstrap_rejects_bad_confidence():
    with pytest.raises(TunelabError, match="confidence"):
        mean_ci([1.0], confidence=95)


# ------------------------------------------------------------------------------------------- short answers

def test_normalized_match_and_containment():
    assert normalized_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert normalized_match("new york city.", ["NYC", "New York City"]) == 1.0
    assert normalized_match("Paris, France", "Paris") == 0.0
    assert contains_answer("Paris, France", "Paris") == 1.0
    assert contains_answer("It happened in 1990.", "1990") == 1.0
    assert contains_answer("It happened in 1990.", "19") == 0.0  # whole words only
    assert contains_answer("anything", ["", "the"]) == 0.0  # an alias that normalises to nothing never matches


def test_qa_scores():
    result = qa(["Paris", "I think it is Berlin.", "Rome"], ["paris", ["Berlin", "Berlin, Germany"], "Madrid"])
    assert result["scores"]["exact_match"] == pytest.approx(1 / 3)
    assert result["scores"]["contains_answer"] == pytest.approx(2 / 3)
    assert result["per_example"] == [1.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------------------- registry

def test_registry_headline_metrics_are_reported():
    assert set(METRICS) == set(HEADLINE)
    samples = {
        "summarization": (["the cat sat"], ["the cat sat"]),
        "translation": (["one two three four"], ["one two three four"]),
        "classification": (["a", "b"], ["a", "a"]),
        "similarity": ([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]),
        "qa": (["Paris"], ["paris"]),
    }
    for task, (preds, refs) in samples.items():
        result = METRICS[task](preds, refs)
        assert HEADLINE[task] in result["scores"], task
        assert set(result) >= {"scores", "per_example"}
    sql = METRICS["text2sql"](["SELECT a FROM t"], ["SELECT a FROM t"], contexts=["CREATE TABLE t (a INTEGER)"])
    assert sql["scores"][HEADLINE["text2sql"]] == 1.0
