"""`tunelab train` from the command line: bad input gets one clear line and exit code 2, nothing is written;
YAML configs layer under flags; an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tunelab.cli import main

from conftest import ALPACA_ROWS, CLASSIFICATION_ROWS, write_jsonl

FAST = ["--max_steps", "2", "--per_device_train_batch_size", "2", "--max_seq_length", "48", "--lora_r", "2",
        "--save_steps", "100", "--logging_steps", "1", "--use_cpu"]


def run_cli(args, capsys):
    code = main(["train", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


BAD_DATA = {
    "unreadable_json": ("bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n',
                        ["bad.jsonl line 2", "not valid JSON"]),
    "missing_columns": ("cols.jsonl", '{"foo": "a", "bar": "b"}\n', ["cannot tell the data format", "foo, bar"]),
    "empty_file": ("empty.jsonl", "", ["no rows", "empty"]),
    "wrong_type": ("types.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": {"x": 1}}\n',
                   ["types.jsonl line 2", "'output' should be text"]),
    "missing_value": ("nulls.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": null, "output": "x"}\n',
                      ["nulls.jsonl line 2", "'instruction' is empty"]),
    "csv_extra_fields": ("rows.csv", "prompt,completion\na,b\nc,d,e\n", ["rows.csv line 3", "fields"]),
    # STS-B's own sts-train.csv: tab-separated, no header, named .csv
    "csv_with_tabs": ("sts.csv", "main\tMSRvid\t2012test\t0001\t5.000\tA plane.\tAn air plane.\n"
                      "main\tMSRvid\t2012test\t0004\t3.800\tA man, a flute.\tA man.\n",
                      ["sts.csv line 1", "tab-separated", ".tsv"]),
    # the Hub's translation rows: the direction is the user's to say
    "translation_pairs": ("pairs.jsonl", '{"translation": {"en": "A dog.", "fr": "Un chien."}}\n',
                          ["cannot tell the data format from the columns en, fr",
                           "--input_columns en --target_column fr (or the other way round)"]),
}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_bad_data_is_one_clear_line(case, tiny_llama, tmp_path, capsys):
    name, text, needles = BAD_DATA[case]
    data = _bad(tmp_path, name, text)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", data,
                                 "--output_dir", out, *FAST], capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ")
    for needle in needles:
        assert needle in line, line
    assert "Traceback" not in err
    assert not out.exists(), "nothing may be written for bad input"


def test_a_folder_without_a_training_file_says_what_it_holds(tiny_llama, tmp_path, capsys):
    d = tmp_path / "corpus"
    d.mkdir()
    for name in ("corpus.en", "corpus.fr", "train.md", "train.txt"):  # .md and .txt name no language
        (d / name).write_text("a line\n", encoding="utf-8")
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", d, "--output_dir", out,
                            *FAST], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "no file named train.jsonl" in line
    assert "(it holds corpus.en, corpus.fr, train.md, train.txt)" in line
    assert not out.exists()


EN = ["A dog runs.", "Two men talk.", "A girl sings.", "The sun is up.", "A cat sleeps.", "Kids play ball."]
FR = ["Un chien court.", "Deux hommes parlent.", "Une fille chante.", "Le soleil est levé.", "Un chat dort.",
      "Des enfants jouent au ballon."]


def _parallel_folder(tmp_path, train_fr=FR):
    """Multi30k's layout: train.en beside train.fr, val.en beside val.fr, one sentence per line."""
    d = tmp_path / "multi30k"
    d.mkdir()
    for name, lines in (("train.en", EN), ("train.fr", train_fr), ("val.en", EN[:2]), ("val.fr", FR[:2]),
                        ("test_2016_flickr.en", EN[:1])):
        (d / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def test_parallel_text_files_train_in_the_direction_the_columns_say(tiny_llama, tmp_path, capsys):
    d = _parallel_folder(tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", d,
                                 "--input_columns", "en", "--target_column", "fr", "--output_dir", out, *FAST], capsys)
    assert code == 0, err
    line = next(line for line in err.splitlines() if "[tunelab] data:" in line)
    assert "multi30k: 6 training rows read as columns" in line
    assert line.endswith("2 validation rows")  # val.en / val.fr, not the test files
    from tunelab.data import sources
    from tunelab.data.formats import normalise
    train, evals = sources.load_splits(str(d))
    _, examples = normalise(evals, input_columns=["en"], target_column="fr")
    assert [(ex.prompt_messages[-1]["content"], ex.reference) for ex in examples] == list(zip(EN[:2], FR[:2]))
    assert train.locators[2] == "train.en + train.fr line 3"


