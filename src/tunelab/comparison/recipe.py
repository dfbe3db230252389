"""Recipes: one YAML file names the model, the task and its data, the retention probes, the methods to compare
(each with its own overrides and label), one shared budget and the seeds.

Every run of a comparison gets its TrainOptions and EvalOptions from here, so all methods see the same data in
the same order, the same number of steps, the same sequence length and the same effective batch size.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tunelab import run_files
from tunelab.comparison.search_settings import SearchSettings, check_range, check_settings, parse_search
from tunelab.config import EvalOptions, TrainOptions
from tunelab.errors import TunelabError
from tunelab.methods import get_method

RECIPE_KEYS = {"name", "description", "model", "task", "data", "system_prompt", "retention", "budget", "eval",
               "methods", "seeds", "template", "search", "curve_points", "curve_full_checkpoints", "diagnostics"}
DATA_KEYS = {"train", "eval", "sql_database", "holdout", "max_train_samples", "dataset_format", "input_columns",
             "target_column"}
BUDGET_KEYS = {"max_steps", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
               "max_seq_length", "lr_scheduler_type", "weight_decay", "max_grad_norm", "gradient_checkpointing",
               "optim", "logging_steps", "group_by_length", "packing", "bf16"}
EVAL_KEYS = {"max_eval_samples", "max_new_tokens", "probe_samples", "per_device_eval_batch_size"}
# Options a method entry may not override: they are the shared budget (or the comparison's own).
SHARED_ONLY = BUDGET_KEYS - {"gradient_checkpointing", "optim", "lr_scheduler_type", "weight_decay", "max_grad_norm",
                             "bf16"} | {
    "model_name_or_path", "dataset_name_or_path", "output_dir", "seed", "max_train_samples"}


@dataclass
class MethodEntry:
    label: str
    method: str
    overrides: dict[str, Any] = field(default_factory=dict)
    learning_rate_range: tuple[float, float] | None = None  # the learning-rate search's range, if not the family's

    def as_dict(self) -> dict[str, Any]:
        extra = {"learning_rate_range": list(self.learning_rate_range)} if self.learning_rate_range else {}
        return {"label": self.label, "method": self.method, **self.overrides, **extra}


@dataclass
class Recipe:
    name: str
    model: str
    task: str
    data: dict[str, Any]
    methods: list[MethodEntry]
    seeds: list[int]
    retention: list[str] = field(default_factory=list)
    budget: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    system_prompt: str | None = None
    template: str | None = None
    description: str = ""
    source: str = ""
    search: SearchSettings | None = None  # tune each entry's learning rate first (comparison/search.py)
    curve_points: int = 0  # trajectories: runs are also evaluated at K evenly spaced steps (trajectories.py)
    curve_full_checkpoints: bool = True  # full fine-tuning saves its model at the points (false: cheap signals only)
    diagnostics: bool = False  # each run's weight diagnostics (ΔW norms, effective rank, intruders): weights.py

    # --- identity ---------------------------------------------------------------------------------------------
    def shared_content(self) -> dict[str, Any]:
        """What every run shares: a change here invalidates every finished run."""
        shared = {"model": self.model, "task": self.task, "data": self.data, "retention": self.retention,
                  "budget": self.budget, "eval": self.eval, "system_prompt": self.system_prompt,
                  "template": self.template}
        if self.curve_points:  # (only when set: recipes without curves keep their finished runs' keys)
            shared.update(curve_points=self.curve_points, curve_full_checkpoints=self.curve_full_checkpoints)
        if self.diagnostics:
            shared["diagnostics"] = True
        if self.system_prompt is not None:  # probes are asked without it (retention.general_view): runs whose probes
            shared["probes"] = "without the system prompt"  # were asked under it are not finished runs of this recipe
        return shared

    def run_key(self, entry: MethodEntry, seed: int) -> str:
        blob = json.dumps({"shared": self.shared_content(), "method": entry.as_dict(), "seed": seed},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def base_key(self) -> str:
        content: dict[str, Any] = {"shared": self.shared_content(), "method": "base"}
        if _precision_dtype(self.budget):  # (a base scored in eval's auto dtype instead is not this recipe's base)
            content["torch_dtype"] = _precision_dtype(self.budget)
        blob = json.dumps(content, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        data = {"name": self.name, "description": self.description, "model": self.model, "task": self.task,
                "data": self.data, "system_prompt": self.system_prompt, "template": self.template,
                "retention": self.retention, "budget": self.budget, "eval": self.eval,
                "methods": [m.as_dict() for m in self.methods], "seeds": self.seeds,
                "search": dataclasses.asdict(self.search) if self.search else None,
                "curve_points": self.curve_points or None,
                "curve_full_checkpoints": None if self.curve_full_checkpoints else False,
                "diagnostics": self.diagnostics or None}
        return yaml.safe_dump({k: v for k, v in data.items() if v not in (None, "", [], {})}, sort_keys=False)

    # --- options for one run ----------------------------------------------------------------------------------
    def train_options(self, entry: MethodEntry, seed: int, *, train_file: str, output_dir: str,
                      device: str = "auto", gpu_bf16: bool | None = None) -> TrainOptions:
        from tunelab.config import TrainOptions

        values: dict[str, Any] = dict(model_name_or_path=self.model, dataset_name_or_path=train_file,
                                      output_dir=output_dir, seed=seed, method=entry.method,
                                      save_steps=10**9, logging_steps=self.budget.get("logging_steps", 5),
                                      tensor_peak=True,  # the report's tensor-peak column (on the CPU)
                                      **_device_options(device, gpu_bf16))
        for key in ("dataset_format", "input_columns", "target_column"):
            if self.data.get(key) is not None:
                values[key] = self.data[key]
        if self.system_prompt is not None:
            values["system_prompt"] = self.system_prompt
        if self.template is not None:
            values["template"] = self.template
        values.update({k: v for k, v in self.budget.items() if k != "logging_steps"})
        if self.curve_points:  # the run saves and tracks its trajectory's points
            values.update(curve_points=self.curve_points, track_retention=["general_text", "drift", "task_kl"],
                          curve_checkpoints=get_method(entry.method).peft or self.curve_full_checkpoints)
        values.update(entry.overrides)
        from tunelab.options import build

        return build(TrainOptions, (values, f"recipe {self.name}, method {entry.label}"))[0]

    def eval_options(self, *, eval_file: str, output_dir: str, model: str, adapter: str | None,
                     baseline: str | None, data_dir: str | None, sql_database: str | None,
                     device: str = "auto") -> EvalOptions:
        from tunelab.evaluation.probes import parse_probe
        from tunelab.options import build

        for spec in self.retention:  # an unknown probe, or a benchmark without lm-eval, fails before any run
            try:
                parse_probe(spec)
            except TunelabError as e:
                raise TunelabError(f"recipe {self.name}: {e}") from None
        values: dict[str, Any] = dict(model_name_or_path=model, adapter=adapter, task=self.task,
                                      dataset_name_or_path=eval_file, retention=list(self.retention),
                                      output_dir=output_dir, baseline=baseline, data_dir=data_dir,
                                      sql_database=sql_database, use_cpu=device == "cpu",
                                      base_model_name_or_path=self.model)
        if adapter is None and model == self.model:  # the untouched base
            values["base_model_name_or_path"] = None
            if _precision_dtype(self.budget):
                values["torch_dtype"] = _precision_dtype(self.budget)
        for key in ("dataset_format", "input_columns", "target_column"):
            if self.data.get(key) is not None:
                values[key] = self.data[key]
        if adapter is None:  # a full model or the base: prompt it as the runs were trained
            if self.system_prompt is not None:
                values["system_prompt"] = self.system_prompt
            if self.template is not None:
                values["template"] = self.template
        values.update(self.eval)
        return build(EvalOptions, (values, f"recipe {self.name} evaluation"))[0]


def _precision_dtype(budget: dict[str, Any]) -> str | None:
    """The dtype the untouched base is evaluated in where the budget sets the runs' precision (--bf16 / --no_bf16):
    the one each run scores its 'before' in (the base in the run's dtype), so the base row and the runs' retention
    ratios read one model. None (eval's auto: the precision tunelab trains in here) otherwise."""
    if budget.get("fp16"):
        return "float16"
    return {True: "bfloat16", False: "float32"}.get(budget.get("bf16"))


def _device_options(device: str, gpu_bf16: bool | None = None) -> dict[str, Any]:
    """Where the runs train. Their precision is tunelab train's default (bf16 where the device runs it fast:
    tunelab.precision), decided and logged by each run, unless the recipe's budget or --bf16/--no_bf16 sets it."""
    import torch

    if device == "cpu":
        return {"use_cpu": True}
    if gpu_bf16 is not None:  # the runs' GPUs are on other machines (a Ray cluster): the launcher asked one of them
        return {"bf16": gpu_bf16}
    if device == "cuda" and not torch.cuda.is_available():
        raise TunelabError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    if torch.cuda.is_available():
        return {}
    return {"use_cpu": True}


# --- loading ------------------------------------------------------------------------------------------------------

def builtin_recipes() -> dict[str, Path]:
    folder = resources.files("tunelab.builtin") / "recipes"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".yaml")}


