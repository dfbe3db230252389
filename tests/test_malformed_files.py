"""Files tunelab reads back (a run's saved options, a recipe, --config, a comparison's results.jsonl, an evaluation's
predictions): a malformed one is one line naming the file and the line, exit 2, no traceback; never a yaml, JSON or
Unicode exception."""

from __future__ import annotations

import json

import pytest

from tunelab.cli import main

MALFORMED = {
    "syntax": ("method: [lora\n", "line 2: not valid YAML"),
    "not a mapping": ("- lora\n- full\n", "expected a mapping of names to values, got list"),
    "not UTF-8": (b"method: \xff\xfe\n", "not UTF-8 text"),
}


def _write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def _adapter(tmp_path, run_config):
    folder = tmp_path / "adapter"
    _write(folder / "adapter_config.json", json.dumps({"peft_type": "LORA", "base_model_name_or_path": "x"}))
    _write(folder / "tunelab_config.yaml", run_config)
    return folder


def _merge(tmp_path, content):
    folder = _adapter(tmp_path, content)
    return ["merge", "--model_name_or_path", "smollm2-135m", "--adapter", folder, "--output_dir", tmp_path / "out"], \
        "tunelab_config.yaml"


def _push_card(tmp_path, content):
    import torch
    from safetensors.torch import save_file

    folder = _adapter(tmp_path, content)
    save_file({"w": torch.zeros(1)}, folder / "adapter_model.safetensors")
    return ["push", "--model_name_or_path", folder, "--repo_id", "me/x", "--dry_run"], "tunelab_config.yaml"


def _config(tmp_path, content):
    return ["train", "--config", _write(tmp_path / "opts.yaml", content)], "--config"


def _recipe(tmp_path, content):
    return ["compare", "--recipe", _write(tmp_path / "r.yaml", content), "--output_dir", tmp_path / "cmp"], "recipe"


PLACES = {"merge --adapter": _merge, "push (model card)": _push_card, "train --config": _config,
          "compare --recipe": _recipe}


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_yaml_file_is_one_line_exit_2(tmp_path, capsys, place, kind):
    content, needle = MALFORMED[kind]
    args, names = PLACES[place](tmp_path, content)
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    line = err.strip()
    assert names in line and needle.split(": ")[-1] in line, line
    if kind == "syntax":
        assert "line 2" in line, line
    assert not (tmp_path / "out").exists() and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(("content", "needle"), [
    ('{"label": "broken\n', "results.jsonl line 2: not valid JSON"),
    (b"\xff\xfe\n", "results.jsonl: not UTF-8 text"),
])
def test_a_malformed_results_jsonl_is_one_line_exit_2(tmp_path, capsys, content, needle):
    out = tmp_path / "cmp"
    good = b'{"label": "x"}\n' if isinstance(content, bytes) else '{"label": "x"}\n'
    _write(out / "results.jsonl", good + content if isinstance(content, bytes) else good + content)
    before = (out / "results.jsonl").read_bytes()
    code = main(["report", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert needle in err and "fix or" in err, err
    assert (out / "results.jsonl").read_bytes() == before and not (out / "report.md").exists()


def test_read_jsonl_numbers_lines_and_skips_blank_ones(tmp_path):
    from tunelab import run_files

    path = _write(tmp_path / "rows.jsonl", '{"a": 1}\n\n[2]\n')
    assert run_files.read_jsonl(path) == [(1, {"a": 1}), (3, [2])]


@pytest.mark.parametrize(("config", "needle"), [("{not json", "adapter_config.json is not valid JSON"),
                                                ("[1, 2]", "adapter_config.json holds a list")])
def test_a_malformed_adapter_config_is_one_line_exit_2(tmp_path, capsys, config, needle):
    folder = _adapter(tmp_path, "method: lora\n")
    _write(folder / "adapter_config.json", config)
    code = main(["merge", "--adapter", str(folder), "--output_dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"--adapter {folder}: {needle}" in err, err
    assert not (tmp_path / "out").exists()
