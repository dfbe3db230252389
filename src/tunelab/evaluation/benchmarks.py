"""Retention on the field's standard benchmarks, scored by lm-evaluation-harness (``lm-eval``).

tunelab does not score multiple choice itself. A :class:`BenchmarkProbe` wraps the model already in memory (its
adapter attached, or switched off by the caller with peft's ``disable_adapter``) in lm-eval's ``HFLM`` and runs an
lm-eval task on it, so the numbers mean what papers and model cards that use lm-eval mean. Two kinds of name:

- built-in benchmarks (:data:`BUILTIN_BENCHMARKS`: arc_easy, arc_challenge, openbookqa, winogrande, boolq, mmlu):
  task configs in lm-eval's own YAML format, shipped in ``tunelab/builtin/benchmarks``, that read local copies
  (``dataset_path: json``/``csv`` with relative ``data_files``) from the benchmark folder: ``--benchmark_data_dir``,
  else ``$TUNELAB_BENCHMARK_DIR``, else ``<shared data folder>/benchmarks`` (``../shared/data/benchmarks``). Rows
  are checked first, so a malformed one is reported with its file and line;
- ``lm_eval:TASK``: any task, group or tag lm-eval ships (hellaswag, piqa, ...), reading its Hub dataset (network).

Subsets: lm-eval's ``limit`` takes the *first* N documents, which on files ordered by source or subject is not a
sample. A probe given a limit instead draws N document indices at random with its seed and passes them as
lm-eval's ``samples``: the same seed gives the same documents before and after tuning, so the scores are paired.
N is --probe_samples, or the probe's own ``NAME@N`` (``arc_easy@64``): a log-likelihood question costs a fraction of
a generated answer, and a benchmark needs enough of them for its interval to clear chance.
The probe never reseeds the global random generators (lm-eval would by default), so it can run between training
steps without changing the run.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import functools
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

LM_EVAL_PREFIX = "lm_eval:"
BENCHMARK_DIR_ENV = "TUNELAB_BENCHMARK_DIR"
INSTALL_HINT = "pip install 'tunelab[benchmarks]'"
Z95 = 1.959963984540054   # two-sided 95% normal quantile: lm-eval reports standard errors, intervals are ±1.96 se


# --- the built-in benchmarks and the rows their files must hold ---------------------------------------------------

def _is_index(value: Any, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _strings(value: Any, least: int) -> bool:
    return isinstance(value, list) and len(value) >= least and all(isinstance(v, str) for v in value)


def _arc_row(row: dict) -> str | None:
    q = row.get("question")
    if not isinstance(q, dict) or not isinstance(q.get("stem"), str):
        return "needs question.stem (text)"
    choices = q.get("choices")
    if not isinstance(choices, list) or len(choices) < 2 or not all(
            isinstance(c, dict) and isinstance(c.get("text"), str) and isinstance(c.get("label"), str)
            for c in choices):
        return "needs question.choices: at least 2 objects with text and label"
    labels = [c["label"] for c in choices]
    if row.get("answerKey") not in labels:
        return f"answerKey {row.get('answerKey')!r} is not one of the choices' labels {labels}"
    return None


def _query_row(row: dict) -> str | None:
    if not isinstance(row.get("query"), str) or not _strings(row.get("choices"), 2):
        return "needs query (text) and choices (at least 2 strings)"
    if not _is_index(row.get("gold"), len(row["choices"])):
        return f"gold {row.get('gold')!r} is not an index into its {len(row['choices'])} choices"
    return None


def _winogrande_row(row: dict) -> str | None:
    if not _strings(row.get("context_options"), 2) or not isinstance(row.get("continuation"), str):
        return "needs context_options (at least 2 strings) and continuation (text)"
    if not _is_index(row.get("gold"), len(row["context_options"])):
        return f"gold {row.get('gold')!r} is not an index into its {len(row['context_options'])} context_options"
    return None


MMLU_COLUMNS = ["question", "choice0", "choice1", "choice2", "choice3", "answer"]


def _mmlu_row(row: dict) -> str | None:
    if None in row or any(row.get(c) is None for c in MMLU_COLUMNS):
        return f"expected {len(MMLU_COLUMNS)} fields ({','.join(MMLU_COLUMNS)})"
    if row["answer"].strip() not in ("0", "1", "2", "3"):
        return f"answer {row['answer']!r} is not 0-3"
    return None


@dataclass(frozen=True)
class BuiltinBenchmark:
    name: str                                # the probe name, and the lm-eval task name in its YAML
    pattern: str                             # its data file(s) in the benchmark folder (a glob for mmlu)
    check_row: Callable[[dict], str | None]  # what is wrong with a row, or None
    form: str                                # how its rows read, for error messages


BUILTIN_BENCHMARKS: dict[str, BuiltinBenchmark] = {b.name: b for b in (
    BuiltinBenchmark("arc_easy", "arc_easy.dev.jsonl", _arc_row, "AI2 ARC JSON lines"),
    BuiltinBenchmark("arc_challenge", "arc_challenge.dev.jsonl", _arc_row, "AI2 ARC JSON lines"),
    BuiltinBenchmark("openbookqa", "openbookqa.test.jsonl", _query_row, "JSON lines of query, choices, gold"),
    BuiltinBenchmark("winogrande", "winogrande.dev.jsonl", _winogrande_row,
                     "JSON lines of context_options, continuation, gold"),
    BuiltinBenchmark("boolq", "boolq.dev.jsonl", _query_row, "JSON lines of query, choices, gold"),
    BuiltinBenchmark("mmlu", "mmlu_dev/*_dev.csv", _mmlu_row, "CSV with header " + ",".join(MMLU_COLUMNS)),
)}


def split_size(spec: str) -> tuple[str, str | None]:
    """``arc_easy@64`` -> ("arc_easy", "64"): a benchmark probe may carry its own number of examples, so that a
    recipe can give a cheap log-likelihood benchmark more questions than its generation probes (--probe_samples)."""
    name, sep, size = spec.rpartition("@")
    return (name, size) if sep else (spec, None)


def is_benchmark(spec: str) -> bool:
    name = split_size(spec)[0]
    return name in BUILTIN_BENCHMARKS or name.startswith(LM_EVAL_PREFIX)


def builtin_tasks_dir() -> Path:
    """The lm-eval task configs tunelab ships (one YAML per built-in benchmark)."""
    return Path(str(resources.files("tunelab.builtin") / "benchmarks"))


def default_benchmark_dir(explicit: str | None, data_dir: Path | None = None) -> Path | None:
    """--benchmark_data_dir (as given: a wrong one is an error, not a fallback), else $TUNELAB_BENCHMARK_DIR, else
    the shared data folder's benchmarks/ (../shared/data/benchmarks)."""
    if explicit:
        return Path(explicit).expanduser()
    for candidate in (os.environ.get(BENCHMARK_DIR_ENV), data_dir / "benchmarks" if data_dir else None):
        if candidate and Path(candidate).expanduser().is_dir():
            return Path(candidate).expanduser()
    return None


