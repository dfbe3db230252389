"""Text-to-SQL metrics: exact match after normalisation, and execution accuracy in the test-suite style.

Execution accuracy follows the idea of Zhong, Yu & Klein (2020), "Semantic Evaluation for Text-to-SQL with
Distilled Test Suites": a predicted query is correct only when it returns the gold query's result on *every*
database of a small suite. When only a schema is known (the sql-create-context form: a question, its CREATE
TABLE statements and a gold query), :func:`build_database` fills an in-memory SQLite database with
deterministic random rows; several seeds give several databases. Values come from small pools shared by
column name (so join keys such as ``department_id`` match across tables), foreign keys point at existing
rows, and the literals of the gold query (``'France'``, ``56`` and its neighbours 55/57) are mixed in, so
filters select rows and a prediction with a different filter or aggregate is caught.

Predictions are untrusted: they run read-only (an SQLite authorizer that allows reads only, plus
``PRAGMA query_only``), under a wall-clock limit enforced by a progress handler, with a cap on fetched rows.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import random
import re
import sqlite3
import time
from collections import Counter, OrderedDict
from itertools import permutations
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence, Union

from tunelab.errors import TunelabError

logger = logging.getLogger(__name__)

MAX_ROWS = 10_000
PathLike = Union[str, "os.PathLike[str]"]

# ------------------------------------------------------------------------------------------------ tokenizer

_TOKEN = re.compile(
    r"""
    (?P<sq>'(?:[^']|'')*')
  | (?P<dq>"(?:[^"]|"")*")
  | (?P<bq>`[^`]*`)
  | (?P<br>\[[^\]]*\])
  | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
  | (?P<op><=|>=|<>|!=|==|\|\||<<|>>|[-+*/%<>=(),.;~&|])
  | (?P<ws>\s+)
  | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)

_COMPARISON = {"=", "==", "!=", "<>", "<", ">", "<=", ">=", "like", "glob"}
_SIMPLE_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _tokens(sql: str) -> list[tuple[str, str]]:
    """(kind, text) pairs without whitespace."""
    return [(m.lastgroup, m.group()) for m in _TOKEN.finditer(sql) if m.lastgroup != "ws"]


def _literal_positions(tokens: list[tuple[str, str]]) -> set[int]:
    """Indices of double-quoted tokens that are string literals without doubt: after a comparison operator,
    LIKE/GLOB, or inside an ``IN (...)`` value list. Elsewhere ``"x"`` may name a column and is left alone."""
    out: set[int] = set()
    in_list_depth: list[int] = []  # paren depths at which an IN (...) value list is open
    depth = 0
    for i, (kind, text) in enumerate(tokens):
        prev = tokens[i - 1][1].lower() if i else ""
        if text == "(":
            depth += 1
            nxt = tokens[i + 1][1].lower() if i + 1 < len(tokens) else ""
            if prev == "in" and nxt not in ("select", "with"):
                in_list_depth.append(depth)
        elif text == ")":
            if in_list_depth and in_list_depth[-1] == depth:
                in_list_depth.pop()
            depth -= 1
        elif kind == "dq" and (prev in _COMPARISON or (in_list_depth and in_list_depth[-1] == depth)):
            out.add(i)
    return out


def _sq(content: str) -> str:
    return "'" + content.replace("'", "''") + "'"


def normalize_sql(sql: str) -> str:
    """Canonical text of a query for exact match.

    Strips, drops trailing semicolons, lower-cases everything outside string literals, writes unambiguous
    double-quoted literals (``= "x"``) as ``'x'``, unquotes simple quoted identifiers, writes ``<>`` as
    ``!=`` and ``==`` as ``=``, and puts exactly one space between tokens (so spacing around commas,
    parentheses and operators does not matter).
    """
    tokens = _tokens(str(sql).strip())
    while tokens and tokens[-1][1] == ";":
        tokens.pop()
    literal_dq = _literal_positions(tokens)
    out = []
    for i, (kind, text) in enumerate(tokens):
        if kind == "sq":
            out.append(text)
        elif kind == "dq" and i in literal_dq:
            out.append(_sq(text[1:-1].replace('""', '"')))
        elif kind in ("dq", "bq", "br"):
            name = text[1:-1].lower()
            out.append(name if _SIMPLE_IDENT.match(name) else '"' + name.replace('"', '""') + '"')
        elif text == "<>":
            out.append("!=")
        elif text == "==":
            out.append("=")
        else:
            out.append(text.lower())
    return " ".join(out)


def exact_match(pred: str, gold: str) -> bool:
    """True when the two queries are the same after :func:`normalize_sql`."""
    return normalize_sql(pred) == normalize_sql(gold)


def has_top_level_order_by(sql: str) -> bool:
    """True when the query ends in an ORDER BY of its own (not one inside a subquery or window)."""
    depth = 0
    tokens = _tokens(sql)
    for i, (_, text) in enumerate(tokens):
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth == 0 and text.lower() == "order" and i + 1 < len(tokens) and tokens[i + 1][1].lower() == "by":
            return True
    return False


def sql_literals(sql: str) -> tuple:
    """The string and number literals of a query (double-quoted words included: Spider writes "x" for
    strings), as a sorted tuple usable as a cache key. A number after a unary minus is also given negated."""
    found: set = set()
    tokens = _tokens(sql)
    for i, (kind, text) in enumerate(tokens):
        if kind == "sq":
            found.add(text[1:-1].replace("''", "'"))
        elif kind == "dq":
            prev = tokens[i - 1][1].lower() if i else ""
            nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
            if prev not in (".", "as", "from", "join") and nxt != ".":
                found.add(text[1:-1].replace('""', '"'))
        elif kind == "num":
            value: Union[int, float] = float(text) if any(c in text for c in ".eE") else int(text)
            found.add(value)
            if i and tokens[i - 1][1] == "-":
                found.add(-value)
    return tuple(sorted(found, key=lambda v: (isinstance(v, str), repr(v))))


# -------------------------------------------------------------------------------------- building databases

_WORDS = (
    "Alpha", "Bravo", "Cedar", "Delta", "Ember", "Falcon", "Garnet", "Harbor", "Indigo", "Juniper",
    "Kestrel", "Lumen", "Maple", "Nimbus", "Onyx", "Pepper", "Quartz", "Raven", "Sable", "Tundra",
    "Umber", "Violet", "Willow", "Xenon", "Yarrow", "Zephyr", "Aster", "Birch", "Coral", "Dune",
)


def _type_class(declared: str) -> str:
    """SQLite-style affinity from a declared type, with date/time and boolean kept apart."""
    t = (declared or "").upper()
    if "BOOL" in t:
        return "bool"
    if "DATETIME" in t or "TIMESTAMP" in t:
        return "datetime"
    if "DATE" in t:
        return "date"
    if "TIME" in t:
        return "time"
    if "INT" in t or "NUMBER" in t or t == "YEAR":
        return "int"
    if any(k in t for k in ("REAL", "FLOA", "DOUB", "DEC", "NUMERIC")):
        return "float"
    return "text"


def _split_statements(context: str) -> list[str]:
    statements, current = [], []
    for m in _TOKEN.finditer(context):
        if m.lastgroup == "op" and m.group() == ";":
            statements.append("".join(current).strip())
            current = []
        else:
            current.append(m.group())
    statements.append("".join(current).strip())
    return [s for s in statements if s]


def _date(rng: random.Random) -> str:
    start = _dt.date(2000, 1, 1).toordinal()
    return _dt.date.fromordinal(start + rng.randrange(25 * 365)).isoformat()


def _time(rng: random.Random) -> str:
    return f"{rng.randrange(24):02d}:{rng.randrange(60):02d}:{rng.randrange(60):02d}"


def _base_pool(seed: int, column: str, tclass: str, size: int) -> list:
    """Values for a column: the same for every column of that name and type class in the database."""
    rng = random.Random(f"tunelab-sqlfill|{seed}|{column.lower()}|{tclass}")
    name = column.lower()
    if tclass == "int":
        if "year" in name:
            return rng.sample(range(1950, 2025), size)
        if name == "id" or name.endswith("id") or name.endswith("_no") or name.endswith("code"):
            return rng.sample(range(1, 2 * size + 1), size)
        return rng.sample(range(1, 101), size)
    if tclass == "float":
        return [round(rng.uniform(0.5, 100.0), 2) for _ in range(size)]
    if tclass == "bool":
        return [0, 1]
    if tclass == "date":
        return [_date(rng) for _ in range(size)]
    if tclass == "datetime":
        return [f"{_date(rng)} {_time(rng)}" for _ in range(size)]
    if tclass == "time":
        return [_time(rng) for _ in range(size)]
    return rng.sample(_WORDS, min(size, len(_WORDS)))


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def _literal_pools(literals: Iterable) -> dict[str, list]:
    """Values worth having in the data because a gold query mentions them (numbers with their neighbours)."""
    pools: dict[str, set] = {k: set() for k in ("int", "float", "text", "numtext", "date", "datetime", "time", "bool")}
    for lit in literals:
        if isinstance(lit, bool):
            continue
        if isinstance(lit, (int, float)):
            if not math.isfinite(lit) or abs(lit) > 2**53:
                continue
            base = int(lit)
            pools["int"].update({base - 1, base, base + 1})
            pools["float"].update({float(lit) - 1, float(lit), float(lit) + 1})
            pools["numtext"].update({str(lit)} if isinstance(lit, float) else {str(base - 1), str(base), str(base + 1)})
        elif isinstance(lit, str):
            text = lit.replace("%", "").replace("_", " ").strip() if ("%" in lit) else lit
            if not text:
                continue
            pools["text"].add(text)
            if _ISO_DATE.match(text):
                pools["date" if len(text) == 10 else "datetime"].add(text)
    return {k: sorted(v, key=repr) for k, v in pools.items()}


def _table_columns(conn: sqlite3.Connection, table: str) -> list[dict]:
    cols = conn.execute(f"PRAGMA table_info({_quote_ident(table)})").fetchall()
    unique_single = set()
    for idx in conn.execute(f"PRAGMA index_list({_quote_ident(table)})").fetchall():
        if idx[2]:  # unique
            info = conn.execute(f"PRAGMA index_info({_quote_ident(idx[1])})").fetchall()
            if len(info) == 1 and info[0][2] is not None:
                unique_single.add(info[0][2].lower())
    pk_cols = [c for c in cols if c[5]]
    out = []
    for cid, name, ctype, notnull, default, pk in cols:
        out.append({
            "name": name,
            "tclass": _type_class(ctype),
            "unique": (pk and len(pk_cols) == 1) or name.lower() in unique_single,
        })
    return out


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _foreign_keys(conn: sqlite3.Connection, table: str) -> list[dict]:
    groups: dict[int, dict] = {}
    for fid, seq, parent, frm, to, *_ in conn.execute(f"PRAGMA foreign_key_list({_quote_ident(table)})"):
        g = groups.setdefault(fid, {"parent": parent, "pairs": []})
        g["pairs"].append((frm, to))
    return list(groups.values())


def _fill_order(tables: list[str], fks: dict[str, list[dict]]) -> list[str]:
    """Parents before children where the foreign keys allow it (cycles keep the declared order)."""
    lower = {t.lower(): t for t in tables}
    done: list[str] = []
    visiting: set[str] = set()

    def visit(t: str) -> None:
        if t in done or t in visiting:
            return
        visiting.add(t)
        for fk in fks[t]:
            parent = lower.get(str(fk["parent"]).lower())
            if parent and parent != t:
                visit(parent)
        visiting.discard(t)
        done.append(t)

    for t in tables:
        visit(t)
    return done


_CONSTRAINT_WORDS = {"primary", "foreign", "unique", "check", "constraint"}


def _quote_odd_column_names(stmt: str) -> str:
    """Quote every unquoted column name: Spider writes ``%_Change_2007 TEXT`` and ``From TEXT`` unquoted."""
    open_at = stmt.find("(")
    close_at = stmt.rfind(")")
    if open_at < 0 or close_at < open_at:
        return stmt
    parts, current, depth = [], [], 0
    for m in _TOKEN.finditer(stmt[open_at + 1:close_at]):
        text = m.group()
        depth += (text == "(") - (text == ")")
        if depth == 0 and text == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(text)
    parts.append("".join(current))
    fixed = []
    for part in parts:
        stripped = part.strip()
        name, _, rest = stripped.partition(" ")
        if name and name[0] not in "\"`[" and name.lower() not in _CONSTRAINT_WORDS:
            stripped = f"{_quote_ident(name)} {rest}".strip()
        fixed.append(stripped)
    return stmt[: open_at + 1] + ", ".join(fixed) + stmt[close_at:]


def build_database(
    context: str,
    *,
    seed: int,
    rows_per_table: int = 8,
    literals: Iterable = (),
) -> sqlite3.Connection:
    """An in-memory SQLite database with the tables of ``context``, filled with deterministic random rows.

    ``context`` holds CREATE TABLE statements separated by semicolons (CREATE INDEX / VIEW are run too).
    Each table gets ``rows_per_table`` rows whose values respect the column type and come from pools shared
    by column name; foreign keys point at existing parent rows; primary keys and single-column UNIQUE
    columns get distinct values. ``literals`` (e.g. :func:`sql_literals` of the gold query) are mixed into
    the pools so that the query's filters match some rows. The connection is read-only once filled.
    Raises TunelabError when the context has no CREATE TABLE or a statement does not run.
    """
    if not isinstance(context, str) or not context.strip():
        raise TunelabError("text-to-SQL context is empty; give the CREATE TABLE statements of the question's database")
    if rows_per_table < 1:
        raise TunelabError(f"rows_per_table must be at least 1, got {rows_per_table}")
    conn = sqlite3.connect(":memory:")
    tables: list[str] = []
    try:
        for n, stmt in enumerate(_split_statements(context), start=1):
            words = [t[1].lower() for t in _tokens(stmt)[:4]]
            is_table = words[:2] == ["create", "table"]
            is_other = words[:1] == ["create"] and any(w in ("index", "view") for w in words[1:4])
            if not (is_table or is_other):
                raise TunelabError(
                    f"text-to-SQL context: statement {n} is not a CREATE TABLE ({stmt[:60]!r}); "
                    "a context must hold only the CREATE TABLE statements of the database"
                )
            if is_table and any(w.strip('"`[]').lower().startswith("sqlite_") for w in words[2:4]):
                continue  # e.g. sqlite_sequence: SQLite makes it itself
            before = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            try:
                try:
                    conn.execute(stmt)
                except sqlite3.OperationalError as exc:
                    repaired = _quote_odd_column_names(stmt) if is_table and "syntax error" in str(exc) else stmt
                    if repaired == stmt:
                        raise
                    conn.execute(repaired)
            except sqlite3.Error as exc:
                if is_table and "already exists" in str(exc):
                    logger.warning("text-to-SQL context repeats a table; keeping the first: %s", stmt[:80])
                    continue
                raise TunelabError(
                    f"text-to-SQL context: statement {n} does not run in SQLite ({exc}): {stmt[:80]!r}; "
                    "fix its syntax"
                ) from None
            for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY rowid"):
                if name not in before and not name.startswith("sqlite_"):
                    tables.append(name)
        if not tables:
            raise TunelabError(
                "text-to-SQL context has no CREATE TABLE statement; give e.g. 'CREATE TABLE head (age INTEGER, name VARCHAR)'"
            )
        _fill(conn, tables, seed=seed, rows=rows_per_table, literals=_literal_pools(literals))
    except BaseException:
        conn.close()
        raise
    conn.execute("PRAGMA query_only = ON")
    return conn


def _fill(conn: sqlite3.Connection, tables: list[str], *, seed: int, rows: int, literals: dict[str, list]) -> None:
    fks = {t: _foreign_keys(conn, t) for t in tables}
    columns = {t: _table_columns(conn, t) for t in tables}
    if not any(c["tclass"] in ("int", "float") for cols in columns.values() for c in cols):
        # A schema that declares every column as text (WikiSQL style) stores its numbers as text too.
        literals = {**literals, "text": sorted(set(literals["text"]) | set(literals["numtext"]), key=repr)}
    # A column name declared with different types in different tables (an INTEGER id here, a TEXT id there)
    # still shares one pool, drawn for the most specific type and converted, so that joins on it match.
    classes_by_name: dict[str, set[str]] = {}
    for cols in columns.values():
        for c in cols:
            classes_by_name.setdefault(c["name"].lower(), set()).add(c["tclass"])
    shared_class = {name: next(k for k in _CLASS_PRIORITY if k in classes) for name, classes in classes_by_name.items()}
    inserted: dict[str, list[dict]] = {}
    for table in _fill_order(tables, fks):
        rng = random.Random(f"tunelab-sqlfill|{seed}|table|{table.lower()}")
        cols = columns[table]
        pools = {c["name"]: _pool_for(seed, c["name"], c["tclass"], shared_class[c["name"].lower()], rows) for c in cols}
        # Distinct values for primary keys / unique columns: the pool (plus literals) shuffled, then extended.
        distinct: dict[str, list] = {}
        # Other columns: every literal value (up to half the rows) is placed in a random row, so that a filter
        # on a literal and its neighbours (a > 3 against a > 4 or a >= 3) always meets rows that tell them apart.
        covered: dict[str, dict[int, Any]] = {}
        for c in cols:
            lits = literals[c["tclass"]]
            if c["unique"]:
                base = [v for v in pools[c["name"]] if v not in set(lits)]
                rng.shuffle(base)
                distinct[c["name"]] = base + rng.sample(lits, len(lits))  # popped from the end: literals first
            elif lits:
                chosen = rng.sample(lits, min(len(lits), max(1, rows // 2)))
                covered[c["name"]] = dict(zip(rng.sample(range(rows), len(chosen)), chosen))
        fk_of: dict[str, tuple[int, str, Optional[str]]] = {}  # child column -> (fk number, parent, parent column)
        for k, fk in enumerate(fks[table]):
            for frm, to in fk["pairs"]:
                fk_of[frm.lower()] = (k, fk["parent"], to)
        placeholders = ", ".join("?" for _ in cols)
        sql = f"INSERT INTO {_quote_ident(table)} ({', '.join(_quote_ident(c['name']) for c in cols)}) VALUES ({placeholders})"
        rows_done: list[dict] = []
        for row_number in range(rows):
            for attempt in range(20):
                parent_rows: dict[int, Optional[dict]] = {}
                row: dict[str, Any] = {}
                for c in cols:
                    name, tclass = c["name"], c["tclass"]
                    value = _MISSING
                    if name.lower() in fk_of:
                        k, parent, to = fk_of[name.lower()]
                        prows = inserted.get(str(parent).lower())
                        if prows:
                            if k not in parent_rows:
                                parent_rows[k] = rng.choice(prows)
                            prow = parent_rows[k]
                            value = prow.get(to.lower()) if to else _first_pk(conn, parent, prow)
                            if value is None:
                                value = _MISSING
                    if value is _MISSING and name in distinct:
                        seq = distinct[name]
                        if not seq:
                            seq.extend(_more_values(tclass, rng, len(rows_done) + rows))
                        value = seq.pop()
                    if value is _MISSING and attempt == 0 and row_number in covered.get(name, {}):
                        value = covered[name][row_number]
                    if value is _MISSING:
                        lits = literals[tclass]
                        value = rng.choice(lits) if lits and rng.random() < 0.5 else rng.choice(pools[name])
                    row[name] = value
                try:
                    conn.execute(sql, [row[c["name"]] for c in cols])
                except sqlite3.IntegrityError:
                    continue
                rows_done.append({k.lower(): v for k, v in row.items()})
                break
        inserted[table.lower()] = rows_done
    conn.commit()


_MISSING = object()
_CLASS_PRIORITY = ("int", "float", "date", "datetime", "time", "bool", "text")


_CONVERTIBLE = ("int", "float", "text")


def _pool_for(seed: int, column: str, tclass: str, shared: str, size: int) -> list:
    """The column's pool: the one of its name's shared type class, converted, where numbers and text meet."""
    if tclass == shared or tclass not in _CONVERTIBLE or shared not in _CONVERTIBLE:
        return _base_pool(seed, column, tclass, size)
    values = _base_pool(seed, column, shared, size)
    if tclass == "text":
        return [str(v) for v in values]
    return [float(v) if tclass == "float" else int(v) for v in values]


def _first_pk(conn: sqlite3.Connection, parent: str, prow: dict) -> Any:
    try:
        cols = conn.execute(f"PRAGMA table_info({_quote_ident(parent)})").fetchall()
    except sqlite3.Error:
        return None
    pks = [c[1] for c in sorted(cols, key=lambda c: c[5]) if c[5]]
    return prow.get(pks[0].lower()) if pks else None


def _more_values(tclass: str, rng: random.Random, start: int) -> list:
    """Fresh distinct values when a unique column runs out of pool values."""
    if tclass in ("int", "bool"):
        return [1000 + start + i for i in range(50)]
    if tclass == "float":
        return [1000.5 + start + i for i in range(50)]
    if tclass in ("date", "datetime", "time"):
        base = _dt.date(1990, 1, 1).toordinal() + start
        return [_dt.date.fromordinal(base + i).isoformat() for i in range(50)]
    return [f"{rng.choice(_WORDS)} {start + i}" for i in range(50)]


def open_database(path: PathLike) -> sqlite3.Connection:
    """Open an existing SQLite database file read-only (URI ``mode=ro``)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise TunelabError(f"SQLite database {str(p)!r} does not exist; pass the path of a .sqlite file")
    conn = sqlite3.connect(p.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise TunelabError(f"{str(p)!r} is not a readable SQLite database ({exc}); pass a .sqlite file") from None
    return conn


# ---------------------------------------------------------------------------------------------- execution

_READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION,
                 getattr(sqlite3, "SQLITE_RECURSIVE", 33)}


def _read_only(action: int, *_args: Any) -> int:
    return sqlite3.SQLITE_OK if action in _READ_ACTIONS else sqlite3.SQLITE_DENY


def execute(
    conn: sqlite3.Connection, sql: str, *, timeout_s: float = 2.0, max_rows: int = MAX_ROWS
) -> tuple[bool, Union[list[tuple], str]]:
    """Run one read-only query: ``(True, rows)`` or ``(False, error message)``.

    Writes, ATTACH and PRAGMA are refused; a query still running after ``timeout_s`` seconds of wall time is
    interrupted (reported as an error); at most ``max_rows`` rows are fetched (the rest are dropped).
    """
    if not isinstance(sql, str) or not sql.strip():
        return False, "empty query"
    deadline = time.monotonic() + timeout_s
    timed_out = False

    def progress() -> int:
        nonlocal timed_out
        if time.monotonic() > deadline:
            timed_out = True
            return 1
        return 0

    conn.set_authorizer(_read_only)
    conn.set_progress_handler(progress, 1000)
    try:
        cursor = conn.execute(sql.strip())
        rows = cursor.fetchmany(max_rows)
        cursor.close()
        return True, rows
    except (sqlite3.Error, sqlite3.Warning, ValueError, OverflowError) as exc:
        if timed_out:
            return False, f"timed out after {timeout_s:g} s"
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        conn.set_progress_handler(None, 1000)
        conn.set_authorizer(None)


def _norm_value(v: Any) -> Any:
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.10g}")  # 10 significant digits: AVG/SUM rounding noise does not count
    return v


def results_match(
    gold_rows: Sequence[Sequence], pred_rows: Sequence[Sequence], ordered: bool, *, column_order_matters: bool = True
) -> bool:
    """Same result? Rows compared as multisets (lists when ``ordered``), floats to 10 significant digits.

    With ``column_order_matters=False`` a permutation of the predicted columns may match (as in the
    test-suite evaluation); by default ``SELECT a, b`` and ``SELECT b, a`` are different projections.
    """
    gold = [tuple(_norm_value(v) for v in r) for r in gold_rows]
    pred = [tuple(_norm_value(v) for v in r) for r in pred_rows]
    if _same(gold, pred, ordered):
        return True
    if column_order_matters or not gold or not pred or len(gold) != len(pred):
        return False
    width = len(gold[0])
    if width != len(pred[0]) or width > 6:
        return False
    gold_cols = [Counter(r[j] for r in gold) for j in range(width)]
    pred_cols = [Counter(r[j] for r in pred) for j in range(width)]
    for perm in permutations(range(width)):
        if all(gold_cols[j] == pred_cols[perm[j]] for j in range(width)):
            if _same(gold, [tuple(r[perm[j]] for j in range(width)) for r in pred], ordered):
                return True
    return False


def _same(gold: list[tuple], pred: list[tuple], ordered: bool) -> bool:
    return gold == pred if ordered else Counter(gold) == Counter(pred)


# -------------------------------------------------------------------------------------- execution accuracy

class _DatabaseCache:
    """Built databases per (context, seed, literals, rows) and opened files per path, closed at the end."""

    def __init__(self, max_built: int = 256):
        self.built: "OrderedDict[tuple, sqlite3.Connection]" = OrderedDict()
        self.files: dict[str, sqlite3.Connection] = {}
        self.max_built = max_built

    def built_db(self, context: str, seed: int, literals: tuple, rows: int) -> sqlite3.Connection:
        key = (context, seed, literals, rows)
        conn = self.built.get(key)
        if conn is None:
            conn = build_database(context, seed=seed, rows_per_table=rows, literals=literals)
            self.built[key] = conn
            if len(self.built) > self.max_built:
                _, old = self.built.popitem(last=False)
                old.close()
        else:
            self.built.move_to_end(key)
        return conn

    def file_db(self, path: PathLike) -> sqlite3.Connection:
        key = os.fspath(Path(path).expanduser().resolve())
        if key not in self.files:
            self.files[key] = open_database(path)
        return self.files[key]

    def close(self) -> None:
        for conn in list(self.built.values()) + list(self.files.values()):
            conn.close()
        self.built.clear()
        self.files.clear()


def execution_accuracy(
    predictions: Sequence[str],
    golds: Sequence[str],
    contexts: Optional[Sequence[str]] = None,
    db_paths: Union[None, PathLike, Sequence[Optional[PathLike]]] = None,
    *,
    seed: int = 0,
    n_databases: int = 3,
    rows_per_table: int = 8,
    timeout_s: float = 2.0,
    column_order_matters: bool = True,
) -> dict:
    """Test-suite execution accuracy of predicted queries against gold queries.

    Each example runs on a real database (``db_paths``: one path for all examples or one per example) or on
    ``n_databases`` databases built from its ``contexts`` entry with seeds ``seed .. seed+n_databases-1``
    (a path, where given, wins over the context). A prediction is correct when it returns the gold result
    on every database where the gold query runs (ordered comparison only when the gold query has a
    top-level ORDER BY); when the gold query fails on every database the example counts as wrong and in
    ``gold_errors``.

    Returns ``{"scores": {"execution_accuracy", "executable", "exact_match"}, "per_example": [1.0/0.0 ...],
    "gold_errors": int, "details": [per-example dicts]}``; ``executable`` is the share of predictions that run
    without error on the first database, ``exact_match`` uses :func:`normalize_sql`.
    """
    n = len(predictions)
    if len(golds) != n:
        raise TunelabError(f"execution_accuracy: {n} predictions but {len(golds)} gold queries; give one gold query per prediction")
    if contexts is not None and len(contexts) != n:
        raise TunelabError(f"execution_accuracy: {n} predictions but {len(contexts)} contexts; give one context per prediction")
    if isinstance(db_paths, (str, os.PathLike)):
        db_paths = [db_paths] * n
    if db_paths is not None and len(db_paths) != n:
        raise TunelabError(f"execution_accuracy: {n} predictions but {len(db_paths)} db_paths; give one path per prediction or a single path")
    if contexts is None and db_paths is None:
        raise TunelabError(
            "execution_accuracy needs contexts= (CREATE TABLE statements per example) or db_paths= (SQLite files) "
            "to run the queries"
        )
    if n_databases < 1:
        raise TunelabError(f"execution_accuracy: n_databases must be at least 1, got {n_databases}")

    cache = _DatabaseCache()
    per_example: list[float] = []
    details: list[dict] = []
    executable = exact = gold_errors = 0
    try:
        for i, (pred, gold) in enumerate(zip(predictions, golds)):
            pred = "" if pred is None else str(pred)
            path = db_paths[i] if db_paths is not None else None
            if path is not None:
                dbs = [cache.file_db(path)]
            else:
                context = contexts[i] if contexts is not None else None
                if not context:
                    raise TunelabError(f"execution_accuracy: example {i} has neither a context nor a db path; fill in its context")
                lits = sql_literals(gold)
                dbs = [cache.built_db(context, seed + k, lits, rows_per_table) for k in range(n_databases)]
            ordered = has_top_level_order_by(gold)
            first_ok, first = execute(dbs[0], pred, timeout_s=timeout_s)
            correct, gold_ran = True, False
            for k, db in enumerate(dbs):
                g_ok, g_rows = execute(db, gold, timeout_s=timeout_s)
                if not g_ok:
                    continue
                gold_ran = True
                p_ok, p_rows = (first_ok, first) if k == 0 else execute(db, pred, timeout_s=timeout_s)
                if not p_ok or not results_match(g_rows, p_rows, ordered, column_order_matters=column_order_matters):
                    correct = False
                    break
            if not gold_ran:
                correct = False
                gold_errors += 1
            em = exact_match(pred, gold)
            executable += first_ok
            exact += em
            per_example.append(float(correct))
            details.append({
                "correct": correct, "executable": first_ok, "exact_match": em, "gold_error": not gold_ran,
                "error": None if first_ok else first,
            })
    finally:
        cache.close()
    if gold_errors:
        logger.warning("execution_accuracy: %d of %d gold queries failed on every database", gold_errors, n)
    mean = (lambda k: k / n if n else float("nan"))
    return {
        "scores": {
            "execution_accuracy": mean(sum(per_example)),
            "executable": mean(executable),
            "exact_match": mean(exact),
        },
        "per_example": per_example,
        "gold_errors": gold_errors,
        "details": details,
    }