def test_eval_reads_the_columns_the_run_trained_on(tiny_llama, tmp_path, capsys):
    """`tunelab eval --adapter RUN` on the run's own data names no columns again (as it takes the run's template and
    system prompt); data without those columns is read as it would be without the run."""
    d = _parallel_folder(tmp_path)
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", d,
                            "--input_columns", "en", "--target_column", "fr", "--output_dir", out, *FAST], capsys)
    assert code == 0, err
    common = ["eval", "--adapter", str(out), "--task", "translation", "--max_new_tokens", "4", "--use_cpu"]
    code = main([*common, "--dataset_name_or_path", str(d), "--eval_split", "val",
                 "--output_dir", str(tmp_path / "e1")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "the run's --input_columns en --target_column fr" in err
    rows = [json.loads(x) for x in (tmp_path / "e1" / "predictions.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == FR[:2]
    other = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "Hello.", "completion": "Bonjour."}])
    code = main([*common, "--dataset_name_or_path", str(other), "--output_dir", str(tmp_path / "e2")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "the run's --input_columns" not in err
    rows = [json.loads(x) for x in (tmp_path / "e2" / "predictions.jsonl").read_text().splitlines()]
    assert [r["reference"] for r in rows] == ["Bonjour."]


def test_parallel_files_of_different_lengths_are_one_line(tiny_llama, tmp_path, capsys):
    d = _parallel_folder(tmp_path, train_fr=FR[:5])
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", d,
                            "--input_columns", "en", "--target_column", "fr", "--output_dir", out, *FAST], capsys)
    line = err.strip().splitlines()[-1]
    assert code == 2 and "line counts differ (train.en 6, train.fr 5)" in line, line
    assert not out.exists()


def test_label_outside_the_training_label_set(tiny_bert, tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    write_jsonl(d / "train.jsonl", CLASSIFICATION_ROWS)
    write_jsonl(d / "validation.jsonl", [{"text": "a new one", "label": "neutral"}])
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_bert, "--dataset_name_or_path", d, "--output_dir", out,
                            *FAST], capsys)
    assert code == 2
    assert "validation.jsonl line 1" in err and "'neutral'" in err and "label set" in err
    assert not out.exists()


def test_continuous_labels_are_not_classes(tiny_bert, tmp_path, capsys):
    """Similarity scores (STS-B's 0-5) are not a label set: 66 classes of them would train and mean nothing."""
    rows = [{"sentence1": f"a {i}", "sentence2": f"b {i}", "label": label}
            for i, label in enumerate(["5.000", "3.800", "0.143", "2.000", "4.250", "1.600", "2.750", "0.400",
                                       "3.200", "4.600", "1.250"])]
    data = write_jsonl(tmp_path / "sts.jsonl", rows)
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_bert, "--dataset_name_or_path", data, "--output_dir", out,
                            *FAST], capsys)
    assert code == 2, err
    line = err.strip().splitlines()[-1]
    assert "sts.jsonl line 2" in line and "'3.800'" in line and "continuous" in line, line
    assert not out.exists()


@pytest.mark.parametrize("labels", [["0.0", "1.0", "1.0", "0.0"], ["0.5", "1.0", "1.5", "4.5", "5.0"]])
def test_whole_numbers_written_as_decimals_and_half_stars_are_classes(labels, tiny_bert, tmp_path, capsys):
    rows = [{"text": f"text {i}", "label": label} for i, label in enumerate(labels)]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_bert, "--dataset_name_or_path", data, "--output_dir", out,
                            *FAST], capsys)
    assert code == 0, err
    results = json.loads((out / "train_results.json").read_text(encoding="utf-8"))
    assert results["data"]["labels"] == sorted(set(labels), key=float)


