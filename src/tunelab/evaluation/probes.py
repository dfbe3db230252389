"""Evaluation data: the main task's examples and the retention probes' (built-in ones and the user's own).

A built-in probe is one entry in PROBES: its task and a loader. Probes that read the shared real datasets say
clearly where they looked when the data is missing.
"""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from tunelab import builtin
from tunelab.data import sources
from tunelab.data.formats import Example, flag_columns, normalise
from tunelab.errors import TunelabError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    name: str
    task: str                        # a key of evaluation.tasks.TASKS, or "drift"
    load: Callable[["ProbeContext"], list[Example]]
    max_new_tokens: int | None = None   # short answers need few tokens: a cap keeps probes cheap
    dataset: str | None = None          # the built-in dataset (tunelab.builtin) whose test file it reads, if any


@dataclass
class ProbeContext:
    data_dir: Path | None
    samples: int
    seed: int
    benchmark_dir: Path | None = None   # local copies of the standard benchmarks (evaluation.benchmarks)


# The shared data folder beside a source checkout of tunelab (<checkout>/../shared/data), for a notebook or a
# script run from another directory; an installed package has no such neighbour and the candidate does not exist.
CHECKOUT_DATA_DIR = Path(__file__).resolve().parents[4] / "shared" / "data"


def default_data_dir(explicit: str | None) -> Path | None:
    """--data_dir as given, else $TUNELAB_DATA_DIR, else ../shared/data from the working directory, else the shared
    folder beside tunelab's own checkout."""
    for candidate in (explicit, os.environ.get("TUNELAB_DATA_DIR"), "../shared/data", CHECKOUT_DATA_DIR):
        if candidate and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser()
    return Path(explicit).expanduser() if explicit else None


def _shared(ctx: ProbeContext, *parts: str) -> Path:
    if ctx.data_dir is None:
        raise TunelabError(f"this probe reads {'/'.join(parts)} from the shared data folder, which was not found; "
                           "pass --data_dir (or set TUNELAB_DATA_DIR) to the folder that holds it")
    path = ctx.data_dir.joinpath(*parts)
    if not path.exists():
        raise TunelabError(f"{path}: not found; pass --data_dir pointing at the folder that holds {parts[0]}/")
    return path


def _builtin_file(name: str) -> Path:
    return Path(str(resources.files("tunelab.builtin") / "probes" / name))


def sample_examples(examples: list[Example], n: int | None, seed: int) -> list[Example]:
    if n is None or n >= len(examples):
        return examples
    import random

    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in sorted(order[:n])]


def _general_knowledge(ctx: ProbeContext) -> list[Example]:
    rows = sources.read_file(_builtin_file("general_knowledge.jsonl"))
    return sample_examples(normalise(rows)[1], ctx.samples, ctx.seed)


def drift_prompts(ctx: ProbeContext) -> list[Example]:
    rows = sources.read_file(_builtin_file("drift_prompts.jsonl"))
    examples = [Example(messages=[{"role": "user", "content": r["prompt"]}], locator=loc, fields=r)
                for r, loc in zip(rows.rows, rows.locators)]
    return sample_examples(examples, ctx.samples, ctx.seed)


def _multi30k(ctx: ProbeContext) -> list[Example]:
    en = _shared(ctx, "multi30k_en_fr", "val.en").read_text(encoding="utf-8").splitlines()
    fr = _shared(ctx, "multi30k_en_fr", "val.fr").read_text(encoding="utf-8").splitlines()
    examples = [Example(messages=[{"role": "user", "content": f"Translate this sentence from English to French: {e}"},
                                  {"role": "assistant", "content": f}], locator=f"val.en line {i}",
                        fields={"source": e, "target": f})
                for i, (e, f) in enumerate(zip(en, fr), start=1) if e.strip() and f.strip()]
    return sample_examples(examples, ctx.samples, ctx.seed)