def check_benchmark_files(bench: BuiltinBenchmark, folder: Path | None) -> list[Path]:
    """The benchmark's files, every row checked: a missing folder or file, or a malformed row, is one line."""
    if folder is None:
        raise TunelabError(f"--retention {bench.name}: the benchmark folder was not found; pass --benchmark_data_dir "
                           f"(or set ${BENCHMARK_DIR_ENV}) to the folder that holds {bench.pattern}")
    if not folder.is_dir():
        raise TunelabError(f"--benchmark_data_dir {folder}: no such folder; pass the folder that holds "
                           f"{bench.pattern}")
    files = sorted(folder.glob(bench.pattern))
    if not files:
        raise TunelabError(f"{folder / bench.pattern}: not found; pass --benchmark_data_dir pointing at the folder "
                           f"that holds {bench.name}'s {bench.pattern}")
    for path in files:
        rows = _read_csv(path) if path.suffix == ".csv" else _read_jsonl(path)
        count = 0
        for lineno, row in rows:
            problem = row if isinstance(row, str) else bench.check_row(row)
            if problem:
                raise TunelabError(f"{path} line {lineno}: {problem} ({bench.name} rows are {bench.form})")
            count += 1
        if count == 0:
            raise TunelabError(f"{path}: no rows; {bench.name} needs {bench.form}")
    return files