def test_a_head_with_another_number_of_labels_is_replaced(tiny_bert, tmp_path, capsys):
    """tiny_bert's saved head has 2 labels; data with 3 trains a head of its own (as run_glue's
    --ignore_mismatched_sizes), says so, and the adapter evaluates on that base: no transformers traceback."""
    from tunelab.cli import main as cli

    data = write_jsonl(tmp_path / "three.jsonl", [{"text": f"text {i}", "label": "abc"[i % 3]} for i in range(6)])
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_bert, "--dataset_name_or_path", data, "--output_dir", out,
                            "--method", "lora", *FAST], capsys)
    assert code == 0, err
    assert "its classification head has 2 labels (LABEL_0, LABEL_1), this run's has 3" in err
    code = cli(["eval", "--model_name_or_path", str(tiny_bert), "--adapter", str(out), "--task", "classification",
                "--dataset_name_or_path", str(data), "--output_dir", str(tmp_path / "eval"), "--use_cpu"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert json.loads((tmp_path / "eval" / "eval_results.json").read_text())["num_examples"] == 6


def _load_reports(load) -> list[str]:
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    # (another test in this process may have set transformers' verbosity: the report is a warning)
    logger, parent, keep = logging.getLogger("transformers.modeling_utils"), logging.getLogger("transformers"), Keep()
    levels = logger.level, parent.level
    logger.setLevel(logging.WARNING)
    parent.setLevel(logging.WARNING)
    logger.addHandler(keep)
    try:
        load()
    finally:
        logger.removeHandler(keep)
        logger.setLevel(levels[0])
        parent.setLevel(levels[1])
    return [m for m in keep.messages if "LOAD REPORT" in m]


def test_transformers_load_report_stays_only_where_it_tells_something(tiny_bert, tmp_path):
    """A head the base lacks is reported by transformers ("MISSING ... newly initialized"): true when training it,
    false when an adapter brings the head it trained (modules_to_save), where it read as if the evaluation used a
    random head. A head of another size tunelab has said it leaves out is not reported twice."""
    from transformers import BertForSequenceClassification

    from tunelab.model_setup import label_kwargs
    from tunelab.models import load_model

    headless = tmp_path / "headless"
    BertForSequenceClassification.from_pretrained(tiny_bert).bert.save_pretrained(headless)
    two = label_kwargs(["neg", "pos"])
    missing = _load_reports(lambda: load_model(str(headless), "seq_cls", **two))
    assert len(missing) == 1 and "classifier.weight" in missing[0] and "MISSING" in missing[0]
    assert _load_reports(lambda: load_model(str(headless), "seq_cls", supplied=("classifier", "score"), **two)) == []
    assert _load_reports(lambda: load_model(str(tiny_bert), "seq_cls", **label_kwargs("abc"))) == []
    # a key outside what the adapter brings is still reported
    other = _load_reports(lambda: load_model(str(headless), "seq_cls", supplied=("score",), **two))
    assert len(other) == 1 and "classifier.bias" in other[0]


def test_a_data_error_comes_before_the_configuration(tiny_llama, tmp_path, capsys):
    """The effective configuration (some 80 lines) is printed once the inputs are checked, so a data error is what
    the user sees; a good run prints it."""
    bad = _bad(tmp_path, "bad.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n')
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", bad,
                            "--output_dir", tmp_path / "out", *FAST], capsys)
    assert code == 2 and "bad.jsonl line 2" in err
    assert "effective configuration" not in err


def test_jsonl_with_a_byte_order_mark_trains(tiny_llama, tmp_path, capsys):
    """Several Windows editors save UTF-8 with a byte-order mark; it is not part of the first row."""
    data = tmp_path / "bom.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS), encoding="utf-8-sig")
    assert data.read_bytes().startswith(b"\xef\xbb\xbf")
    out = tmp_path / "out"
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", data, "--output_dir", out,
                            *FAST], capsys)
    assert code == 0, err
    results = json.loads((out / "train_results.json").read_text(encoding="utf-8"))
    assert results["data"]["format"] == "alpaca" and results["train_samples"] > 0
    assert "effective configuration" in err  # (printed on a run that goes ahead)


