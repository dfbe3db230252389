"""Text-to-SQL metrics: normalisation, generated databases, guarded execution, test-suite execution accuracy."""

import json
import os
import re
import sqlite3
import time
from pathlib import Path

import pytest

from tunelab.errors import TunelabError
from tunelab.evaluation.sql_exec import (
    build_database,
    exact_match,
    execute,
    execution_accuracy,
    has_top_level_order_by,
    normalize_sql,
    open_database,
    results_match,
    sql_literals,
)

RUNAWAY = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c) SELECT count(*) FROM c"

SHOP = (
    "CREATE TABLE department (department_id INTEGER PRIMARY KEY, name VARCHAR, budget REAL); "
    "CREATE TABLE employee (employee_id INTEGER PRIMARY KEY, name VARCHAR, age INTEGER, department_id INTEGER, "
    "hired DATE, active BOOLEAN, FOREIGN KEY (department_id) REFERENCES department (department_id))"
)


def rows_of(conn, table):
    return conn.execute(f"SELECT * FROM {table}").fetchall()


def accuracy(pred, gold, context, **kw):
    return execution_accuracy([pred], [gold], [context], **kw)["scores"]["execution_accuracy"]


# ---------------------------------------------------------------------------------------------- exact match

def test_normalize_sql_ignores_case_spacing_quotes_and_semicolon():
    a = 'select COUNT(*)  from T where a<>"x" and b in ("p","q") ;'
    b = "SELECT count( * ) FROM t WHERE a != 'x' AND b IN ('p', 'q')"
    assert normalize_sql(a) == normalize_sql(b) == "select count ( * ) from t where a != 'x' and b in ( 'p' , 'q' )"
    assert exact_match(a, b)


def test_normalize_sql_keeps_literal_case_and_identifier_quotes():
    assert not exact_match("SELECT * FROM t WHERE a = 'X'", "SELECT * FROM t WHERE a = 'x'")
    # "Home Town" is a column here (not after a comparison), so it is not turned into a string literal
    assert normalize_sql('SELECT "Home Town" FROM people') == 'select "home town" from people'
    assert exact_match('SELECT "name" FROM people', "SELECT name FROM people")


def test_top_level_order_by_and_literals():
    assert has_top_level_order_by("SELECT a FROM t ORDER BY a")
    assert not has_top_level_order_by("SELECT a FROM (SELECT a FROM t ORDER BY a LIMIT 3)")
    assert not has_top_level_order_by("SELECT a, rank() OVER (ORDER BY a) FROM t")
    assert sql_literals("SELECT * FROM t WHERE a > 56 AND b = 'It''s' AND c = \"x\" AND d < -2.5") == (
        -2.5, 2.5, 56, "It's", "x")


# ------------------------------------------------------------------------------------------ built databases

def test_build_database_respects_types_keys_and_row_count():
    conn = build_database(SHOP, seed=0, rows_per_table=6)
    departments, employees = rows_of(conn, "department"), rows_of(conn, "employee")
    assert len(departments) == len(employees) == 6
    assert all(isinstance(d[0], int) and isinstance(d[1], str) and isinstance(d[2], float) for d in departments)
    assert len({d[0] for d in departments}) == 6  # primary key values are distinct
    for _, name, age, dept, hired, active in employees:
        assert isinstance(name, str) and isinstance(age, int) and active in (0, 1)
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", hired)
        assert dept in {d[0] for d in departments}  # the foreign key points at an existing row


def test_build_database_is_deterministic_for_a_seed():
    a = build_database(SHOP, seed=3)
    b = build_database(SHOP, seed=3)
    c = build_database(SHOP, seed=4)
    assert rows_of(a, "employee") == rows_of(b, "employee")
    assert rows_of(a, "department") == rows_of(b, "department")
    assert rows_of(a, "employee") != rows_of(c, "employee")


def test_shared_column_names_make_joins_return_rows_without_declared_keys():
    context = ("CREATE TABLE students (stu_id INTEGER, name TEXT); "
               "CREATE TABLE grades (stu_id INTEGER, course TEXT, grade REAL)")
    for seed in range(3):
        conn = build_database(context, seed=seed)
        joined = conn.execute("SELECT count(*) FROM students JOIN grades ON students.stu_id = grades.stu_id").fetchone()[0]
        assert joined > 0


def test_build_database_handles_quoted_identifiers_and_spider_quirks():
    context = ('CREATE TABLE "people" (People_ID INTEGER, "Home Town" TEXT, PRIMARY KEY (People_ID)); '
               "CREATE TABLE airport (Airport_ID INTEGER, %_Change_2007 TEXT, From TEXT); "
               "CREATE TABLE sqlite_sequence (name TEXT, seq TEXT);")
    conn = build_database(context, seed=0)
    assert len(rows_of(conn, "people")) == 8
    ok, rows = execute(conn, 'SELECT "%_Change_2007", "From" FROM airport')
    assert ok and len(rows) == 8


