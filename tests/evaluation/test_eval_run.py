"""`tunelab eval` on tiny real models: retention before/after, adapter-disabled equals base, the drift probe,
predictions, and bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tunelab import inference
from tunelab.cli import main
from tunelab.config import EvalOptions, TrainOptions
from tunelab.evaluation import retention
from tunelab.evaluation.probes import ProbeContext, drift_prompts
from tunelab.evaluation.run import evaluate
from tunelab.training import train

from conftest import ALPACA_ROWS, write_jsonl

QA_ROWS = [{"question": "What is the capital of France?", "answer": "Paris"},
           {"question": "Count the books.", "answer": "SELECT count(*) FROM books"},
           {"question": "Translate to French: the cat", "answer": "le chat"}]


@pytest.fixture(scope="module")
def trained_adapter(tiny_llama, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapter")
    data = write_jsonl(d / "train.jsonl", ALPACA_ROWS)
    opts = TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data), output_dir=str(d / "out"),
                        method="lora", max_steps=6, per_device_train_batch_size=4, max_seq_length=64, lora_r=4,
                        learning_rate=2e-2, warmup_ratio=0.0, save_steps=100, seed=0, use_cpu=True)
    return train(opts).output_dir


@pytest.fixture
def qa_file(tmp_path):
    return write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)


def _eval(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "eval"), max_new_tokens=8, per_device_eval_batch_size=2,
                    probe_samples=6, use_cpu=True)
    return evaluate(EvalOptions(**{**defaults, **kw}))


def test_adapter_eval_reports_before_after_and_disabled_equals_base(tiny_llama, trained_adapter, qa_file,
                                                                    tmp_path):
    result = _eval(tmp_path, model_name_or_path=str(tiny_llama), adapter=str(trained_adapter),
                   task="language_modeling", dataset_name_or_path=str(qa_file),
                   retention=[f"language_modeling:{qa_file}", "drift"])
    r = result.results
    assert r["headline_metric"] == "perplexity" and r["num_examples"] == 3 and r["metrics"]["perplexity"] > 1
    probe = r["retention"][f"language_modeling:{qa_file}"]
    # 'before' is the untouched base, measured on its own in the tuned model's dtype: recompute it independently.
    base = inference.load(str(tiny_llama), None, use_cpu=True, template=r["template"], torch_dtype=r["torch_dtype"])
    from tunelab.evaluation.probes import load_task_examples
    from tunelab.evaluation.tasks import TaskSettings, run_task

    base_value = run_task("language_modeling", base, load_task_examples("language_modeling", str(qa_file)),
                          TaskSettings(batch_size=2)).value
    assert probe["before"] == pytest.approx(base_value, rel=1e-6)
    assert probe["after"] != pytest.approx(probe["before"], rel=1e-3), "training changed nothing?"
    assert probe["retention_ratio"] == pytest.approx(probe["before"] / probe["after"])  # lower perplexity is better
    # the switched-off adapter must reproduce the base: checked once, on drift (KL 0 to the last digit)
    drift = r["retention"]["drift"]
    assert drift["kl_divergence"] > 0 and drift["adapter_disabled_kl_divergence"] == 0.0
    assert drift["adapter_disabled_delta_cross_entropy"] == 0.0 and drift["adapter_disabled_equals_base"] is True
    assert "adapter_disabled" not in probe
    # without drift, on the first probe
    alone = _eval(tmp_path / "alone", model_name_or_path=str(tiny_llama), adapter=str(trained_adapter),
                  retention=[f"language_modeling:{qa_file}"]).results["retention"][f"language_modeling:{qa_file}"]
    assert alone["adapter_disabled"] == alone["before"] == probe["before"]
    assert alone["adapter_disabled_equals_base"] is True
    lines = (result.output_dir / "predictions.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    assert {row["source"] for row in rows} == {"language_modeling", f"retention:language_modeling:{qa_file}",
                                              "retention:drift"}
    assert all({"input", "reference", "prediction", "score"} <= set(row) for row in rows)
    # Per-example rows that paired intervals resample: tokens for perplexity, summed KL for drift, whose
    # token-weighted mean is the probe's KL.
    assert all(row["tokens"] > 0 for row in rows if row["source"] != "retention:drift")
    kl = [row for row in rows if row["source"] == "retention:drift"]
    assert sum(r["kl_sum"] for r in kl) / sum(r["tokens"] for r in kl) == pytest.approx(drift["kl_divergence"])


def test_batched_generation_answers_in_the_callers_order(tiny_llama, trained_adapter):
    """Prompts are batched by length; each answer must still be the one its prompt gets on its own."""
    lm = inference.load(str(tiny_llama), str(trained_adapter), use_cpu=True)
    # Weights drawn wider than the checkpoint's: a random model at the default scale answers every prompt with the
    # same run of newlines, and equal answers would hide a reordering.
    torch.manual_seed(1)
    with torch.no_grad():
        for param in lm.model.parameters():
            param.normal_(0.0, 0.5)
    prompts = [[{"role": "user", "content": text}] for text in
               ["a long question " * 12, "short", "a middling question here", "x", "b long question " * 9]]
    alone = [inference.generate(lm, [p], max_new_tokens=6, batch_size=1)[0][0] for p in prompts]
    batched, stats = inference.generate(lm, prompts, max_new_tokens=6, batch_size=2)
    assert batched == alone and len(set(alone)) > 1 and stats.new_tokens > 0


def test_generation_task_writes_predictions_and_ci(tiny_llama, trained_adapter, qa_file, tmp_path):
    result = _eval(tmp_path, model_name_or_path=str(tiny_llama), adapter=str(trained_adapter), task="qa",
                   dataset_name_or_path=str(qa_file))
    r = result.results
    assert set(r["metrics"]) == {"exact_match", "contains_answer"}
    lo, hi = r["confidence_intervals"]["contains_answer"]
    assert 0.0 <= lo <= r["metrics"]["contains_answer"] <= hi <= 1.0
    assert r["generation"]["new_tokens"] > 0
    rows = [json.loads(x) for x in (result.output_dir / "predictions.jsonl").read_text().splitlines()]
    assert [row["reference"] for row in rows] == [q["answer"] for q in QA_ROWS]
    # A re-run with the same options is recognised as finished.
    again = _eval(tmp_path, model_name_or_path=str(tiny_llama), adapter=str(trained_adapter), task="qa",
                  dataset_name_or_path=str(qa_file))
    assert again.skipped


def test_translation_on_parallel_text_files(tiny_llama, trained_adapter, tmp_path):
    """Multi30k's layout (test.en beside test.fr, one sentence per line) is evaluated as the columns say: English
    prompts, French references, scored by sacrebleu."""
    d = tmp_path / "multi30k"
    d.mkdir()
    pairs = {"en": ["A dog runs.", "Two men talk.", "A cat sleeps."],
             "fr": ["Un chien court.", "Deux hommes parlent.", "Un chat dort."]}
    for split, n in (("train", 3), ("val", 2), ("test", 3)):
        for lang, lines in pairs.items():
            (d / f"{split}.{lang}").write_text("\n".join(lines[:n]) + "\n", encoding="utf-8")
    result = _eval(tmp_path, model_name_or_path=str(tiny_llama), adapter=str(trained_adapter), task="translation",
                   dataset_name_or_path=str(d), input_columns=["en"], target_column="fr")
    assert result.results["num_examples"] == 3 and set(result.results["metrics"]) >= {"bleu", "chrf"}
    rows = [json.loads(x) for x in (result.output_dir / "predictions.jsonl").read_text().splitlines()]
    assert [row["reference"] for row in rows] == pairs["fr"]


def test_probes_are_asked_without_the_run_s_system_prompt(tiny_llama, tmp_path):
    """The task is asked as the run was trained (its system prompt); retention probes ask what the model still
    knows, without it: the demo's "Reply with SQL only" had the tuned model answer general questions in SQL, which
    read as forgetting. A baseline written before (probes under the system prompt) is not reused as 'before'."""
    data = write_jsonl(tmp_path / "train.jsonl", ALPACA_ROWS)
    system = "Reply with SQL only."
    run = train(TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data), method="lora",
                             output_dir=str(tmp_path / "run"), max_steps=4, per_device_train_batch_size=4,
                             max_seq_length=64, lora_r=4, learning_rate=5e-2, save_steps=100, seed=0, use_cpu=True,
                             system_prompt=system)).output_dir
    result = _eval(tmp_path, model_name_or_path=str(tiny_llama), adapter=str(run), retention=["drift"])
    drift = result.results["retention"]["drift"]
    assert drift["asked_without_system_prompt"] is True
    lm = inference.load(str(tiny_llama), str(run), use_cpu=True, torch_dtype="auto")
    base = inference.load(str(tiny_llama), None, use_cpu=True, template=lm.template.name, system_prompt=system,
                          torch_dtype=result.results["base_torch_dtype"])
    assert lm.template.system_prompt == system  # the task's prompt: the run's
    prompts = drift_prompts(ProbeContext(None, 6, 42))

    def kl(base_view, lm_view):
        refs = retention.drift_references(base_view, prompts, batch_size=2)
        return retention.drift(base_view, lm_view, refs, batch_size=2)["kl_divergence"]

    asked, under_system = kl(retention.general_view(base), retention.general_view(lm)), kl(base, lm)
    assert drift["kl_divergence"] == pytest.approx(asked, rel=1e-4)
    assert abs(under_system - asked) > 1e-3 * asked  # under the system prompt it is another number
    # a baseline without the mark is scored again, not read
    old = json.loads((result.output_dir / "eval_results.json").read_text())
    old["retention"]["drift"].pop("asked_without_system_prompt")
    old["retention"]["drift"]["kl_divergence"] = 99.0
    baseline = tmp_path / "old_base.json"
    baseline.write_text(json.dumps(old))
    again = _eval(tmp_path, output_dir=str(tmp_path / "again"), model_name_or_path=str(tiny_llama), adapter=str(run),
                  retention=["drift"], baseline=str(baseline))
    assert again.results["retention"]["drift"]["kl_divergence"] == pytest.approx(asked, rel=1e-4)


def _as_loaded(model, like: inference.LoadedModel, adapters=None) -> inference.LoadedModel:
    return inference.LoadedModel(model.eval(), like.tokenizer, like.task_kind, like.template, like.model_path,
                                 adapters or {})


def test_drift_is_zero_for_the_base_and_a_fresh_lora_and_positive_after_training(tiny_llama, trained_adapter):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = inference.load(str(tiny_llama), None, use_cpu=True, template="chatml")
    prompts = drift_prompts(ProbeContext(None, 6, 0))
    refs = [ex for ex in retention.drift_references(base, prompts, new_tokens=12)]
    assert refs, "the base produced no continuations"
    same = retention.drift(base, base, refs)
    assert same["kl_divergence"] == 0.0 and same["delta_cross_entropy"] == 0.0

    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))  # B = 0 at initialisation
    zero = retention.drift(base, _as_loaded(fresh, base, {"default": "fresh"}), refs)
    assert zero["kl_divergence"] == 0.0 and zero["delta_cross_entropy"] == 0.0

    tuned = inference.load(str(tiny_llama), str(trained_adapter), use_cpu=True, template="chatml")
    moved = retention.drift(base, tuned, refs)
    assert moved["kl_divergence"] > 1e-4
    assert moved["delta_cross_entropy"] != 0.0


def test_response_loss_shifts_logits_against_labels(tiny_llama):
    """Our per-token loss equals transformers' own causal-LM loss (which shifts internally): an unshifted
    comparison - one of the two bugs peft's method-comparison suite once shipped - would not."""
    from tunelab.data.encode import encode_causal
    from tunelab.data.formats import Example

    lm = inference.load(str(tiny_llama), None, use_cpu=True, template="chatml")
    ex = Example(messages=[{"role": "user", "content": "Count the books."},
                           {"role": "assistant", "content": "SELECT count(*) FROM books"}])
    ours = inference.response_losses(lm, [ex])[0]
    feats, _ = encode_causal(ex, lm.template, lm.tokenizer, 512)
    with torch.no_grad():
        hf = lm.model(input_ids=torch.tensor([feats["input_ids"]]), labels=torch.tensor([feats["labels"]])).loss
    assert ours["nll_sum"] / ours["tokens"] == pytest.approx(float(hf), rel=1e-5)