def _flags_case(tiny_llama, tiny_t5, data, out):
    base = ["--dataset_name_or_path", data, "--output_dir", out, *FAST]
    adapter = Path(out).parent / "an-adapter"
    adapter.mkdir(exist_ok=True)
    (adapter / "adapter_config.json").write_text("{}", encoding="utf-8")
    return {
        "model_is_an_adapter": (["--model_name_or_path", str(adapter), *base],
                                [f"--model_name_or_path {adapter}: is a PEFT adapter", f"--adapter {adapter}"]),
        "unknown_method": (["--model_name_or_path", tiny_llama, "--method", "lorax", *base],
                           ["--method lorax", "unknown method", "lora"]),
        "targets_match_nothing": (["--model_name_or_path", tiny_llama, "--lora_target_modules", "nonexistent_proj",
                                   *base], ["--lora_target_modules nonexistent_proj", "matches no module",
                                            "q_proj"]),
        "model_path_missing": (["--model_name_or_path", "./no/such/model", *base],
                               ["--model_name_or_path ./no/such/model", "no such directory"]),
        "bf16_and_fp16": (["--model_name_or_path", tiny_llama, "--bf16", "--fp16", *base], ["--bf16 and --fp16"]),
        "full_on_4bit": (["--model_name_or_path", tiny_llama, "--method", "full", "--use_4bit", *base],
                         ["--method full cannot train quantized weights"]),
        "early_stopping_without_eval": (["--model_name_or_path", tiny_llama, "--early_stopping_patience", "2",
                                         *base], ["--early_stopping_patience needs --eval_steps"]),
        "prompt_init_text_missing": (["--model_name_or_path", tiny_llama, "--method", "prompt_tuning",
                                      "--prompt_tuning_init", "text", *base], ["--prompt_tuning_init_text"]),
        "method_not_for_kind": (["--model_name_or_path", tiny_t5, "--method", "llama_adapter", *base],
                                ["llama_adapter does not support seq2seq_lm"]),
        "unknown_flag": (["--model_name_or_path", tiny_llama, "--lora_rank", "8", *base],
                         ["unrecognized arguments: --lora_rank"]),
        "bad_number": (["--model_name_or_path", tiny_llama, "--learning_rate", "fast", *base],
                       ["--learning_rate", "invalid float value"]),
    }


CASES = ["model_is_an_adapter", "unknown_method", "targets_match_nothing", "model_path_missing", "bf16_and_fp16",
         "full_on_4bit", "early_stopping_without_eval", "prompt_init_text_missing", "method_not_for_kind",
         "unknown_flag", "bad_number"]


@pytest.mark.parametrize("case", CASES)
def test_bad_flags_are_one_clear_line(case, tiny_llama, tiny_t5, alpaca_file, tmp_path, capsys):
    out = tmp_path / "out"
    args, needles = _flags_case(tiny_llama, tiny_t5, alpaca_file, out)[case]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in line, line
    assert not out.exists()


def test_output_dir_with_a_different_run_is_refused(tiny_llama, alpaca_file, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--model_name_or_path", tiny_llama, "--dataset_name_or_path", alpaca_file, "--output_dir", out, *FAST]
    assert run_cli(args, capsys)[0] == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    code, _, err = run_cli([*args, "--lora_r", "4"], capsys)
    assert code == 2 and "holds a different run" in err and "--overwrite_output_dir" in err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # The same command again is recognised as finished: nothing is redone.
    code, stdout, _ = run_cli(args, capsys)
    assert code == 0 and "already holds this finished run" in stdout
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # --overwrite_output_dir replaces it.
    code, _, _ = run_cli([*args, "--lora_r", "4", "--overwrite_output_dir"], capsys)
    assert code == 0
    assert yaml.safe_load((out / "tunelab_config.yaml").read_text())["lora_r"] == 4


def test_output_dir_with_foreign_files_is_never_deleted(tiny_llama, alpaca_file, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", alpaca_file,
                            "--output_dir", out, "--overwrite_output_dir", *FAST], capsys)
    assert code == 2 and "not a tunelab run" in err
    assert (out / "notes.txt").read_text() == "precious"


def test_yaml_config_with_flag_override(tiny_llama, alpaca_file, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"model_name_or_path": str(tiny_llama), "dataset_name_or_path": str(alpaca_file),
                                      "method": "lora", "lora_r": 2, "lora_alpha": 16, "max_steps": 2,
                                      "per_device_train_batch_size": 2, "max_seq_length": 48, "use_cpu": True,
                                      "learning_rate": 1e-3}))
    out = tmp_path / "out"
    code, _, err = run_cli(["--config", config, "--output_dir", out, "--lora_r", "3"], capsys)
    assert code == 0, err
    saved = yaml.safe_load((out / "tunelab_config.yaml").read_text())
    assert saved["lora_r"] == 3            # the flag wins over the file
    assert saved["lora_alpha"] == 16       # the file wins over the default
    assert saved["learning_rate"] == 1e-3
    assert saved["warmup_ratio"] == 0.03   # method-aware default for a PEFT method
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["r"] == 3 and adapter["lora_alpha"] == 16
    # The saved effective config reproduces the run when given back as --config.
    assert yaml.safe_load(yaml.safe_dump(saved)) == saved


