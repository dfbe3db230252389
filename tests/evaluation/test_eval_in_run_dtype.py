"""Evaluation runs a model as its run trained it and costs no more than it must: the run's dtype (bf16 after bf16
training), the trained model evaluated in memory with the numbers a saved run gives, and generation that stops at
the task's natural end."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab import inference
from tunelab.config import EvalOptions, TrainOptions
from tunelab.evaluation import tasks
from tunelab.evaluation.run import evaluate
from tunelab.evaluation.tasks import TaskSettings, run_task
from tunelab.data.formats import Example
from tunelab.training import train

from conftest import ALPACA_ROWS, CLASSIFICATION_ROWS, write_jsonl

QA_ROWS = [{"question": "What is the capital of France?", "answer": "Paris"},
           {"question": "Count the books.", "answer": "SELECT count(*) FROM books"},
           {"question": "Translate to French: the cat", "answer": "le chat"},
           {"question": "Give the label.", "answer": "positive"}]


def _train(tiny_llama, tmp, method: str, bf16: bool, name: str | None = None, **kw):
    data = write_jsonl(tmp / "train.jsonl", ALPACA_ROWS)
    opts = TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data),
                        output_dir=str(tmp / (name or f"{method}-{bf16}")), method=method, max_steps=3,
                        per_device_train_batch_size=4, max_seq_length=64, lora_r=4, learning_rate=2e-2,
                        warmup_ratio=0.0, save_steps=100, seed=0, use_cpu=True, bf16=bf16, **kw)
    return train(opts)


def _eval_options(tiny_llama, trained, out, qa_file, **kw) -> EvalOptions:
    peft = trained.results["peft"]
    return EvalOptions(model_name_or_path=str(tiny_llama) if peft else str(trained.output_dir),
                       adapter=str(trained.output_dir) if peft else None, task="qa",
                       dataset_name_or_path=str(qa_file), retention=[f"language_modeling:{qa_file}", "drift"],
                       base_model_name_or_path=str(tiny_llama), output_dir=str(out), max_new_tokens=8,
                       per_device_eval_batch_size=2, probe_samples=4, use_cpu=True, **kw)


@pytest.fixture(scope="module")
def qa_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("qa") / "qa.jsonl", QA_ROWS)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_bf16_run_is_evaluated_in_bf16_and_in_memory_equals_the_saved_run(tiny_llama, qa_file, tmp_path, method):
    trained = _train(tiny_llama, tmp_path, method, bf16=True)
    opts = _eval_options(tiny_llama, trained, tmp_path / "from-disk", qa_file)
    from_disk = evaluate(opts)
    lm = from_disk.model
    assert from_disk.results["torch_dtype"] == "bfloat16" and lm.dtype == torch.bfloat16
    weights = [p for n, p in lm.model.named_parameters() if "lora_" not in n]
    assert weights and all(p.dtype == torch.bfloat16 for p in weights)
    if method == "lora":  # the adapter itself stays float32, as training kept it
        assert all(p.dtype == torch.float32 for n, p in lm.model.named_parameters() if "lora_" in n)
    # The "before" base of the retention probes runs in the same dtype as the tuned model.
    assert from_disk.results["retention"]["drift"]["kl_divergence"] is not None

    in_memory = inference.from_trained(trained.model, trained.tokenizer, trained.output_dir,
                                       model_path=trained.results["base_model_path"], use_cpu=True)
    assert in_memory.dtype == torch.bfloat16
    mem = evaluate(_eval_options(tiny_llama, trained, tmp_path / "in-memory", qa_file), model=in_memory).results
    disk = from_disk.results
    assert mem["metrics"] == disk["metrics"] and mem["torch_dtype"] == disk["torch_dtype"]
    for name, probe in disk["retention"].items():
        for key in ("before", "after", "kl_divergence", "delta_cross_entropy", "adapter_disabled"):
            assert mem["retention"][name].get(key) == probe.get(key), (name, key)
    rows = lambda d: [json.loads(x) for x in (d / "predictions.jsonl").read_text().splitlines()]  # noqa: E731
    assert rows(tmp_path / "in-memory") == rows(tmp_path / "from-disk")

    # --torch_dtype overrides the run's dtype.
    fp32 = evaluate(_eval_options(tiny_llama, trained, tmp_path / "fp32", qa_file, torch_dtype="float32"))
    assert fp32.results["torch_dtype"] == "float32" and fp32.model.dtype == torch.float32


@pytest.mark.parametrize("method", ["lora", "ia3", "prompt_tuning"])
def test_a_bf16_classifier_runs_head_is_evaluated_in_the_bases_dtype(tiny_bert, tmp_path, method):
    """A sequence-classification adapter trains its head in full (peft's modules_to_save), kept float32 beside the
    bf16 base; the head computed in bf16 under training's autocast, and must at evaluation too (a float32 head
    refused the base's bf16 hidden states: the sst2-sts recipe's lora and prompt_tuning runs failed)."""
    data = write_jsonl(tmp_path / "train.jsonl", CLASSIFICATION_ROWS)
    opts = TrainOptions(model_name_or_path=str(tiny_bert), dataset_name_or_path=str(data),
                        output_dir=str(tmp_path / "run"), method=method, max_steps=2, per_device_train_batch_size=4,
                        max_seq_length=32, learning_rate=1e-2, warmup_ratio=0.0, save_steps=100, seed=0,
                        use_cpu=True, bf16=True)
    trained = train(opts)
    eval_opts = dict(model_name_or_path=str(tiny_bert), adapter=str(trained.output_dir), task="classification",
                     dataset_name_or_path=str(data), per_device_eval_batch_size=4, use_cpu=True)
    from_disk = evaluate(EvalOptions(**eval_opts, output_dir=str(tmp_path / "from-disk")))
    assert from_disk.results["torch_dtype"] == "bfloat16"
    heads = [p for n, p in from_disk.model.model.named_parameters() if ".modules_to_save." in n]
    assert heads and all(p.dtype == torch.bfloat16 for p in heads)
    in_memory = inference.from_trained(trained.model, trained.tokenizer, trained.output_dir,
                                       model_path=trained.results["base_model_path"], use_cpu=True)
    mem = evaluate(EvalOptions(**eval_opts, output_dir=str(tmp_path / "in-memory")), model=in_memory).results
    assert mem["metrics"] == from_disk.results["metrics"]
    rows = lambda d: (d / "predictions.jsonl").read_text()  # noqa: E731
    assert rows(tmp_path / "in-memory") == rows(tmp_path / "from-disk")


def test_a_second_adapter_in_a_session_computes_its_full_modules_in_the_bases_dtype(tiny_llama, tmp_path):
    """--modules_to_save copies (here the norms) of an adapter attached beside another one: in float32 their output
    would refuse the bf16 layers after them. The session answers as the adapter loaded alone does, and does not
    batch adapters together where peft cannot."""
    from tunelab.adapters import AdapterSession

    plain = _train(tiny_llama, tmp_path, "lora", bf16=True)
    normed = _train(tiny_llama, tmp_path, "lora", bf16=True, name="normed", modules_to_save=["norm"])
    prompts = ["Count the books.", "Say hello."]
    both = AdapterSession(str(tiny_llama), {"plain": str(plain.output_dir), "normed": str(normed.output_dir)},
                          use_cpu=True)
    assert both.loaded_bases == 1
    alone = AdapterSession(str(tiny_llama), {"normed": str(normed.output_dir)}, use_cpu=True)
    assert both.generate(prompts, "normed", max_new_tokens=6) == alone.generate(prompts, max_new_tokens=6)
    # peft's mixed batches refuse a trained-in-full norm, whichever adapter a batch names: one adapter at a time
    assert not any(info["mixed_batches"] for info in both.adapter_info().values())
    assert both.generate(prompts, ["plain", "base"], max_new_tokens=6)[0] == \
        both.generate(prompts[:1], "plain", max_new_tokens=6)[0]


def test_a_float32_run_and_a_quantized_runs_other_weights_are_float32():
    cpu = dict(on_gpu=False, cpu_flags={"avx512_bf16"})
    assert inference.decide_dtype({"method": "lora", "bf16": False}, **cpu) == torch.float32
    assert inference.decide_dtype({"method": "lora", "bf16": True}, **cpu) == torch.bfloat16
    assert inference.decide_dtype({"method": "full", "bf16": True}, **cpu) == torch.bfloat16
    assert inference.decide_dtype({"method": "qlora", "bf16": True, "use_4bit": True}, **cpu) == torch.float32
    assert inference.decide_dtype({"method": "lora", "torch_dtype": "bfloat16"}, **cpu) == torch.bfloat16
    # fp16 needs a GPU; a GPU without bf16 evaluates a bf16 run in float32
    assert inference.decide_dtype({"fp16": True}, **cpu) == torch.float32
    assert inference.decide_dtype({"fp16": True}, on_gpu=True) == torch.float16
    assert inference.decide_dtype({"bf16": True}, on_gpu=True, gpu_bf16=False) == torch.float32
    # a model that is no tunelab run: the precision tunelab would train in there
    assert inference.decide_dtype({}, on_gpu=False, cpu_flags={"avx512_bf16"}) == torch.bfloat16
    assert inference.decide_dtype({}, on_gpu=False, cpu_flags=set()) == torch.float32
    assert inference.decide_dtype({}, on_gpu=True, gpu_bf16=True) == torch.bfloat16


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def chatty_llama(tiny_tokenizer, tmp_path_factory):
    """The tiny Llama with larger random weights: its greedy answers are varied text (the default initialisation
    answers every prompt with newlines), so that a stop string can fall inside one."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tiny_tokenizer.pad_token_id,
                         eos_token_id=tiny_tokenizer.eos_token_id, bos_token_id=tiny_tokenizer.bos_token_id,
                         initializer_range=0.5)
    d = tmp_path_factory.mktemp("chatty")
    LlamaForCausalLM(config).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return inference.load(str(d), None, use_cpu=True)


