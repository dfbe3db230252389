"""The built-in text-to-SQL task: deterministic files, a real held-out split, gold queries that run."""

import json
import re

import pytest

from tunelab.builtin.text2sql import (
    DB_FILENAME,
    HELD_OUT_TEMPLATES,
    SCHEMA,
    TEMPLATES,
    builtin_text2sql_dir,
    generate_text2sql,
    informative,
    slot_values,
    write_text2sql,
)
from tunelab.errors import TunelabError
from tunelab.evaluation.sql_exec import execute, execution_accuracy, open_database


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("text2sql")
    paths = write_text2sql(out)
    return paths, read_jsonl(paths["train"]), read_jsonl(paths["test"])


@pytest.fixture(scope="module")
def examples():
    return generate_text2sql()


def test_files_sizes_and_row_form(written):
    paths, train, test = written
    assert {p.name for p in paths.values()} == {"train.jsonl", "test.jsonl", DB_FILENAME, "README.md"}
    assert len(train) == 400 and len(test) == 100
    for row in train + test:
        assert set(row) == {"question", "context", "answer", "db_id"}
        assert row["answer"].startswith("SELECT ") and row["question"].strip()
        assert row["context"].startswith("CREATE TABLE ")
    assert len({r["question"] for r in train}) == len(train)  # no repeated question
    readme = paths["readme"].read_text(encoding="utf-8")
    assert all(f"CREATE TABLE {table} " in readme for table in SCHEMA)


def test_same_seed_gives_byte_identical_files_and_another_seed_differs(tmp_path, written):
    paths, _, _ = written
    again = write_text2sql(tmp_path / "again", seed=0)
    other = write_text2sql(tmp_path / "other", seed=1)
    for split in ("train", "test"):
        assert again[split].read_bytes() == paths[split].read_bytes()
        assert other[split].read_bytes() != paths[split].read_bytes()


def test_context_holds_exactly_the_tables_the_query_needs(written):
    _, train, test = written
    for row in train + test:
        used = set(re.findall(r"(?:FROM|JOIN) (\w+)", row["answer"]))
        declared = set(re.findall(r"CREATE TABLE (\w+)", row["context"]))
        assert used == declared, row


def test_test_split_is_held_out_from_training(written, examples):
    _, train_rows, test_rows = written
    train, test = examples
    slots = slot_values()
    assert {e.template for e in train}.isdisjoint(HELD_OUT_TEMPLATES)
    for e in train:  # training never sees a held-out filler value
        assert all(value not in slots[name].held_out for name, value in e.fillers), e
    for e in test:  # every test row has a template or a filler value never trained on
        assert e.template in HELD_OUT_TEMPLATES or any(value in slots[name].held_out for name, value in e.fillers), e
    held_share = sum(e.template in HELD_OUT_TEMPLATES for e in test) / len(test)
    assert 0.3 <= held_share <= 0.5
    assert {r["answer"] for r in train_rows}.isdisjoint({r["answer"] for r in test_rows})
    assert {r["question"] for r in train_rows}.isdisjoint({r["question"] for r in test_rows})
    # the training split covers every training template
    assert {e.template for e in train} == {t.id for t in TEMPLATES} - HELD_OUT_TEMPLATES


def test_every_gold_query_runs_on_the_shipped_database_and_test_queries_return_rows(written):
    paths, train, test = written
    db = open_database(paths["database"])
    results = {}
    for row in train + test:
        ok, rows = execute(db, row["answer"])
        assert ok, (row["answer"], rows)
        results[row["answer"]] = rows
    share = sum(informative(results[r["answer"]]) for r in test) / len(test)
    print(f"built-in text-to-SQL: {share:.1%} of test gold queries return informative rows")
    assert share >= 0.9


def test_gold_against_itself_scores_one_on_the_file_and_on_generated_databases(written):
    paths, _, test = written
    golds = [r["answer"] for r in test]
    on_file = execution_accuracy(golds, golds, db_paths=paths["database"])
    assert on_file["scores"]["execution_accuracy"] == 1.0 and on_file["gold_errors"] == 0
    generated = execution_accuracy(golds, golds, [r["context"] for r in test])
    assert generated["scores"]["execution_accuracy"] == 1.0 and generated["gold_errors"] == 0


def test_the_shipped_database_tells_test_queries_apart(written):
    paths, _, test = written
    golds = [r["answer"] for r in test]
    shifted = golds[1:] + golds[:1]  # each prediction is another row's gold query
    result = execution_accuracy(shifted, golds, db_paths=paths["database"])
    assert result["scores"]["executable"] == 1.0
    assert result["scores"]["execution_accuracy"] < 0.1


def test_bad_sizes_raise_a_user_error():
    with pytest.raises(TunelabError, match="n_train"):
        generate_text2sql(n_train=0)
    with pytest.raises(TunelabError, match="ask for fewer"):
        generate_text2sql(n_train=100_000)


def test_builtin_dir_is_created_once_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    first = builtin_text2sql_dir()
    assert first == tmp_path / "cache" / "data" / "text2sql-v1"
    stamp = (first / "train.jsonl").stat().st_mtime_ns
    assert builtin_text2sql_dir() == first
    assert (first / "train.jsonl").stat().st_mtime_ns == stamp  # reused, not rewritten
    assert [p.name for p in first.parent.iterdir()] == ["text2sql-v1"]  # no temporary folders left behind
    (first / "test.jsonl").unlink()  # an incomplete copy is rebuilt
    assert (builtin_text2sql_dir() / "test.jsonl").is_file()
    assert [p.name for p in first.parent.iterdir()] == ["text2sql-v1"]
