"""A recipe's evaluation set: given as a file, or held out of the training file, by rows or by whole groups of a
column, the same rows on every re-run and never among the training rows."""

from __future__ import annotations

import json

import pytest

from tunelab.comparison.data import prepare_data
from tunelab.comparison.recipe import parse_recipe
from tunelab.errors import TunelabError

from conftest import write_jsonl

ROWS = [{"instruction": f"question {i}", "output": f"answer {i}", "topic": f"t{i % 5}"} for i in range(40)]


def _recipe(train, holdout):
    return parse_recipe({"model": "m", "task": "qa", "data": {"train": str(train), "holdout": holdout},
                         "methods": ["lora"]}, source="r.yaml")


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


@pytest.mark.parametrize(("holdout", "held"), [({"fraction": 0.25}, 10), ({}, 4), ({"column": "topic"}, 8),
                                                ({"column": "topic", "fraction": 0.4}, 16)])
def test_held_out_rows_are_fixed_and_never_trained_on(holdout, held, tmp_path):
    train_file = write_jsonl(tmp_path / "all.jsonl", ROWS)
    data = prepare_data(_recipe(train_file, holdout), tmp_path / "a", None)
    again = prepare_data(_recipe(train_file, holdout), tmp_path / "b", None)
    train, evals = _rows(data.train), _rows(data.eval)
    assert len(evals) == held and len(train) == len(ROWS) - held
    assert not {r["instruction"] for r in train} & {r["instruction"] for r in evals}
    assert evals == _rows(again.eval) and train == _rows(again.train)
    if "column" in holdout:  # whole groups: no topic is on both sides
        assert not {r["topic"] for r in train} & {r["topic"] for r in evals}


def test_folders_of_parallel_text_files_are_a_recipe_s_data(tmp_path):
    """data.train and data.eval may be folders (Multi30k's train.en / train.fr, test.en / test.fr): their train and
    test splits are written as the comparison's files, so every run reads the same rows."""
    folder = tmp_path / "multi30k"
    folder.mkdir()
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        for lang in ("en", "fr"):
            (folder / f"{split}.{lang}").write_text("".join(f"{split} {lang} {i}\n" for i in range(n)), "utf-8")
    recipe = parse_recipe({"model": "m", "task": "translation", "methods": ["lora"],
                           "data": {"train": str(folder), "eval": str(folder), "input_columns": ["en"],
                                    "target_column": "fr"}}, source="r.yaml")
    data = prepare_data(recipe, tmp_path / "out", None)
    assert _rows(data.train) == [{"en": f"train en {i}", "fr": f"train fr {i}"} for i in range(6)]
    assert _rows(data.eval) == [{"en": f"test en {i}", "fr": f"test fr {i}"} for i in range(3)]
    (folder / "train.fr").unlink()
    with pytest.raises(TunelabError, match=r"recipe r: data.train .*multi30k: no file named train.jsonl"):
        prepare_data(recipe, tmp_path / "again", None)


@pytest.mark.parametrize(("holdout", "message"), [
    (0.1, "data.holdout must be a mapping such as {fraction: 0.1}"),
    ({"fraction": 1.5}, "data.holdout.fraction 1.5 must be a fraction in (0, 1)"),
    ({"fraction": "a tenth"}, "data.holdout.fraction 'a tenth' must be a fraction in (0, 1)"),
    ({"columns": "topic"}, "data.holdout has unknown key(s) columns; allowed: column, fraction"),
    ({"column": 3}, "data.holdout.column must be a column name"),
])
def test_a_bad_holdout_is_one_line(holdout, message, tmp_path):
    with pytest.raises(TunelabError) as err:
        _recipe(tmp_path / "all.jsonl", holdout)
    assert message in str(err.value) and str(err.value).startswith("recipe r.yaml: ")


def test_a_holdout_that_leaves_nothing_to_train_on_is_refused(tmp_path):
    train_file = write_jsonl(tmp_path / "all.jsonl", ROWS[:5])
    with pytest.raises(TunelabError, match="leaves nothing to train on"):
        prepare_data(_recipe(train_file, {"column": "topic", "fraction": 0.95}), tmp_path / "a", None)
    with pytest.raises(TunelabError, match=r"data.holdout.column 'topc' is not a column"):
        prepare_data(_recipe(train_file, {"column": "topc"}), tmp_path / "b", None)


def test_a_recipe_without_an_evaluation_set_says_how_to_hold_one_out():
    with pytest.raises(TunelabError, match=r"give data.eval \(a file, or a folder: its test split\), or "
                                           r"data.holdout: \{fraction: 0.1\}"):
        parse_recipe({"model": "m", "task": "qa", "data": {"train": "x.jsonl"}, "methods": ["lora"]},
                     source="r.yaml")


def test_eval_and_holdout_together_are_refused():
    with pytest.raises(TunelabError, match="data gives both eval and holdout"):
        parse_recipe({"model": "m", "task": "qa", "data": {"train": "x.jsonl", "eval": "y.jsonl",
                                                           "holdout": {"fraction": 0.1}}, "methods": ["lora"]},
                     source="r.yaml")


def test_the_readme_s_recipe_example_is_a_recipe_and_names_every_field():
    """The README's "Writing a recipe" block parses as it stands, and names every top-level, data and eval field
    a recipe accepts (a field added to the code and not to the README fails here)."""
    import re
    from pathlib import Path

    import yaml

    from tunelab.comparison.recipe import DATA_KEYS, EVAL_KEYS, RECIPE_KEYS

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    block = re.search(r"\*\*Writing a recipe\.\*\*.*?```yaml\n(.*?)```", readme, re.S).group(1)
    recipe = parse_recipe(yaml.safe_load(block), source="README")
    assert [m.label for m in recipe.methods] == ["full", "lora r=16"] and recipe.seeds == [0, 1, 2]
    words = set(re.findall(r"[a-z_]+", block))
    assert RECIPE_KEYS | DATA_KEYS | EVAL_KEYS <= words, sorted((RECIPE_KEYS | DATA_KEYS | EVAL_KEYS) - words)


def test_the_readme_lists_every_built_in_recipe():
    from conftest import REPO
    from tunelab.comparison.recipe import builtin_recipes

    line = next(x for x in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
                if x.startswith("| `tunelab recipes [NAME]`"))
    missing = [name for name in builtin_recipes() if f"`{name}`" not in line]
    assert not missing, f"README's commands table does not name the built-in recipes {missing}"


def test_runs_whose_probes_were_asked_under_the_system_prompt_are_not_reused():
    """Probes are asked without the run's system prompt since 2026-12-06: a comparison with a system prompt started
    before holds runs whose retention was measured under it; they get new keys and run again. A recipe without a
    system prompt measured the same either way and keeps its keys."""
    raw = {"model": "m", "task": "qa", "data": {"train": "x.jsonl", "eval": "y.jsonl"}, "methods": ["lora"]}
    plain, prompted = parse_recipe(raw, source="r"), parse_recipe({**raw, "system_prompt": "Answer."}, source="r")
    assert "probes" not in plain.shared_content()
    assert prompted.shared_content()["probes"] == "without the system prompt"