def recipe_text(name: str) -> str:
    """A built-in recipe's YAML as shipped, comments included: what `tunelab recipes NAME` prints."""
    builtins = builtin_recipes()
    if name not in builtins:
        raise TunelabError(f"recipe {name}: not a built-in recipe (built-in: {', '.join(sorted(builtins))})")
    return builtins[name].read_text(encoding="utf-8")


def load_recipe(path_or_name: str) -> Recipe:
    builtins = builtin_recipes()
    path = Path(path_or_name)
    if not path.is_file():
        if path_or_name in builtins:
            path = builtins[path_or_name]
        else:
            raise TunelabError(f"recipe {path_or_name}: no such file nor built-in recipe (built-in: "
                               f"{', '.join(sorted(builtins))}); see `tunelab recipes`")
    raw = run_files.read_yaml_mapping(path, label=f"recipe {path}",
                                      fix="`tunelab recipes demo` prints a recipe to start from")
    return parse_recipe(raw, source=str(path))


def parse_recipe(raw: Any, *, source: str) -> Recipe:
    if not isinstance(raw, dict):
        raise TunelabError(f"recipe {source}: expected a mapping of recipe fields")
    unknown = set(raw) - RECIPE_KEYS
    if unknown:
        raise TunelabError(f"recipe {source}: unknown field(s) {', '.join(sorted(unknown))}; known fields are "
                           f"{', '.join(sorted(RECIPE_KEYS))}")
    for required in ("model", "task", "data", "methods"):
        if not raw.get(required):
            raise TunelabError(f"recipe {source}: field {required!r} is required")
    from tunelab.config import EVAL_TASKS

    if raw["task"] not in EVAL_TASKS:
        raise TunelabError(f"recipe {source}: task {raw['task']!r} is not one of {', '.join(EVAL_TASKS)}")
    data = dict(raw["data"])
    for section, allowed in (("data", DATA_KEYS), ("budget", BUDGET_KEYS), ("eval", EVAL_KEYS)):
        extra = set(raw.get(section) or {}) - allowed
        if extra:
            raise TunelabError(f"recipe {source}: {section} has unknown key(s) {', '.join(sorted(extra))}; allowed: "
                               f"{', '.join(sorted(allowed))}")
    if "train" not in data:
        raise TunelabError(f"recipe {source}: data.train is required (a file or folder, or a builtin:/{{data_dir}} "
                           "path)")
    if "eval" not in data and data.get("holdout") is None:
        raise TunelabError(f"recipe {source}: give data.eval (a file, or a folder: its test split), or "
                           "data.holdout: {fraction: 0.1} to hold out a tenth of the training rows for evaluation "
                           "(add column: NAME to hold out whole groups of that column, such as spider's db_id)")
    if data.get("holdout") is not None:
        if data.get("eval"):
            raise TunelabError(f"recipe {source}: data gives both eval and holdout; keep eval to score a test file, "
                               "or holdout to carve the test set out of the training rows")
        data["holdout"] = _holdout(data["holdout"], source)
    methods = [_method_entry(m, i, source) for i, m in enumerate(raw["methods"], start=1)]
    labels = [m.label for m in methods]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise TunelabError(f"recipe {source}: method labels must be unique; {', '.join(dupes)} appear twice "
                           "(give each entry its own label)")
    seeds = raw.get("seeds") or [0]
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise TunelabError(f"recipe {source}: seeds must be a list of integers, got {seeds!r}")
    retention = raw.get("retention") or []
    search = parse_search(raw.get("search"), source=source, holdout_column=(data.get("holdout") or {}).get("column"))
    curve_points = raw.get("curve_points") or 0
    if not isinstance(curve_points, int) or isinstance(curve_points, bool) or curve_points < 0:
        raise TunelabError(f"recipe {source}: curve_points must be a whole number >= 0 (0: no trajectories), got "
                           f"{curve_points!r}")
    full_checkpoints = raw.get("curve_full_checkpoints", True)
    if not isinstance(full_checkpoints, bool):
        raise TunelabError(f"recipe {source}: curve_full_checkpoints must be true or false")
    if not isinstance(raw.get("diagnostics", False), bool):
        raise TunelabError(f"recipe {source}: diagnostics must be true or false")
    return Recipe(name=str(raw.get("name") or Path(source).stem), model=str(raw["model"]), task=raw["task"],
                  data=data, methods=methods, seeds=list(seeds), retention=list(retention),
                  budget=dict(raw.get("budget") or {}), eval=dict(raw.get("eval") or {}),
                  system_prompt=raw.get("system_prompt"), template=raw.get("template"),
                  description=str(raw.get("description") or ""), source=source, search=search,
                  curve_points=curve_points, curve_full_checkpoints=full_checkpoints,
                  diagnostics=raw.get("diagnostics", False))


