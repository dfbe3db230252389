"""From CompareOptions (CLI flags or Python keywords) to a finished comparison."""

from __future__ import annotations

from pathlib import Path

from tunelab.comparison.recipe import Recipe, apply_overrides, load_recipe
from tunelab.comparison.runner import ComparisonOutcome, run_comparison
from tunelab.config import CompareOptions

BUDGET_OVERRIDES = ("max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                    "max_seq_length", "group_by_length", "packing", "bf16")
EVAL_OVERRIDES = ("max_eval_samples", "probe_samples", "max_new_tokens")
SEARCH_OVERRIDES = ("trials", "validation_fraction", "objective")  # --search_<name>


def compare_from_options(opts: CompareOptions) -> ComparisonOutcome:
    recipe = recipe_from_options(opts)
    out = Path(opts.output_dir or f"runs/compare-{recipe.name}")
    return run_comparison(recipe, out, data_dir=opts.data_dir, device=opts.device, force=opts.force,
                          retry_failed=opts.retry_failed, run_timeout=opts.run_timeout, parallel=opts.parallel,
                          launcher=opts.launcher, ray_address=opts.ray_address, ray_num_cpus=opts.ray_num_cpus,
                          ray_num_gpus=opts.ray_num_gpus)


def recipe_from_options(opts: CompareOptions) -> Recipe:
    """The recipe with the command line's overrides applied."""
    recipe = load_recipe(opts.recipe)
    budget = {k: getattr(opts, k) for k in BUDGET_OVERRIDES if getattr(opts, k) is not None}
    if "max_steps" not in budget and "num_train_epochs" in budget:
        budget["max_steps"] = -1  # epochs only count when no step budget is set
    return apply_overrides(recipe, methods=opts.methods, seeds=opts.seeds, budget=budget,
                           eval_settings={k: getattr(opts, k) for k in EVAL_OVERRIDES}, model=opts.model_name_or_path,
                           search=opts.search, search_settings={k: getattr(opts, f"search_{k}")
                                                                for k in SEARCH_OVERRIDES},
                           curve_points=opts.curve_points, diagnostics=opts.diagnostics, retention=opts.retention)