def _read_jsonl(path: Path):
    """(line number, row) pairs; a row that is not a JSON object comes as the text of what is wrong."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, f"not valid JSON ({e.msg})"
                continue
            yield lineno, row if isinstance(row, dict) else "not a JSON object"


def _read_csv(path: Path):
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != MMLU_COLUMNS:
            yield 1, f"header is {','.join(reader.fieldnames or [])}, expected {','.join(MMLU_COLUMNS)}"
            return
        for row in reader:
            yield reader.line_num, row


# --- lm-eval -------------------------------------------------------------------------------------------------------

def require_lm_eval(spec: str) -> None:
    """Benchmark probes need the optional extra; naming one without it is a user error, not a traceback."""
    import importlib.util

    try:  # found without importing it (seconds): recipes check their probes before any run
        found = importlib.util.find_spec("lm_eval") is not None
    except ValueError:  # None in sys.modules: made unimportable
        found = False
    if not found:
        raise TunelabError(f"--retention {spec}: benchmark probes are scored by lm-evaluation-harness, which is not "
                           f"installed; {INSTALL_HINT}") from None


@functools.lru_cache(maxsize=None)
def _task_manager(builtin: bool):
    """Builtin: an index of tunelab's YAMLs only (fast; names match lm-eval's, so stock configs must not shadow
    them). Stock: lm-eval's own index of every task it ships (seconds to build, so built once)."""
    from lm_eval.tasks import TaskManager

    if builtin:
        return TaskManager(include_path=str(builtin_tasks_dir()), include_defaults=False)
    return TaskManager()


# --- one score -----------------------------------------------------------------------------------------------------

@dataclass
class BenchmarkScore:
    """lm-eval's metrics for one model on one (sub)set of a benchmark."""

    task: str
    metric: str                      # the headline: acc_norm where the task has it, else acc, else its first metric
    value: float | None
    stderr: float | None             # lm-eval's standard error of the headline
    scores: dict[str, float | None]  # every metric with its <metric>_stderr, as lm-eval reports them
    chance_level: float | None       # multiple choice: the better of uniform guessing and the commonest answer
    num_examples: int
    higher_is_better: bool = True    # as lm-eval says for the headline (perplexities point down)
    rows: list[dict[str, Any]] = field(default_factory=list)   # per document: choices, gold, prediction, score

    @property
    def confidence_interval(self) -> list[float] | None:
        if self.value is None or self.stderr is None:
            return None
        return [self.value - Z95 * self.stderr, self.value + Z95 * self.stderr]


def seeded_subset(size: int, limit: int | None, seed: int) -> list[int] | None:
    """Indices of ``limit`` documents drawn at random with ``seed`` (sorted), or None for all of them."""
    if limit is None or limit >= size:
        return None
    return sorted(random.Random(seed).sample(range(size), limit))


def _gold_and_choices(task, doc) -> tuple[int | None, list[str]]:
    """As lm-eval's multiple-choice scoring reads them: the choices, and the gold's index among them."""
    choices = [str(c) for c in task.doc_to_choice(doc)]
    gold = task.doc_to_text(doc) if task.multiple_input else task.doc_to_target(doc)
    if isinstance(gold, str):
        gold = choices.index(gold) if gold in choices else None
    return (gold if isinstance(gold, int) and 0 <= gold < len(choices) else None), choices


def chance_level(golds: list[tuple[int | None, list[str]]]) -> float | None:
    """What a model without the skill scores: the better of guessing uniformly (mean 1/choices) and always giving
    one answer that every question offers (BoolQ's "yes" is right 62% of the time; ARC has no such answer)."""
    if not golds:
        return None
    uniform = sum(1 / len(choices) for _, choices in golds) / len(golds)
    everywhere = set.intersection(*(set(choices) for _, choices in golds))
    constant = max((sum(g is not None and choices[g] == answer for g, choices in golds) for answer in everywhere),
                   default=0)
    return max(uniform, constant / len(golds))


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value) else None