PROMPTS = [_chat("What is the capital of France?"), _chat("Translate to French: the cat"), _chat("Give the label."),
           _chat("Count the books.")]


def _stop_inside(answer: str) -> str:
    """Two letters the answer writes a few characters in, for the first time: a stop string to cut it at."""
    for i in range(3, len(answer) - 6):
        piece = answer[i:i + 2]
        if piece.isascii() and piece.isalpha() and piece not in answer[:i + 1]:
            return piece
    raise AssertionError(f"no stop string to be found in {answer!r}")


def test_generation_stops_at_a_stop_string_and_keeps_what_was_generated(chatty_llama):
    lm = chatty_llama
    free, free_stats = inference.generate(lm, PROMPTS, max_new_tokens=24, batch_size=4, strip=False)
    stop = _stop_inside(free[0])
    stopped, stats = inference.generate(lm, PROMPTS, max_new_tokens=24, batch_size=4, strip=False,
                                        stop_strings=[stop])
    assert stop in stopped[0] and len(stopped[0]) < len(free[0])
    for short, full in zip(stopped, free):
        # nothing generated is cut away: each answer is the free answer up to the token that completed its first
        # stop string (tokens here are a few characters long), or all of it when it writes none
        assert full.startswith(short)
        if stop in full:
            end = full.index(stop) + len(stop)
            assert end <= len(short) < end + 8
        else:
            assert short == full
    assert stats.new_tokens < free_stats.new_tokens  # and the tokens after it are not paid for
    # A task's own end, said as a test of the text so far, stops the same rows at the same tokens.
    ended, _ = inference.generate(lm, PROMPTS, max_new_tokens=24, batch_size=4, strip=False,
                                  stop_when=lambda text: stop in text)
    assert ended == stopped