def test_fully_fine_tuned_model_uses_its_base_for_before(tiny_llama, qa_file, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", ALPACA_ROWS)
    full = train(TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data),
                              output_dir=str(tmp_path / "full"), method="full", max_steps=3,
                              per_device_train_batch_size=4, max_seq_length=64, learning_rate=1e-3, save_steps=100,
                              use_cpu=True)).output_dir
    r = _eval(tmp_path, model_name_or_path=str(full), retention=[f"language_modeling:{qa_file}"]).results
    assert r["base_model_name_or_path"] == str(tiny_llama)
    probe = r["retention"][f"language_modeling:{qa_file}"]
    assert probe["before"] != probe["after"] and "adapter_disabled" not in probe


def test_bad_input_is_one_clear_line(tiny_llama, tiny_bert, trained_adapter, qa_file, tmp_path, capsys):
    cases = [
        (["--model_name_or_path", tiny_llama, "--task", "poetry", "--dataset_name_or_path", qa_file],
         "--task", "invalid choice"),
        (["--model_name_or_path", tiny_llama, "--task", "similarity", "--dataset_name_or_path", qa_file],
         "similarity data needs columns sentence1, sentence2 and score", None),
        (["--model_name_or_path", tiny_bert, "--adapter", trained_adapter, "--task", "qa", "--dataset_name_or_path",
          qa_file], "made for another base model", None),
        (["--model_name_or_path", tiny_llama, "--retention", "no_such_probe"], "not a built-in probe", None),
        (["--model_name_or_path", tiny_llama], "nothing to evaluate", None),
    ]
    for args, needle, needle2 in cases:
        out = tmp_path / "bad"
        code = main(["eval", *map(str, args), "--output_dir", str(out), "--use_cpu"])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: ") and needle in last and "Traceback" not in err
        if needle2:
            assert needle2 in last
        assert not out.exists()


