"""Retention ratios: which way a metric points, and no ratio where the base shows none of the skill."""

import pytest

from tunelab.evaluation.retention import compare_scores


def test_ratio_follows_the_metric_direction():
    assert compare_scores(0.5, 0.25, "contains_answer") == {"retention_ratio": 0.5, "forgetting": 0.25}
    lower = compare_scores(10.0, 20.0, "perplexity")
    assert lower["retention_ratio"] == pytest.approx(0.5) and lower["forgetting"] == pytest.approx(10.0)
    assert compare_scores(None, 0.3, "bleu") == {"retention_ratio": None, "forgetting": None}


def test_no_ratio_against_a_base_that_does_not_translate():
    """BLEU 0.34 -> 0.90 is noise, not 265% retained: no ratio, the difference, and a note saying why."""
    weak = compare_scores(0.34, 0.90, "bleu")
    assert weak["retention_ratio"] is None and weak["forgetting"] == pytest.approx(-0.56)
    assert "bleu 0.34, below 1" in weak["retention_note"]
    able = compare_scores(20.0, 15.0, "bleu")
    assert able["retention_ratio"] == pytest.approx(0.75) and "retention_note" not in able
    # The floor is BLEU's (0-100): a 0-1 accuracy of 0.34 is a skill, with a ratio.
    assert compare_scores(0.34, 0.17, "contains_answer")["retention_ratio"] == pytest.approx(0.5)