def test_literals_of_the_gold_query_appear_in_the_data():
    conn = build_database("CREATE TABLE head (name VARCHAR, age INTEGER)", seed=0, literals=("Alabama", 56))
    names = {r[0] for r in rows_of(conn, "head")}
    ages = {r[1] for r in rows_of(conn, "head")}
    assert "Alabama" in names
    assert ages & {55, 56, 57}


@pytest.mark.parametrize("context, problem", [
    ("", "empty"),
    ("DROP TABLE head", "not a CREATE TABLE"),
    ("CREATE TABLE head (age INTEGER", "does not run"),
    ("CREATE INDEX i ON head (age)", "does not run"),
])
def test_unusable_context_raises_a_user_error(context, problem):
    with pytest.raises(TunelabError, match=problem):
        build_database(context, seed=0)


def test_open_database_is_read_only(tmp_path):
    path = tmp_path / "db.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    conn.close()
    db = open_database(path)
    assert execute(db, "SELECT sum(a) FROM t") == (True, [(3,)])
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        db.execute("INSERT INTO t VALUES (3)")
    with pytest.raises(TunelabError, match="does not exist"):
        open_database(tmp_path / "missing.sqlite")
    (tmp_path / "junk.sqlite").write_text("not a database " * 100)
    with pytest.raises(TunelabError, match="not a readable SQLite database"):
        open_database(tmp_path / "junk.sqlite")


# ------------------------------------------------------------------------------------------------ execution

def test_execute_reports_errors_and_refuses_writes():
    conn = build_database(SHOP, seed=0)
    ok, message = execute(conn, "SELEC name FROM employee")
    assert not ok and "syntax error" in message
    for statement in ("DELETE FROM employee", "DROP TABLE employee", "ATTACH DATABASE 'x.db' AS x",
                      "PRAGMA writable_schema = ON"):
        ok, message = execute(conn, statement)
        assert not ok, statement
    assert len(rows_of(conn, "employee")) == 8  # nothing was deleted
    ok, message = execute(conn, "SELECT 1; SELECT 2")
    assert not ok


def test_execute_stops_a_runaway_query():
    conn = build_database(SHOP, seed=0)
    start = time.monotonic()
    ok, message = execute(conn, RUNAWAY)
    elapsed = time.monotonic() - start
    assert not ok and "timed out" in message
    assert 1.9 < elapsed < 4.0
    assert execute(conn, "SELECT count(*) FROM employee") == (True, [(8,)])  # the connection still works


def test_execute_caps_fetched_rows():
    conn = build_database(SHOP, seed=0)
    ok, rows = execute(conn, "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x+1 FROM c LIMIT 50) SELECT x FROM c",
                       max_rows=20)
    assert ok and len(rows) == 20


def test_results_match_multiset_order_floats_and_columns():
    assert results_match([(1,), (2,), (2,)], [(2,), (1,), (2,)], ordered=False)
    assert not results_match([(1,), (2,), (2,)], [(1,), (2,)], ordered=False)  # multiset, not set
    assert not results_match([(1,), (2,)], [(2,), (1,)], ordered=True)
    assert results_match([(0.1 + 0.2,)], [(0.3,)], ordered=False)
    assert results_match([(3,)], [(3.0,)], ordered=False)
    assert not results_match([(1, "a")], [("a", 1)], ordered=False)
    assert results_match([(1, "a"), (2, "b")], [("b", 2), ("a", 1)], ordered=False, column_order_matters=False)
    assert not results_match([(1, "a"), (2, "b")], [("a", 2), ("b", 1)], ordered=False, column_order_matters=False)


# -------------------------------------------------------------------------------------- execution accuracy

T = "CREATE TABLE t (a INTEGER, b VARCHAR)"


def test_equivalent_queries_written_differently_are_correct():
    assert accuracy("select COUNT(*) from t where 3 < a", "SELECT count(*) FROM t WHERE a > 3", T) == 1.0
    assert accuracy("SELECT b FROM t WHERE NOT a <= 3", "SELECT b FROM t WHERE a > 3", T) == 1.0
    explicit = ("SELECT employee.name FROM employee JOIN department ON employee.department_id = department.department_id "
                "WHERE department.budget > 50")
    comma = ("SELECT e.name FROM employee AS e, department AS d WHERE d.department_id = e.department_id "
             "AND d.budget > 50")
    assert accuracy(comma, explicit, SHOP) == 1.0