@dataclass
class BenchmarkProbe:
    """A retention probe scored by lm-eval on a model in memory: ``probe(model, tokenizer, limit=20)``.

    ``limit``: documents per scoring (a seeded random subset, see the module docstring); None scores them all. A
    call's own ``limit`` wins over the probe's. The lm-eval task is built once (its data read once) and reused."""

    name: str                        # as the user wrote it (the results' key): arc_easy, arc_easy@64, lm_eval:piqa
    benchmark_dir: Path | None = None
    limit: int | None = None
    seed: int = 42
    own_limit: int | None = None     # the @N of the name: wins over the evaluation's --probe_samples
    task = "benchmark"               # what run.py dispatches on, beside the task probes and drift
    _loaded: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def benchmark(self) -> str:
        return split_size(self.name)[0]

    @property
    def builtin(self) -> BuiltinBenchmark | None:
        return BUILTIN_BENCHMARKS.get(self.benchmark)

    @property
    def lm_eval_task(self) -> str:
        return self.benchmark.removeprefix(LM_EVAL_PREFIX)

    def load(self, ctx) -> "BenchmarkProbe":
        """This probe bound to an evaluation's context (benchmark folder, examples, seed), its data checked and
        its lm-eval task built, so that bad data fails before any model is loaded."""
        bound = dataclasses.replace(self, benchmark_dir=ctx.benchmark_dir, seed=ctx.seed,
                                    limit=self.own_limit if self.own_limit is not None else ctx.samples)
        bound.tasks()
        return bound

    def tasks(self) -> dict[str, Any]:
        """{"loaded": lm-eval's TaskDict to evaluate, "tasks": its leaf Tasks by name}."""
        if self._loaded is None:
            require_lm_eval(self.name)
            self._loaded = self._build_builtin() if self.builtin else self._build_stock()
        return self._loaded

    def _build_builtin(self) -> dict[str, Any]:
        check_benchmark_files(self.builtin, self.benchmark_dir)
        manager = _task_manager(True)
        # The YAML's data_files are relative to the benchmark folder, given to datasets as data_dir: the shipped
        # configs stay free of machine paths, and the folder is chosen per run.
        config = copy.deepcopy(manager.task_index[self.benchmark].cfg)
        config["dataset_kwargs"] = {**config.get("dataset_kwargs", {}),
                                    "data_dir": str(self.benchmark_dir.resolve())}
        return _zero_shot(manager.load([config]))

    def _build_stock(self) -> dict[str, Any]:
        manager = _task_manager(False)
        name = self.lm_eval_task
        if name not in manager.all_tasks:
            raise TunelabError(f"--retention {self.name}: lm-eval has no task or group named {name!r} (`lm-eval ls "
                               f"tasks` lists them); built-in benchmarks: {', '.join(BUILTIN_BENCHMARKS)}")
        try:
            loaded = manager.load([name])
        except (OSError, ConnectionError) as e:  # the Hub's errors (offline, unknown dataset) are OSErrors
            raise TunelabError(f"--retention {self.name}: lm-eval could not load its dataset ({type(e).__name__}: "
                               f"{str(e).splitlines()[0] if str(e) else ''}); it reads the Hugging Face Hub, so it "
                               f"needs network; offline, use the built-in benchmarks "
                               f"({', '.join(BUILTIN_BENCHMARKS)}) with --benchmark_data_dir") from None
        if name not in loaded["groups"] and name not in loaded["tasks"]:
            raise TunelabError(f"--retention {self.name}: {name!r} is an lm-eval tag (a list of "
                               f"{len(loaded['tasks'])} tasks without one score); name one of its tasks or a group")
        return _zero_shot(loaded)

    def __call__(self, model, tokenizer, *, limit: int | None = None, batch_size: int = 8) -> BenchmarkScore:
        """Score ``model`` (a transformers or peft model, as it is: adapter on, or inside ``disable_adapter()``)."""
        from lm_eval.evaluator import evaluate

        loaded = self.tasks()
        n = limit if limit is not None else self.limit
        subsets = {name: seeded_subset(len(task.eval_docs), n, self.seed) for name, task in loaded["tasks"].items()}
        samples = None
        if any(s is not None for s in subsets.values()):
            samples = {name: s if s is not None else list(range(len(loaded["tasks"][name].eval_docs)))
                       for name, s in subsets.items()}
        was_training = model.training
        generates = any(task.config.output_type == "generate_until" for task in loaded["tasks"].values())
        try:
            with lm_eval_model(model, tokenizer, batch_size=batch_size, generates=generates) as wrapped:
                # lm-eval's evaluate(), not simple_evaluate(): the latter reseeds the global generators (random,
                # numpy, torch) and collects the environment (subprocesses, seconds) on every call.
                out = evaluate(lm=wrapped, task_dict=loaded["loaded"], samples=samples, log_samples=True)
        finally:
            model.train(was_training)  # HFLM switches the model to eval mode
        return self._score(out, loaded)

    def _score(self, out: dict[str, Any], loaded: dict[str, Any]) -> BenchmarkScore:
        name = self.lm_eval_task
        reported = out["results"].get(name) or (out.get("groups") or {})[name]  # a group's aggregate, for groups
        scores: dict[str, float | None] = {}
        for key, value in reported.items():
            metric, sep, filt = key.partition(",")
            if sep and filt == "none":
                scores[metric] = _number(value)
        metrics = [m for m in scores if not m.endswith("_stderr")]
        metric = next((m for m in ("acc_norm", "acc") if m in metrics), metrics[0] if metrics else None)
        golds, rows = [], []
        for task_name, logged in (out.get("samples") or {}).items():
            task = loaded["tasks"][task_name]
            for sample in logged:  # lm-eval logs each document under its index in the whole set
                row = {"task": task_name, "doc_index": sample["doc_id"], "input": sample["arguments"][0][0]}
                if task.OUTPUT_TYPE == "multiple_choice":
                    gold, choices = _gold_and_choices(task, sample["doc"])
                    golds.append((gold, choices))
                    lls = [r[0] for r in sample["filtered_resps"]]
                    row.update(choices=choices, reference=gold, prediction=max(range(len(lls)), key=lls.__getitem__))
                row["score"] = sample.get(metric) if metric else None
                rows.append(row)
        higher = (out.get("higher_is_better") or {}).get(name, {}).get(metric, True) if metric else True
        return BenchmarkScore(task=name, metric=metric, value=scores.get(metric) if metric else None,
                              stderr=scores.get(f"{metric}_stderr") if metric else None, scores=scores,
                              chance_level=chance_level(golds), num_examples=len(rows),
                              higher_is_better=bool(higher), rows=rows)