def test_bad_yaml_config(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model_name_or_path: [unclosed\n")
    code, _, err = run_cli(["--config", config], capsys)
    assert code == 2 and "bad.yaml" in err and "not valid YAML" in err
    config.write_text("learning_rat: 0.1\n")
    code, _, err = run_cli(["--config", config], capsys)
    assert code == 2 and "unknown option(s) learning_rat" in err


def test_method_aware_defaults(tiny_llama, alpaca_file, tmp_path, capsys):
    out = tmp_path / "full"
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", alpaca_file, "--output_dir",
                            out, "--no_peft", *FAST], capsys)
    assert code == 0, err
    saved = yaml.safe_load((out / "tunelab_config.yaml").read_text())
    assert saved["method"] == "full" and saved["learning_rate"] == 5e-5 and saved["warmup_ratio"] == 0.1
    assert "learning_rate=5e-05" in err  # the chosen defaults are printed at start
    results = json.loads((out / "train_results.json").read_text())
    assert results["defaults_chosen"] == {"learning_rate": 5e-5, "warmup_ratio": 0.1}


def test_resume_continues_the_step_count(tiny_llama, alpaca_file, tmp_path, capsys):
    """An interrupted run (its last checkpoint and final files gone) resumes from the checkpoint it has and ends
    with the same losses as the uninterrupted run."""
    out = tmp_path / "out"
    args = ["--model_name_or_path", tiny_llama, "--dataset_name_or_path", alpaca_file, "--output_dir", out,
            "--max_steps", "4", "--save_steps", "2", "--per_device_train_batch_size", "2", "--max_seq_length", "48",
            "--logging_steps", "1", "--learning_rate", "1e-2", "--use_cpu"]
    assert run_cli(args, capsys)[0] == 0
    full_run = json.loads((out / "train_results.json").read_text())
    # Simulate a crash after step 2: only checkpoint-2 and the config survive.
    for p in list(out.iterdir()):
        if p.name not in ("checkpoint-2", "tunelab_config.yaml"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    code, _, err = run_cli(args, capsys)
    assert code == 0 and "resuming" in err
    resumed = json.loads((out / "train_results.json").read_text())
    assert resumed["global_step"] == 4
    assert [p["step"] for p in resumed["loss_curve"]] == [1, 2, 3, 4]
    for a, b in zip(resumed["loss_curve"], full_run["loss_curve"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # An explicit checkpoint works too.
    (out / "train_results.json").unlink()
    code, _, err = run_cli([*args, "--resume_from_checkpoint", out / "checkpoint-2"], capsys)
    assert code == 0
    assert json.loads((out / "train_results.json").read_text())["global_step"] == 4


def test_console_script_prints_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tunelab", "train", "--model_name_or_path", "x",
                           "--dataset_name_or_path", str(tmp_path / "missing.jsonl"), "--output_dir",
                           str(tmp_path / "o")], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in done.stderr


def test_help_documents_every_flag_and_default():
    from tunelab.config import TrainOptions
    from tunelab.options import fields_of

    done = subprocess.run([sys.executable, "-m", "tunelab", "train", "--help"], capture_output=True, text=True)
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for f in fields_of(TrainOptions):
        assert f"--{f.name}" in text
    assert "default by method: 5e-5 for full; 2e-4 for lora, qlora, dora" in text  # from the methods
    assert "0.1 for full, 0.03 for PEFT methods" in text


def test_the_data_read_is_stated(tiny_llama, alpaca_file, classification_file, tmp_path, capsys):
    """Before training, one line says what was read: how many rows, in which detected format (classification: its
    labels), with which template, how many tokens the loss covers, and the validation rows (or how to get some)."""
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", classification_file,
                            "--validation_split", "0.25", "--output_dir", tmp_path / "cls", *FAST], capsys)
    assert code == 0, err
    line = next(line for line in err.splitlines() if "[tunelab] data:" in line)
    assert "classes.jsonl: 3 training rows read as classification" in line
    assert "2 labels (negative, positive)" in line and "the loss covers" in line
    assert "1 validation row " in line or line.endswith("1 validation row")
    code, _, err = run_cli(["--model_name_or_path", tiny_llama, "--dataset_name_or_path", alpaca_file,
                            "--output_dir", tmp_path / "alpaca", *FAST], capsys)
    assert code == 0, err
    line = next(line for line in err.splitlines() if "[tunelab] data:" in line)
    assert "alpaca.jsonl: 4 training rows read as alpaca" in line and "labels" not in line
    assert "no validation rows (--validation_split carves some from the training rows)" in line