@pytest.mark.parametrize("wrong", [
    "SELECT count(*) FROM t WHERE a > 4",   # different threshold
    "SELECT count(*) FROM t WHERE a >= 3",  # different comparison
    "SELECT count(*) FROM t",               # filter dropped
    "SELECT sum(a) FROM t WHERE a > 3",     # different aggregate
    "SELECT max(a) FROM t WHERE a > 3",
])
def test_wrong_filters_and_aggregates_are_caught(wrong):
    assert accuracy(wrong, "SELECT count(*) FROM t WHERE a > 3", T) == 0.0


def test_wrong_join_condition_is_caught():
    gold = "SELECT count(*) FROM employee JOIN department ON employee.department_id = department.department_id"
    wrong = "SELECT count(*) FROM employee JOIN department ON employee.employee_id = department.department_id"
    assert accuracy(wrong, gold, SHOP) == 0.0


def test_projection_order_matters_unless_told_otherwise():
    gold, swapped = "SELECT a, b FROM t", "SELECT b, a FROM t"
    assert accuracy(swapped, gold, T) == 0.0
    assert accuracy(swapped, gold, T, column_order_matters=False) == 1.0


def test_order_by_sensitivity():
    ordered_gold = "SELECT a FROM t ORDER BY a DESC"
    assert accuracy("SELECT a FROM t ORDER BY a ASC", ordered_gold, T) == 0.0
    assert accuracy("select a from t order by -a", ordered_gold, T) == 1.0
    # without ORDER BY in the gold query the order of rows is free
    assert accuracy("SELECT a FROM t ORDER BY a ASC", "SELECT a FROM t", T) == 1.0


def test_invalid_and_runaway_predictions():
    gold = "SELECT count(*) FROM t WHERE a > 3"
    result = execution_accuracy(["SELECT count(* FROM t", RUNAWAY], [gold, gold], [T, T], timeout_s=0.5)
    assert result["per_example"] == [0.0, 0.0]
    assert result["scores"]["executable"] == 0.0
    assert "timed out" in result["details"][1]["error"]


def test_gold_errors_are_counted_and_scored_wrong():
    result = execution_accuracy(["SELECT a FROM t", "SELECT a FROM t"], ["SELECT nope FROM t", "SELECT a FROM t"], [T, T])
    assert result["gold_errors"] == 1
    assert result["per_example"] == [0.0, 1.0]
    assert result["scores"] == {"execution_accuracy": 0.5, "executable": 1.0, "exact_match": 0.5}


def test_execution_accuracy_is_deterministic_and_uses_several_databases():
    preds = ["SELECT count(*) FROM t WHERE a > 4", "SELECT b FROM t WHERE a < 50"]
    golds = ["SELECT count(*) FROM t WHERE a > 3", "SELECT b FROM t WHERE a < 50"]
    first = execution_accuracy(preds, golds, [T, T], seed=7)
    assert first == execution_accuracy(preds, golds, [T, T], seed=7)
    assert first["per_example"] == [0.0, 1.0]


def test_execution_accuracy_on_database_files(tmp_path):
    path = tmp_path / "shop.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (a INTEGER, b TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "x"), (5, "y"), (9, "z")])
    conn.close()
    result = execution_accuracy(["SELECT b FROM t WHERE a > 4", "SELECT b FROM t WHERE a > 0"],
                                ["SELECT b FROM t WHERE 4 < a", "SELECT b FROM t WHERE a > 4"], db_paths=path)
    assert result["per_example"] == [1.0, 0.0]


def test_execution_accuracy_argument_errors():
    with pytest.raises(TunelabError, match="contexts= .* or db_paths="):
        execution_accuracy(["SELECT 1"], ["SELECT 1"])
    with pytest.raises(TunelabError, match="1 predictions but 2 gold"):
        execution_accuracy(["SELECT 1"], ["SELECT 1", "SELECT 2"], [T])


# ----------------------------------------------------------------------------------------- real Spider rows

def _data_dir() -> Path:
    return Path(os.environ.get("TUNELAB_DATA_DIR") or Path(__file__).resolve().parents[2].parent / "shared" / "data")


@pytest.mark.shared_data
def test_spider_gold_queries_run_and_match_themselves():
    path = _data_dir() / "spider" / "spider_create_context.train.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent (set TUNELAB_DATA_DIR to the shared data folder to run this test)")
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for i, line in enumerate(f) if i % 100 == 0]  # 70 rows across all databases
    golds = [r["answer"] for r in rows]
    result = execution_accuracy(golds, golds, [r["context"] for r in rows], timeout_s=2.0)
    executable = result["scores"]["executable"]
    print(f"Spider sample: {len(rows)} rows, gold executable share {executable:.3f}, "
          f"gold errors {result['gold_errors']}")
    assert executable >= 0.9
    # every gold query that runs matches itself on all of its databases
    assert all(d["correct"] == (not d["gold_error"]) for d in result["details"])
    assert result["scores"]["execution_accuracy"] == pytest.approx(1 - result["gold_errors"] / len(rows))