def _holdout(raw: Any, source: str) -> dict[str, Any]:
    """data.holdout as {"column": name or None (rows), "fraction": f}."""
    if not isinstance(raw, dict):
        raise TunelabError(f"recipe {source}: data.holdout must be a mapping such as {{fraction: 0.1}} or "
                           f"{{column: db_id, fraction: 0.1}}, got {raw!r}")
    extra = set(raw) - {"column", "fraction"}
    if extra:
        raise TunelabError(f"recipe {source}: data.holdout has unknown key(s) {', '.join(sorted(extra))}; allowed: "
                           "column, fraction")
    column, fraction = raw.get("column"), raw.get("fraction", 0.1)
    if column is not None and not isinstance(column, str):
        raise TunelabError(f"recipe {source}: data.holdout.column must be a column name, got {column!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise TunelabError(f"recipe {source}: data.holdout.fraction {fraction!r} must be a fraction in (0, 1), "
                           "such as 0.1")
    return {"column": column, "fraction": float(fraction)}


def _method_entry(item: Any, index: int, source: str) -> MethodEntry:
    if isinstance(item, str):
        item = {"method": item}
    if not isinstance(item, dict) or "method" not in item:
        raise TunelabError(f"recipe {source}: methods entry {index} needs a 'method' (e.g. lora)")
    entry = dict(item)
    spec = str(entry.pop("method"))
    # `X+ica_Y`: method X trained with ICA masking --mask_mode Y (lesion or preserve); the label keeps the spec.
    from tunelab.ica import split_method_spec

    try:
        method, mask_mode = split_method_spec(spec)
    except TunelabError as e:
        raise TunelabError(f"recipe {source}: methods entry {index}: {e}") from None
    if mask_mode is not None:
        if entry.get("mask_mode", mask_mode) != mask_mode:
            raise TunelabError(f"recipe {source}: methods entry {spec!r} also sets mask_mode {entry['mask_mode']!r}; "
                               "keep one of the two")
        entry["mask_mode"] = mask_mode
    try:
        get_method(method)
    except TunelabError:
        from tunelab.methods import method_names

        raise TunelabError(f"recipe {source}: methods entry {index}: unknown method {method!r}; choose one of "
                           f"{', '.join(method_names())} (optionally with +ica_lesion or +ica_preserve)") from None
    label = str(entry.pop("label", spec))
    lr_range = entry.pop("learning_rate_range", None)
    if lr_range is not None:
        lr_range = check_range(lr_range, where=f"recipe {source}: methods entry {label!r}")
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    for key in entry:
        if key not in known:
            raise TunelabError(f"recipe {source}: methods entry {label!r}: unknown option {key!r}")
        if key in SHARED_ONLY:
            raise TunelabError(f"recipe {source}: methods entry {label!r} sets {key}, which is part of the shared "
                               "budget; set it under budget so every method gets the same")
    return MethodEntry(label=label, method=method, overrides=entry, learning_rate_range=lr_range)


