"""A comparison's data, fixed once for every run: paths resolved, the evaluation set carved out where asked, the
training subset drawn with a fixed seed. Written into the comparison directory so a re-run uses the same rows."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from tunelab import builtin
from tunelab.comparison.recipe import Recipe
from tunelab.data import sources
from tunelab.errors import TunelabError
from tunelab.fileio import atomic_write_jsonl

DATA_SEED = 0  # the rows a comparison trains on do not change with the run's seed


@dataclass
class ComparisonData:
    train: str
    eval: str
    sql_database: str | None


def resolve_path(value: str, data_dir: Path | None, *, recipe: Recipe, field: str) -> str:
    if value.startswith("builtin:"):
        name, _, rest = value[len("builtin:"):].partition("/")
        if name not in builtin.DATASETS:
            raise TunelabError(f"recipe {recipe.name}: data.{field} {value}: the built-in datasets are "
                               f"{', '.join('builtin:' + n for n in builtin.DATASETS)}")
        return str(builtin.dataset_dir(name) / rest)
    if "{data_dir}" in value:
        if data_dir is None:
            raise TunelabError(f"recipe {recipe.name} reads {value.replace('{data_dir}/', '')} from the shared data "
                               "folder, which was not found; pass --data_dir (or set TUNELAB_DATA_DIR)")
        value = value.replace("{data_dir}", str(data_dir))
    path = Path(value).expanduser()
    if not path.exists():
        hint = " (pass --data_dir to point at the shared data folder)" if data_dir is not None else ""
        raise TunelabError(f"recipe {recipe.name}: data.{field} {path}: not found{hint}")
    return str(path)


def split_off(rows: sources.Rows, column: str | None, fraction: float, seed: int, *, recipe: Recipe,
              fields: tuple[str, str], order) -> tuple[sources.Rows, sources.Rows]:
    """(held, kept): ``fraction`` of the rows, or of the groups of ``column`` kept whole, drawn with ``seed``.
    ``order`` puts the groups in order before the shuffle; the evaluation holdout and the search's validation
    split each keep the order they were first measured with, so that no recorded comparison's rows move.
    ``fields`` name the recipe's column and fraction fields in errors."""
    if column is not None and column not in rows.columns:
        raise TunelabError(f"recipe {recipe.name}: {fields[0]} {column!r} is not a column of {rows.source} "
                           f"({', '.join(rows.columns)}); name one of them or drop it to split by rows")
    keys = [str(r.get(column)) for r in rows.rows] if column else [str(i) for i in range(len(rows))]
    groups = order(set(keys))
    random.Random(seed).shuffle(groups)
    n_held = max(1, int(round(len(groups) * fraction)))
    if n_held >= len(groups):
        raise TunelabError(f"recipe {recipe.name}: {fields[1]} {fraction} of {len(groups)} "
                           f"{'groups of ' + column if column else 'training rows'} leaves nothing to train on; "
                           "use a smaller fraction or more training rows")
    held = set(groups[:n_held])
    return (rows.subset([i for i, k in enumerate(keys) if k in held]),
            rows.subset([i for i, k in enumerate(keys) if k not in held]))


def prepare_data(recipe: Recipe, out: Path, data_dir: Path | None) -> ComparisonData:
    d = recipe.data
    train = resolve_path(d["train"], data_dir, recipe=recipe, field="train")
    evals = resolve_path(d["eval"], data_dir, recipe=recipe, field="eval") if d.get("eval") else None
    sql_db = resolve_path(d["sql_database"], data_dir, recipe=recipe, field="sql_database") \
        if d.get("sql_database") else None
    holdout = d.get("holdout")  # parsed by the recipe: {"column": name or None, "fraction": f}
    limit = d.get("max_train_samples")
    if evals is not None and Path(evals).is_dir():  # its test split (else validation), fixed as a file like the rest
        rows = sources.evaluation_rows(Path(evals), flag=f"recipe {recipe.name}: data.eval")
        evals = str(atomic_write_jsonl(out / "data" / "eval.jsonl", rows.rows))
    if holdout is None and not limit and not Path(train).is_dir():
        return ComparisonData(train, evals or train, sql_db)
    rows = (sources.load_splits(train, flag=f"recipe {recipe.name}: data.train")[0] if Path(train).is_dir()
            else sources.read_file(Path(train)))
    if holdout is not None:
        eval_rows, rows = split_off(rows, holdout["column"], holdout["fraction"], DATA_SEED, recipe=recipe,
                                    fields=("data.holdout.column", "data.holdout.fraction"), order=sorted)
        evals = str(atomic_write_jsonl(out / "data" / "eval.jsonl", eval_rows.rows))
    if limit:
        rows = sources.sample(rows, int(limit), DATA_SEED)
    train = str(atomic_write_jsonl(out / "data" / "train.jsonl", rows.rows))
    return ComparisonData(train, evals or train, sql_db)


@dataclass
class SearchData:
    """The learning-rate search's data: the comparison's training rows split in two, written once. The trials train
    on ``train`` and are judged on ``validation``; the comparison's evaluation (test) set is not among them."""

    directory: str            # holds train.jsonl and validation.jsonl: a dataset `tunelab train` reads as two splits
    train_rows: int
    validation_rows: int
    grouped_by: str | None    # the column whose groups were kept whole (spider's db_id), or None: rows split


def prepare_search_data(recipe: Recipe, data: ComparisonData, out: Path, *, fraction: float,
                        group_by: str | None, seed: int) -> SearchData:
    """Carve ``fraction`` of the training rows (whole groups of ``group_by`` where given, so that no database of
    the validation questions is trained on) out as the search's validation split, shuffled with ``seed``."""
    rows = sources.read_file(Path(data.train))
    validation, train = split_off(rows, group_by, fraction, seed, recipe=recipe,
                                  fields=("search.group_by", "search.validation_fraction"),
                                  order=lambda groups: sorted(groups, key=lambda k: (len(k), k)))
    folder = out / "data" / "search"
    atomic_write_jsonl(folder / "train.jsonl", train.rows)
    atomic_write_jsonl(folder / "validation.jsonl", validation.rows)
    return SearchData(str(folder), len(train), len(validation), group_by)