def test_an_answer_cut_at_its_stop_string_is_scored_on_what_was_generated(chatty_llama, monkeypatch):
    lm = chatty_llama
    settings = TaskSettings(max_new_tokens=24, batch_size=2)
    question = PROMPTS[0]
    free = run_task("qa", lm, [Example(messages=[*question, {"role": "assistant", "content": "x"}])], settings)
    answer = free.rows[0]["prediction"]
    stop = _stop_inside(answer)
    monkeypatch.setitem(tasks.ANSWER_ENDS, "qa", lambda text: stop in text)
    cut = run_task("qa", lm, [Example(messages=[*question, {"role": "assistant", "content": "x"}])],
                   settings).rows[0]["prediction"]
    assert stop in cut and answer.startswith(cut) and len(cut) < len(answer)
    # The reference is the answer cut at its stop string, shorter than what the model would go on to write: the
    # example is scored on what was generated (an exact match), not dropped or scored on a longer text.
    example = Example(messages=[*question, {"role": "assistant", "content": cut}])
    scored = run_task("qa", lm, [example], settings)
    assert scored.rows[0]["prediction"] == cut and scored.scores["exact_match"] == 1.0
    monkeypatch.delitem(tasks.ANSWER_ENDS, "qa")
    unstopped = run_task("qa", lm, [example], settings)
    assert unstopped.rows[0]["prediction"] == answer and unstopped.scores["exact_match"] == 0.0


SQL_ANSWERS = [
    # what smollm2-135m answers on the built-in task: the schema echoed first, its ';' is not the end
    "CREATE TABLE customers (customer_id INTEGER, name VARCHAR); CREATE TABLE orders (order_id INTEGER)\n"
    "SELECT name FROM customers WHERE customer_id = 3;\n\nResult: the customer's name",
    "SELECT COUNT(*) FROM customers WHERE country = 'Ireland';\n\nExplanation: the query counts them.",
    "```sql\nSELECT title FROM books\nWHERE price < 10\n```\nThis lists the cheap books.",
    "Here is the query:\nWITH t AS (SELECT 1) SELECT * FROM t\n\nand more prose",
    "The answer is 42.",
]


@pytest.mark.parametrize("answer", SQL_ANSWERS)
def test_text2sql_stops_where_the_scored_statement_is_whole(answer):
    """Generation may stop at the first prefix where the statement is complete: clean_sql scores that prefix the
    same as the whole answer, so stopping changes no score (a ';' that ends an echoed CREATE TABLE is no end)."""
    assert tasks.ANSWER_ENDS["text2sql"] is tasks.sql_statement_complete
    ends = [i for i in range(1, len(answer) + 1) if tasks.sql_statement_complete(answer[:i])]
    if "SELECT" in answer:
        assert ends, "a complete statement was not recognised"
        assert tasks.clean_sql(answer[:ends[0]]) == tasks.clean_sql(answer)
        assert all(tasks.clean_sql(answer[:i]) == tasks.clean_sql(answer) for i in ends)
    else:
        assert not ends
    assert not tasks.sql_statement_complete("CREATE TABLE books (book_id INTEGER);")