def apply_overrides(recipe: Recipe, *, methods: list[str] | None = None, seeds: list[int] | None = None,
                    budget: dict[str, Any] | None = None, eval_settings: dict[str, Any] | None = None,
                    model: str | None = None, search: str | None = None,
                    search_settings: dict[str, Any] | None = None, curve_points: int | None = None,
                    diagnostics: bool | None = None, retention: list[str] | None = None) -> Recipe:
    """Command-line overrides. --methods picks entries by label or method name (unknown ones become new entries).
    ``search``: learning_rate turns the learning-rate search on (the recipe's settings, else the defaults), none
    turns it off; ``search_settings`` (--search_trials, ...) change its settings."""
    recipe = copy.deepcopy(recipe)
    if search == "none":
        recipe.search = None
    elif search is not None:
        recipe.search = recipe.search or parse_search(search, source=f"--search {search}",
                                                      holdout_column=(recipe.data.get("holdout") or {}).get("column"))
    given = {k: v for k, v in (search_settings or {}).items() if v is not None}
    if given:
        if recipe.search is None:
            flags = ", ".join(f"--search_{k}" for k in given)
            raise TunelabError(f"{flags}: the learning-rate search is off; add --search learning_rate (or use a "
                               "recipe with a search: section)")
        recipe.search = dataclasses.replace(recipe.search, **given)
        check_settings(recipe.search, where="--search_" + "/--search_".join(given))
    if methods:
        chosen = []
        for name in methods:
            matches = [m for m in recipe.methods if m.label == name] or [m for m in recipe.methods
                                                                          if m.method == name]
            chosen.extend(matches or [_method_entry({"method": name}, len(chosen) + 1, "--methods")])
        recipe.methods = list({m.label: m for m in chosen}.values())
    if seeds:
        recipe.seeds = list(seeds)
    if budget:
        recipe.budget.update({k: v for k, v in budget.items() if v is not None})
    if eval_settings:
        recipe.eval.update({k: v for k, v in eval_settings.items() if v is not None})
    if model:
        recipe.model = model
    if curve_points is not None:
        if curve_points < 0:
            raise TunelabError(f"--curve_points {curve_points}: must be a whole number >= 0 (0: no trajectories)")
        recipe.curve_points = curve_points
    if diagnostics is not None:
        recipe.diagnostics = diagnostics
    if retention is not None:
        from tunelab.evaluation.probes import parse_probe

        recipe.retention = [] if [r.lower() for r in retention] == ["none"] else list(retention)
        for spec in recipe.retention:  # (its errors name --retention)
            parse_probe(spec)
    return recipe