def _zero_shot(loaded: dict[str, Any]) -> dict[str, Any]:
    """Tasks as simple_evaluate would set them up: zero-shot unless the config says otherwise, and a fixed seed
    for any few-shot sampling (a generator of the task's own, not the global one)."""
    for task in loaded["tasks"].values():
        if task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=1234)
    return {"loaded": loaded, "tasks": loaded["tasks"]}


@contextlib.contextmanager
def lm_eval_model(model, tokenizer, *, batch_size: int, generates: bool):
    """lm-eval's ``HFLM`` around a model in memory, generating as tunelab's own evaluation does: a prompt-learning
    adapter's cache bridged to peft (``inference.prompt_learning_cache_bridge``) and, where the tasks generate,
    a prompt-tuned causal LM given one document a batch (lm-eval left-pads a batch, which moves such a model's
    answers: ``inference.padding_moves_soft_prompt``). Log-likelihood scoring needs neither: lm-eval pads those
    batches on the right and drops the virtual tokens' logits itself."""
    from lm_eval.models.huggingface import HFLM

    from tunelab import inference

    if generates and inference.padding_moves_soft_prompt(model):
        batch_size = 1
    with inference.prompt_learning_cache_bridge(model):
        yield HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def benchmark_probe(spec: str) -> BenchmarkProbe:
    """The probe a ``--retention`` name asks for (not yet bound to data: see :meth:`BenchmarkProbe.load`)."""
    require_lm_eval(spec)
    name, size = split_size(spec)
    if name.startswith(LM_EVAL_PREFIX) and not name[len(LM_EVAL_PREFIX):]:
        raise TunelabError(f"--retention {spec}: name an lm-eval task after {LM_EVAL_PREFIX}, e.g. "
                           f"{LM_EVAL_PREFIX}hellaswag")
    if size is not None and not (size.isdigit() and int(size) > 0):
        raise TunelabError(f"--retention {spec}: after @ comes this probe's number of examples, a positive whole "
                           f"number (e.g. {name}@64)")
    return BenchmarkProbe(spec, own_limit=int(size) if size is not None else None)


def no_skill_floor(before: BenchmarkScore | dict[str, Any]) -> tuple[float | None, str | None]:
    """(score the base must exceed to show the skill, why) for retention.compare_scores: chance level plus 1.96
    standard errors, i.e. the base's 95% interval must clear chance. Without a chance level (not multiple
    choice), no floor."""
    get = before.get if isinstance(before, dict) else lambda k: getattr(before, k)
    chance, stderr = get("chance_level"), get("stderr")
    if chance is None:
        return None, None
    margin = Z95 * (stderr or 0.0)
    # "not ... above", not "within": a base below chance (BoolQ's majority answer is 62%) is no closer to it
    return chance + margin, (f"not 1.96 standard errors ({margin:.3f}) above chance level {chance:.3f} on "
                             f"{get('num_examples')} examples")
