"""Knowledge retention: what a model could do before tuning, and still can after.

Two kinds of probe:
- task probes (general knowledge, translation, similarity, ...): the same task scored on the base model
  ("before") and on the tuned one ("after"), giving a retention ratio and the amount forgotten;
- the drift probe: the base model's own greedy continuations of general prompts (generated once, cached), on
  which the tuned model's mean token-level KL divergence from the base and its change in cross-entropy are
  measured. Logits are shifted against labels, and "before" is always the base model itself.
For PEFT models every probe is also scored with the adapter disabled, which must reproduce the base model.
Probes are asked in the run's template but without its system prompt (:func:`general_view`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

from tunelab import inference
from tunelab.data.formats import Example
from tunelab.evaluation.tasks import HIGHER_IS_BETTER, TaskSettings, run_task
from tunelab.fileio import atomic_write_json
from tunelab.models import cache_dir

log = logging.getLogger(__name__)

DRIFT_NEW_TOKENS = 48


# Scores below which a base model shows none of the skill a probe tests (corpus BLEU, 0-100: it does not translate).
# A ratio against such a base divides noise by noise (BLEU 0.3 -> 0.9 would read as 300% retained).
NO_SKILL_BELOW = {"bleu": 1.0}

DRIFT_METRIC = "kl_divergence"  # the "metric" of a drift result: a divergence from the base, not a score before/after


def general_view(lm: inference.LoadedModel) -> inference.LoadedModel:
    """The model as retention probes ask it: in the run's template, without the run's system prompt. A probe asks
    what the model still knows, not whether it follows the task's instruction: under the demo's "Reply with SQL
    only" the fully fine-tuned model answered "What is the capital of France?" with SELECT capital() FROM France,
    which scored as forgetting (general knowledge 0.19 against 0.47 asked without it; the base 0.56 and 0.53)."""
    asked = lm.template.without_system_prompt()
    return lm if asked is lm.template else dataclasses.replace(lm, template=asked)


# Marks a probe result asked as general_view asks (results written before lack it: asked under the system prompt).
ASKED_WITHOUT_SYSTEM_PROMPT = "asked_without_system_prompt"
PROBE_PROMPTING = "without the run's system prompt"  # how probes are asked, as benchmark result files record it


def is_drift(result: dict[str, Any] | None) -> bool:
    """Whether a retention probe's result is the drift probe's (KL from the base, lower is better) rather than a task
    probe's scores before and after tuning. Every reader of eval results tells the two kinds apart through this."""
    return (result or {}).get("metric") == DRIFT_METRIC


def compare_scores(before: float | None, after: float | None, metric: str, *, no_skill_below: float | None = None,
                   no_skill_why: str | None = None, higher_is_better: bool | None = None) -> dict[str, Any]:
    """Retention ratio (1.0 = nothing lost) and forgetting (> 0 = worse), whichever way the metric points; no ratio,
    and a note saying why, where the base shows none of the skill (:data:`NO_SKILL_BELOW`, or the probe's own floor
    ``no_skill_below``, e.g. a benchmark's chance level plus its margin, with ``no_skill_why`` saying what it is).
    ``higher_is_better`` is for metrics tunelab does not know (lm-eval's say which way they point)."""
    if before is None or after is None or any(isinstance(x, float) and math.isnan(x) for x in (before, after)):
        return {"retention_ratio": None, "forgetting": None}
    higher_better = HIGHER_IS_BETTER.get(metric, True) if higher_is_better is None else higher_is_better
    floor = NO_SKILL_BELOW.get(metric) if no_skill_below is None else no_skill_below
    if higher_better and floor is not None and before < floor:
        why = no_skill_why or f"below {floor:g}"
        return {"retention_ratio": None, "forgetting": before - after,
                "retention_note": f"the base model scores {metric} {before:.2f}, {why}: it shows none of "
                                  "this skill, so there is nothing to retain and no ratio is given"}
    if higher_better:
        ratio = after / before if before else None
        return {"retention_ratio": ratio, "forgetting": before - after}
    ratio = before / after if after else None
    return {"retention_ratio": ratio, "forgetting": after - before}


def score_probe(task: str, lm, examples: list[Example], settings: TaskSettings) -> dict[str, Any]:
    outcome = run_task(task, lm, examples, settings)
    return {"metric": outcome.headline, "value": outcome.value, "scores": outcome.scores,
            "confidence_interval": outcome.confidence_interval, "num_examples": len(examples),
            "predictions": outcome.rows}


# --- drift ---------------------------------------------------------------------------------------------------

def _drift_cache_path(base: inference.LoadedModel, prompts: list[Example], new_tokens: int) -> Path:
    key = json.dumps({"model": str(Path(base.model_path).resolve()) if Path(base.model_path).exists()
                      else base.model_path, "template": base.template.name, "system": base.template.system_prompt,
                      "prompts": [p.messages for p in prompts], "new_tokens": new_tokens}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_dir() / "drift" / f"{digest}.json"


def _cached_continuations(path: Path, count: int) -> list[str] | None:
    """The cached continuations, or None where there are none, or none this cache can use: a file that is not
    what tunelab writes (edited, or cut short by a full disk) is generated again rather than trusted."""
    if not path.is_file():
        return None
    try:
        continuations = json.loads(path.read_text(encoding="utf-8"))["continuations"]
    except (ValueError, UnicodeDecodeError, KeyError, TypeError):
        continuations = None
    if isinstance(continuations, list) and len(continuations) == count and all(isinstance(c, str)
                                                                                for c in continuations):
        return continuations
    log.warning("%s: not a drift-reference cache tunelab can read; generating the references again", path)
    return None


def drift_references(base: inference.LoadedModel, prompts: list[Example], *, batch_size: int = 8,
                     new_tokens: int = DRIFT_NEW_TOKENS) -> list[Example]:
    """The base model's greedy continuations of the prompts, generated once per base model and cached."""
    path = _drift_cache_path(base, prompts, new_tokens)
    continuations = _cached_continuations(path, len(prompts))
    if continuations is None:
        continuations, _ = inference.generate(base, [p.messages for p in prompts], max_new_tokens=new_tokens,
                                              batch_size=batch_size, desc="drift references", strip=False)
        atomic_write_json(path, {"model_path": base.model_path, "continuations": continuations})
    return [Example(messages=[*p.messages, {"role": "assistant", "content": c}], locator=p.locator)
            for p, c in zip(prompts, continuations) if c]


def drift(base: inference.LoadedModel, lm: inference.LoadedModel, references: list[Example], *,
          batch_size: int = 8, per_example: bool = False) -> dict[str, Any]:
    """Mean token-level KL(base || tuned) on the base's own continuations, and the change in cross-entropy. With
    ``per_example``, also each continuation's summed KL and token count (``per_example``: the comparison's paired
    intervals resample them)."""
    from tunelab.evaluation.divergence import BaseReference

    reference = BaseReference.of(base, references, batch_size=batch_size)
    if not reference.tokens:
        return {"metric": DRIFT_METRIC, "kl_divergence": None, "num_tokens": 0}
    return {"metric": DRIFT_METRIC, **reference.compare(lm, batch_size=batch_size, per_example=per_example),
            "num_examples": len(references)}
