"""The Python API: the same options as the CLI (checked both ways), identical results, project errors."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json

import pytest
import yaml

import tunelab
from tunelab.cli import main
from tunelab.config import (CompareOptions, EvalOptions, ExportOptions, GenerateOptions, MergeOptions, PushOptions,
                            TrainOptions)
from tunelab.options import add_dataclass_arguments

from conftest import ALPACA_ROWS, write_jsonl


def _cli_flags(cls) -> set[str]:
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, cls)
    flags = set()
    for action in parser._actions:
        if isinstance(action, argparse._StoreConstAction) and action.const is False:
            continue  # a negation of a bool field (--no_bf16 = --bf16 false), not an option of its own
        # the field's own flag comes first; others are aliases of it (--outfile for --output, llama.cpp's name)
        flags.update(s[2:] for s in action.option_strings[:1] if s.startswith("--") and s != "--help")
        if not action.option_strings and action.dest != "help":
            flags.add(action.dest)
    return flags


def _api_names(fn) -> set[str]:
    """Names the function documents as parameters (its signature plus the options it takes as keywords)."""
    doc = inspect.getdoc(fn)
    names = {line.split(" : ")[0] for line in doc.splitlines() if " : " in line and not line.startswith(" ")}
    return names | {p for p in inspect.signature(fn).parameters if p not in ("options", "overrides")}


@pytest.mark.parametrize("fn, cls, aliases, cli_only", [
    (tunelab.train, TrainOptions, {"model", "dataset"}, {"config"}),
    (tunelab.evaluate, EvalOptions, {"model", "dataset"}, {"config"}),
    (tunelab.compare, CompareOptions, set(), set()),
    (tunelab.generate, GenerateOptions, {"model", "adapters"}, {"config"}),
    (tunelab.merge, MergeOptions, {"model"}, {"config"}),
    (tunelab.export_gguf, ExportOptions, {"model"}, {"config"}),
    (tunelab.push, PushOptions, {"model"}, {"config"}),
])
def test_every_cli_flag_is_an_api_option_and_back(fn, cls, aliases, cli_only):
    flags = _cli_flags(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    assert flags == fields, "the CLI is generated from the options dataclass"
    api = _api_names(fn)
    assert flags - cli_only <= api, f"CLI flags missing from the API: {sorted(flags - cli_only - api)}"
    assert api - aliases <= flags, f"API options missing from the CLI: {sorted(api - aliases - flags)}"


def test_estimate_options_match_train_options():
    from tunelab.config import EstimateOptions

    train_flags = _cli_flags(TrainOptions)
    estimate_flags = _cli_flags(EstimateOptions)
    assert train_flags <= estimate_flags, "estimate must accept every train flag"
    assert "per_device_train_batch_size" in _api_names(tunelab.estimate)


def test_api_and_cli_give_identical_results(tiny_llama, tmp_path, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", ALPACA_ROWS)
    common = dict(method="lora", max_steps=3, per_device_train_batch_size=2, max_seq_length=48, lora_r=2,
                  learning_rate=1e-3, save_steps=100, logging_steps=1, use_cpu=True, seed=3)
    api = tunelab.train(model=str(tiny_llama), dataset=str(data), output_dir=str(tmp_path / "api"), **common)
    flags = [x for k, v in common.items() for x in (f"--{k}", str(v))]
    assert main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(data),
                 "--output_dir", str(tmp_path / "cli"), *flags]) == 0
    capsys.readouterr()
    a = json.loads((tmp_path / "api" / "train_results.json").read_text())
    c = json.loads((tmp_path / "cli" / "train_results.json").read_text())
    varying = {"train_seconds", "train_tokens_per_second", "peak_memory_bytes", "mean_train_loss",
               "train_cpu_wait_share"}
    assert {k: v for k, v in a.items() if k not in varying} == {k: v for k, v in c.items() if k not in varying}
    assert (tmp_path / "api" / "adapter_model.safetensors").read_bytes() == \
        (tmp_path / "cli" / "adapter_model.safetensors").read_bytes()
    ya = yaml.safe_load((tmp_path / "api" / "tunelab_config.yaml").read_text())
    yc = yaml.safe_load((tmp_path / "cli" / "tunelab_config.yaml").read_text())
    assert {k: v for k, v in ya.items() if k != "output_dir"} == {k: v for k, v in yc.items() if k != "output_dir"}
    assert api.results_path == tmp_path / "api" / "train_results.json"


def test_bad_api_options_raise_the_project_error_not_systemexit(tiny_llama, tmp_path):
    with pytest.raises(tunelab.TunelabError, match="unknown option 'lora_rank'"):
        tunelab.train(model=str(tiny_llama), dataset="x.jsonl", output_dir=str(tmp_path), lora_rank=8)
    with pytest.raises(tunelab.TunelabError, match="expects int"):
        tunelab.train(model=str(tiny_llama), dataset="x.jsonl", output_dir=str(tmp_path), max_steps="many")
    with pytest.raises(tunelab.TunelabError, match="no such file"):
        tunelab.train(model=str(tiny_llama), dataset=str(tmp_path / "missing.jsonl"), output_dir=str(tmp_path / "o"))
    with pytest.raises(tunelab.TunelabError, match="nothing to evaluate"):
        tunelab.evaluate(model=str(tiny_llama), output_dir=str(tmp_path / "e"))
    with pytest.raises(tunelab.TunelabError, match="no results.jsonl"):
        tunelab.Comparison.load(tmp_path)


@pytest.mark.xdist_group("compare")  # shares the session's comparison with tests/compare
def test_comparison_load_round_trips(comparison):
    out, _ = comparison
    loaded = tunelab.Comparison.load(out)
    df = loaded.table()
    assert list(df["label"]) == ["base", "full", "lora", "ia3"]
    records = {r["label"]: r for r in loaded.records}
    for _, row in df.iterrows():
        rec = records[row["label"]]
        assert row["status"] == rec["status"] == "ok"
        assert row["headline_value"] == rec["headline_value"]
        assert row["drift_kl"] == rec["retention"]["drift"]["kl_divergence"]
    fig = loaded.plot("tradeoff")
    assert fig.axes and fig.axes[0].collections, "the trade-off plot has points"
    html = loaded._repr_html_()
    assert "base (untouched)" in html and "data:image/png;base64," in html
    assert loaded.report_path == out / "report.html" and loaded.report_path.is_file()
    with pytest.raises(tunelab.TunelabError, match="choose one of"):
        loaded.plot("pie")


def test_python_dash_m_works():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tunelab", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "tunelab train" not in done.stderr and "compare" in done.stdout


def test_estimate_api(tiny_llama):
    est = tunelab.estimate(model=str(tiny_llama), method="lora", per_device_train_batch_size=1, max_seq_length=16)
    assert est.peak_bytes == sum(est.breakdown.values()) > 0
    assert est.fits(80) and not est.fits(est.peak_bytes / 2**30 / 10 - 1)


def test_an_api_comparison_shows_its_progress_unless_logging_is_configured(tiny_llama, tmp_path):
    """In a notebook, tunelab.compare() says which run of how many is done, as the command does; a user who set up
    logging keeps their own configuration."""
    import subprocess
    import sys

    from conftest import tiny_recipe

    recipe = tiny_recipe(tmp_path, tiny_llama, [{"method": "lora", "lora_r": 2}])
    call = (f"import tunelab; tunelab.compare({str(recipe)!r}, output_dir={str(tmp_path / 'out')!r}, "
            "device='cpu')")
    shown = subprocess.run([sys.executable, "-c", call], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "[tunelab] 2 of 2 runs done" in shown.stderr and "[tunelab] lora seed 0: training" in shown.stderr
    configured = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(level=logging.WARNING); "
                                 + call], capture_output=True, text=True)
    assert configured.returncode == 0, configured.stderr[-3000:]
    assert "already done" not in configured.stderr and "[tunelab]" not in configured.stderr