def read_stsb(path: Path) -> list[Example]:
    """STS Benchmark files: tab-separated, no header, some rows with extra columns; fields 4-6 are score and pair."""
    examples = []
    with open(path, encoding="utf-8-sig") as fh:
        for lineno, fields in enumerate(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if len(fields) < 7:
                raise TunelabError(f"{path} line {lineno}: expected at least 7 tab-separated fields (STS-B form)")
            try:
                score = float(fields[4])
            except ValueError:
                raise TunelabError(f"{path} line {lineno}: field 5 should be a similarity score, got "
                                   f"{fields[4]!r}") from None
            examples.append(Example(texts=(fields[5], fields[6]), label=str(score), locator=f"{path.name} line "
                                    f"{lineno}"))
    return examples


def _stsb(ctx: ProbeContext) -> list[Example]:
    return sample_examples(read_stsb(_shared(ctx, "stsb", "sts-dev.csv")), ctx.samples, ctx.seed)


def _builtin_dataset(name: str) -> Callable[[ProbeContext], list[Example]]:
    """A probe's examples from built-in dataset NAME's test file."""
    def load(ctx: ProbeContext) -> list[Example]:
        rows = sources.read_file(builtin.dataset_dir(name) / builtin.DATASETS[name].test_file)
        return sample_examples(normalise(rows)[1], ctx.samples, ctx.seed)

    return load


PROBES: dict[str, Probe] = {p.name: p for p in (
    Probe("general_knowledge", "qa", _general_knowledge, max_new_tokens=32),
    Probe("drift", "drift", drift_prompts),
    Probe("multi30k_en_fr", "translation", _multi30k, max_new_tokens=64),
    Probe("stsb", "similarity", _stsb),
    Probe("text2sql", "text2sql", _builtin_dataset("text2sql"), max_new_tokens=96, dataset="text2sql"),
)}


def parse_probe(spec: str) -> tuple[Probe, str | None]:
    """A built-in name, a benchmark (built-in, or lm_eval:TASK), or TASK:PATH for the user's own data. Returns
    (probe, sql database or None); a benchmark probe is an evaluation.benchmarks.BenchmarkProbe (task "benchmark")."""
    from tunelab.evaluation import benchmarks
    from tunelab.evaluation.tasks import TASKS

    if spec in PROBES:
        probe = PROBES[spec]
        folder = str(builtin.dataset_dir(probe.dataset)) if probe.dataset and probe.task == "text2sql" else None
        return probe, folder_database(folder) if folder else None
    if benchmarks.is_benchmark(spec):
        return benchmarks.benchmark_probe(spec), None
    task, sep, path = spec.partition(":")
    if not sep or task not in TASKS:
        raise TunelabError(f"--retention {spec}: not a built-in probe ({', '.join(PROBES)}), a benchmark "
                           f"({', '.join(benchmarks.BUILTIN_BENCHMARKS)}, or lm_eval:TASK) nor TASK:PATH[:INPUT->"
                           f"TARGET] with a task among {', '.join(TASKS)}")
    path, inputs, target = _probe_columns(path)

    def load(ctx: ProbeContext) -> list[Example]:
        examples = load_task_examples(task, path, flag=f"--retention {spec}", input_columns=inputs,
                                      target_column=target,
                                      name_columns=lambda i, t: f"name them in the probe: {task}:{path}:{i}->{t}")
        return sample_examples(examples, ctx.samples, ctx.seed)

    return Probe(spec, task, load), folder_database(path) if task == "text2sql" else None


def _probe_columns(path: str) -> tuple[str, list[str] | None, str | None]:
    """PATH[:INPUT[+INPUT...]->TARGET]: the user's own probe data with the columns to read, for data whose columns
    name no known format (--input_columns and --target_column name the task's data, not a probe's)."""
    head, sep, columns = path.rpartition(":")
    inputs, arrow, target = columns.partition("->")
    if not (sep and arrow and head and inputs and target):
        return path, None, None
    return head, inputs.split("+"), target


def folder_database(path: str) -> str | None:
    """The SQLite database a text-to-SQL dataset ships beside its files: the one *.sqlite file in its folder."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    dbs = sorted(folder.glob("*.sqlite")) if folder.is_dir() else []
    return str(dbs[0]) if len(dbs) == 1 else None


def load_task_examples(task: str, name_or_path: str, *, eval_split: str = "test", dataset_config: str | None = None,
                       dataset_format: str = "auto", input_columns=None, target_column=None,
                       flag: str = "--dataset_name_or_path", run_columns=None,
                       name_columns: Callable[[str, str], str] = flag_columns) -> list[Example]:
    """The examples of an evaluation dataset: a file, a directory's test (or validation) split, or the Hub.
    ``run_columns`` (input columns, target column): the columns a run trained on, read where neither column flag
    is given and the data has them all (a run's own test split), as the run's template and system prompt are."""
    path = Path(name_or_path).expanduser()
    if task == "similarity" and path.is_file() and path.suffix in (".csv", ".tsv") and _looks_stsb(path):
        return read_stsb(path)
    if path.is_dir():
        rows = sources.evaluation_rows(path, eval_split, flag)
    elif path.is_file():
        rows = sources.read_file(path)
    else:
        train, evals = sources.load_splits(name_or_path, train_split=eval_split, dataset_config=dataset_config,
                                           flag=flag)
        rows = train
    if task == "similarity":
        return _similarity_examples(rows)
    run_inputs, run_target = run_columns or (None, None)
    if run_inputs and run_target and not (input_columns or target_column) \
            and {*run_inputs, run_target} <= set(rows.columns):
        input_columns, target_column = run_inputs, run_target
        log.info("%s: read with the run's --input_columns %s --target_column %s (pass them to choose others)",
                 rows.source, " ".join(input_columns), target_column)
    return normalise(rows, dataset_format=dataset_format, input_columns=input_columns, target_column=target_column,
                     classification=task == "classification" and dataset_format in ("auto", "classification")
                     and bool(input_columns), name_columns=name_columns)[1]


def _looks_stsb(path: Path) -> bool:
    first = path.read_text(encoding="utf-8-sig").split("\n", 1)[0]
    return first.count("\t") >= 6


def _similarity_examples(rows) -> list[Example]:
    cols = {c.lower() for c in rows.columns}
    pair = next((p for p in (("sentence1", "sentence2"), ("text1", "text2"), ("sentence_a", "sentence_b"))
                 if set(p) <= cols), None)
    score = next((c for c in ("score", "label", "similarity") if c in cols), None)
    if pair is None or score is None:
        raise TunelabError(f"{rows.source}: similarity data needs columns sentence1, sentence2 and score; it has "
                           f"{', '.join(rows.columns)}")
    out = []
    for row, loc in zip(rows.rows, rows.locators):
        low = {str(k).lower(): v for k, v in row.items()}
        out.append(Example(texts=(str(low[pair[0]]), str(low[pair[1]])), label=str(low[score]), locator=loc))
    return out