def test_a_broken_adapter_folder_is_named_by_its_flag(tiny_llama, trained_adapter, qa_file, tmp_path, capsys):
    """`tunelab eval --adapter DIR` with DIR damaged: the error names --adapter DIR (not --model_name_or_path) and
    what is wrong; an adapter folder without a tokenizer (peft's save_pretrained alone) is read with its base's."""
    import shutil

    def broken(name, damage):
        d = tmp_path / name
        shutil.copytree(trained_adapter, d, ignore=shutil.ignore_patterns("checkpoint-*"))
        damage(d)
        return d

    cases = {
        "no_weights": (lambda d: (d / "adapter_model.safetensors").unlink(), "no adapter weights"),
        "bad_config": (lambda d: (d / "adapter_config.json").write_text("{not json", encoding="utf-8"),
                       "adapter_config.json is not valid JSON"),
        "bad_weights": (lambda d: (d / "adapter_model.safetensors").write_bytes(b"garbage"), "cannot read its weights"),
        "bad_tokenizer": (lambda d: (d / "tokenizer.json").write_text("{", encoding="utf-8"),
                          "cannot load its tokenizer"),
    }
    for name, (damage, needle) in cases.items():
        d = broken(name, damage)
        out = tmp_path / f"out-{name}"
        code = main(["eval", "--model_name_or_path", str(tiny_llama), "--adapter", str(d), "--task", "qa",
                     "--dataset_name_or_path", str(qa_file), "--output_dir", str(out), "--use_cpu"])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith(f"error: --adapter {d}: ") and needle in last, (name, err[-500:])
        assert "--model_name_or_path" not in last and "Traceback" not in err and not out.exists()

    bare = broken("no_tokenizer", lambda d: [f.unlink() for f in d.iterdir() if f.name.startswith(("tokenizer",
                                                                                                  "special_tokens"))])
    lm = inference.load(str(tiny_llama), str(bare), use_cpu=True)
    assert lm.is_peft and lm.tokenizer.pad_token is not None


def test_prompt_tuned_losses_and_drift_read_the_input_positions(tiny_llama):
    """peft's prompt tuning puts its virtual tokens' positions in front of the logits; per-token losses (the drift
    probe, perplexity) must be read at the input's own positions, as peft's own loss does."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunelab.data.encode import encode_causal
    from tunelab.data.formats import Example

    base = inference.load(str(tiny_llama), None, use_cpu=True, template="chatml")
    torch.manual_seed(0)
    tuned = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    lm = _as_loaded(tuned, base, {"default": "prompt"})
    examples = [Example(messages=[{"role": "user", "content": q}, {"role": "assistant", "content": a}])
                for q, a in (("Count the books.", "SELECT count(*) FROM books"), ("Capital of France?", "Paris"))]
    ours = inference.response_losses(lm, examples)  # a batch of two lengths: right padding too
    for ex, row in zip(examples, ours):
        feats, _ = encode_causal(ex, lm.template, lm.tokenizer, 512)
        with torch.no_grad():
            peft_loss = tuned(input_ids=torch.tensor([feats["input_ids"]]),
                              labels=torch.tensor([feats["labels"]])).loss
        assert row["nll_sum"] / row["tokens"] == pytest.approx(float(peft_loss), rel=1e-5)
    refs = retention.drift_references(base, drift_prompts(ProbeContext(None, 4, 0)), new_tokens=8)
    moved = retention.drift(base, lm, refs)
    assert moved["kl_divergence"] > 0  # a random soft prompt changes the next-token distributions


@pytest.mark.parametrize("cache", ['{"continuations": ["cut', '{"continuations": ["one"]}', "[1, 2]"])
def test_an_unreadable_drift_cache_is_generated_again(tiny_llama, cache, caplog):
    """The base's continuations are cached; a cache file that is not what tunelab wrote (cut short, edited, for
    other prompts) is regenerated, with a warning, never trusted nor a traceback."""
    base = inference.load(str(tiny_llama), None, use_cpu=True, template="chatml")
    prompts = drift_prompts(ProbeContext(None, 3, 1))
    first = retention.drift_references(base, prompts, new_tokens=6)
    path = retention._drift_cache_path(base, prompts, 6)
    written = path.read_text(encoding="utf-8")
    path.write_text(cache, encoding="utf-8")
    again = retention.drift_references(base, prompts, new_tokens=6)
    assert [ex.messages for ex in again] == [ex.messages for ex in first]
    assert json.loads(path.read_text(encoding="utf-8")) == json.loads(written)
    assert "generating the references again" in caplog.text


def test_prompt_tuned_encoder_embeds_the_sentence_tokens(tiny_bert):
    """The STS-B probe mean-pools an encoder's last hidden states over the sentence's tokens; under prompt tuning
    those states come after the virtual tokens' states."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    plain = inference.load(str(tiny_bert), None, use_cpu=True)
    torch.manual_seed(0)
    tuned = get_peft_model(AutoModelForSequenceClassification.from_pretrained(tiny_bert),
                           PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5))
    lm = _as_loaded(tuned, plain, {"default": "prompt"})
    texts = ["the cat sat", "a much longer sentence about the books on the table"]
    vectors = inference.embed(lm, texts)
    assert vectors.shape == (2, 64) and torch.isfinite(vectors).all()
    enc = lm.tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = tuned(**enc, output_hidden_states=True).hidden_states[-1]
    assert hidden.shape[1] == enc["input_ids"].shape[1] + 5
    mask = enc["attention_mask"].unsqueeze(-1).float()
    want = (hidden[:, 5:] * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(vectors, want)


@pytest.mark.parametrize("task_type", ["SEQ_CLS", "CAUSAL_LM"])
def test_a_disabled_prompt_learning_adapter_scores_the_base(tiny_bert, tiny_llama, task_type):
    """peft 0.21's disable_adapter() raises UnboundLocalError for a prompt-learning adapter on a model that cannot
    generate (an encoder classifier); tunelab's adapter-disabled check must still score the plain base."""
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    path, auto = (tiny_bert, AutoModelForSequenceClassification) if task_type == "SEQ_CLS" \
        else (tiny_llama, AutoModelForCausalLM)
    plain = inference.load(str(path), None, use_cpu=True)
    torch.manual_seed(0)
    tuned = get_peft_model(auto.from_pretrained(path), PromptTuningConfig(task_type=task_type, num_virtual_tokens=5))
    lm = _as_loaded(tuned, plain, {"default": "prompt"})
    texts = ["the cat sat", "a much longer sentence about the books on the table"]
    with inference.adapter_disabled(lm) as disabled:
        torch.testing.assert_close(inference.embed(disabled, texts), inference.embed(plain, texts))
    assert not torch.allclose(inference.embed(lm, texts), inference.embed(plain, texts))  # enabled again


def test_an_encoder_without_a_head_for_the_labels_has_no_accuracy(tiny_bert, tmp_path, capsys):
    """A base encoder's classification head is random and its labels are LABEL_0, LABEL_1: an accuracy of 0 against
    'negative'/'positive' would read as a measurement. Its task metrics are left out, with the reason."""
    rows = [{"sentence": "a fine film", "label": "positive"}, {"sentence": "dull", "label": "negative"}]
    data = write_jsonl(tmp_path / "sst.jsonl", rows)
    res = _eval(tmp_path, model_name_or_path=str(tiny_bert), task="classification",
                dataset_name_or_path=str(data)).results
    assert res["metrics"] == {"accuracy": None, "macro_f1": None}
    assert res["confidence_intervals"] == {"accuracy": None}
    assert "no classification head" in res["task_note"] and "LABEL_0" in res["task_note"]
    assert main(["eval", "--model_name_or_path", str(tiny_bert), "--task", "classification", "--dataset_name_or_path",
                 str(data), "--output_dir", str(tmp_path / "cli"), "--use_cpu"]) == 0
    assert "no accuracy is reported" in capsys.readouterr().out


def test_a_text2sql_schema_that_does_not_run_is_named_or_skipped(tiny_llama, tmp_path, capsys):
    """A text-to-SQL evaluation file in which one database's schema does not run in SQLite: the error names the
    file, line and db_id (before the model loads); --skip_invalid_rows leaves the row out and counts it in the
    results and in the comparison report's notes."""
    from tunelab.comparison.processes import PlannedRun, record
    from tunelab.comparison.report import missing_value_notes

    good = "CREATE TABLE head (name TEXT, age INTEGER)"
    rows = [{"db_id": "heads", "question": "How many heads?", "context": good, "answer": "SELECT count(*) FROM head"},
            {"db_id": "broken_db", "question": "Names?", "context": "CREATE TABLE t (a INTEGER,, b TEXT)",
             "answer": "SELECT a FROM t"},
            {"db_id": "heads", "question": "Oldest?", "context": good, "answer": "SELECT max(age) FROM head"}]
    data = write_jsonl(tmp_path / "sql.jsonl", rows)
    args = ["eval", "--model_name_or_path", str(tiny_llama), "--task", "text2sql", "--dataset_name_or_path",
            str(data), "--max_new_tokens", "4", "--use_cpu"]
    code = main([*args, "--output_dir", str(tmp_path / "stopped")])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: sql.jsonl line 2 (db_id broken_db): ") and "SQLite" in last
    assert "--skip_invalid_rows" in last and not (tmp_path / "stopped").exists()

    out = tmp_path / "skipped"
    assert main([*args, "--output_dir", str(out), "--skip_invalid_rows"]) == 0
    assert "on 2 examples (1 invalid row left out" in capsys.readouterr().out
    results = json.loads((out / "eval_results.json").read_text(encoding="utf-8"))
    assert results["num_examples"] == 2 and results["invalid_rows_skipped"] == 1
    assert results["invalid_rows"][0]["row"] == "sql.jsonl line 2"
    assert results["invalid_rows"][0]["db_id"] == "broken_db"
    rec = record(PlannedRun("k", "base", "base", None, tmp_path, {}), "ok", 1.0, {"eval_results": results}, None)
    assert any(n.startswith("base: 1 evaluation row left out") for n in missing_value_notes([rec.to_json()]))


def test_a_probe_of_the_users_own_data_names_its_columns(tiny_llama, tmp_path, capsys):
    """TASK:PATH:INPUT->TARGET reads a file whose columns name no known format (a sentence pair in two languages);
    without the columns the error says how to name them in the probe, not with --input_columns (which name the
    task's data)."""
    pairs = tmp_path / "old_task.csv"
    pairs.write_text("en,fr\nA dog runs.,Un chien court.\nTwo men talk.,Deux hommes parlent.\n", encoding="utf-8")
    spec = f"translation:{pairs}:en->fr"
    r = _eval(tmp_path, model_name_or_path=str(tiny_llama), retention=[spec]).results
    assert r["retention"][spec]["num_examples"] == 2
    rows = [json.loads(x) for x in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(row["reference"] for row in rows) == ["Deux hommes parlent.", "Un chien court."]
    assert any("A dog runs." in row["input"] for row in rows)

    for bad, needle in ((f"translation:{pairs}", f"name them in the probe: translation:{pairs}:en->fr"),
                        (f"translation:{pairs}:en->de", "de")):
        out = tmp_path / "bad"
        code = main(["eval", "--model_name_or_path", str(tiny_llama), "--retention", bad, "--output_dir", str(out),
                     "--use_cpu"])
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("error: ") and needle in last and "Traceback" not in err, err
        assert "--input_columns" not in last and not out.exists()


def test_which_probes_are_also_scored_with_the_adapter_switched_off(tiny_llama, trained_adapter, qa_file):
    """One probe checks that a plain adapter switched off reproduces the base (drift where asked, else the first);
    on a quantized base every probe is scored so, as the quantized base's own score. A full model: none."""
    from tunelab.evaluation.probes import parse_probe
    from tunelab.evaluation.run import _adapter_disabled_probes

    probes = [parse_probe(spec)[0] for spec in ("general_knowledge", f"qa:{qa_file}", "drift")]
    lm = inference.load(str(tiny_llama), str(trained_adapter), use_cpu=True)
    assert _adapter_disabled_probes(lm, probes) == {"drift"}
    assert _adapter_disabled_probes(lm, probes[:2]) == {"general_knowledge"}
    quantized = dataclasses.replace(lm, run_config={**lm.run_config, "use_4bit": True})
    assert _adapter_disabled_probes(quantized, probes) == {"general_knowledge", f"qa:{qa_file}", "drift"}
    full = inference.load(str(tiny_llama), None, use_cpu=True)
    assert _adapter_disabled_probes(full, probes) == set()
    # drift skips a model that does not generate text: the check goes to a probe that scores it
    encoder = dataclasses.replace(lm, task_kind="seq_cls")
    assert _adapter_disabled_probes(encoder, [probes[2], probes[1]]) == {f"qa:{qa_file}"}
