"""Tiny real models built from configs (random weights, real architectures) and the data they train on.

Every model here is a genuine transformers model; nothing in the model stack is mocked. The tokenizer is a small
byte-level BPE trained on the spot so that the core suite needs no downloads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The suite never reaches the Hugging Face Hub: a name that is not local fails at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Under pytest-xdist each worker (and the subprocesses it starts) gets its share of the cores: two workers that each
# start one OpenMP thread per core oversubscribe a 2-core machine, and spin-waiting threads then slow every test.
# Set before torch is imported, so that its thread pool is sized by it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))
    os.environ.setdefault("OMP_NUM_THREADS", _share)
    os.environ.setdefault("MKL_NUM_THREADS", _share)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TUNELAB_DATA_DIR", REPO.parent / "shared" / "data"))

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.", "SELECT name FROM books WHERE year > 2000;",
    "Summarize the dialogue between two people.", "Translate English to French: the cat sat on the mat.",
    "What is the capital of France? Paris.", "Below is an instruction that describes a task.",
    "### Instruction:\n### Input:\n### Response:\n", "positive negative neutral label sentence text",
    "0123456789 count average sum group order by limit join", "Question: Context: Answer:",
] * 20


def build_tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", unk_token=None)
    fast.chat_template = CHATML
    fast.save_pretrained(directory)
    return fast


def _save(model, tokenizer, directory: Path) -> Path:
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("tiny-models")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_dir):
    return build_tokenizer(tiny_dir / "tokenizer")


@pytest.fixture(scope="session")
def tiny_llama(tiny_dir, tiny_tokenizer) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tiny_tokenizer.pad_token_id,
                         eos_token_id=tiny_tokenizer.eos_token_id, bos_token_id=tiny_tokenizer.bos_token_id)
    return _save(LlamaForCausalLM(config), tiny_tokenizer, tiny_dir / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_t5(tiny_dir, tiny_tokenizer) -> Path:
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tiny_tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                      num_decoder_layers=2, num_heads=4, dropout_rate=0.0, pad_token_id=tiny_tokenizer.pad_token_id,
                      eos_token_id=tiny_tokenizer.eos_token_id, decoder_start_token_id=tiny_tokenizer.pad_token_id)
    return _save(T5ForConditionalGeneration(config), tiny_tokenizer, tiny_dir / "tiny-t5")


@pytest.fixture(scope="session")
def tiny_bert(tiny_dir, tiny_tokenizer) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=256, pad_token_id=tiny_tokenizer.pad_token_id,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        architectures=["BertForSequenceClassification"])
    return _save(BertForSequenceClassification(config), tiny_tokenizer, tiny_dir / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_models(tiny_llama, tiny_t5, tiny_bert) -> dict[str, Path]:
    return {"causal_lm": tiny_llama, "seq2seq_lm": tiny_t5, "seq_cls": tiny_bert}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ALPACA_ROWS = [
    {"instruction": "Count the books.", "input": "", "output": "SELECT count(*) FROM books"},
    {"instruction": "Name the capital of France.", "input": "", "output": "Paris"},
    {"instruction": "Translate to French.", "input": "the cat", "output": "le chat"},
    {"instruction": "Give the label.", "input": "a fine sentence", "output": "positive"},
]
CLASSIFICATION_ROWS = [
    {"text": "a fine sentence with a good label", "label": "positive"},
    {"text": "the lazy dog count join", "label": "negative"},
    {"text": "quick brown fox positive", "label": "positive"},
    {"text": "order by limit negative", "label": "negative"},
]


@pytest.fixture
def alpaca_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)


@pytest.fixture
def classification_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "classes.jsonl", CLASSIFICATION_ROWS)


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared real-data folder, ../shared/data or $TUNELAB_DATA_DIR); absent here")
    return path


def builtin_model(name: str) -> str:
    """The local folder of a built-in model; skips with the reason when its package is not installed."""
    from tunelab.models import BUILTIN_MODELS, fetch_builtin

    if BUILTIN_MODELS[name].package_dir() is None:
        pytest.skip(f"built-in model {name} needs {' '.join(BUILTIN_MODELS[name].packages)} (run make install)")
    return str(fetch_builtin(name, install=False))


QA_ROWS = [{"question": "What is the capital of France?", "answer": "Paris"},
           {"question": "Count the books.", "answer": "SELECT count(*) FROM books"},
           {"question": "Translate to French: the cat", "answer": "le chat"},
           {"question": "Give the label.", "answer": "positive"}]


def tiny_recipe(tmp_path: Path, model: Path, methods: list, **extra) -> Path:
    data = write_jsonl(tmp_path / "qa.jsonl", QA_ROWS)
    recipe = {"name": "tiny", "model": str(model), "task": "qa",
              "data": {"train": str(data), "eval": str(data)},
              "retention": [f"language_modeling:{data}", "drift"],
              "budget": {"max_steps": 3, "per_device_train_batch_size": 2, "max_seq_length": 64},
              "eval": {"max_new_tokens": 6, "probe_samples": 4, "per_device_eval_batch_size": 4},
              "methods": methods, "seeds": [0], **extra}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="session")
def comparison(tiny_llama, tmp_path_factory):
    """One finished three-method comparison, shared by the tests that read its outputs."""
    tmp = tmp_path_factory.mktemp("comparison")
    recipe = tiny_recipe(tmp, tiny_llama, [{"method": "full", "learning_rate": 1e-3},
                                           {"method": "lora", "lora_r": 4}, "ia3"])
    out = tmp / "cmp"
    done = subprocess.run([sys.executable, "-m", "tunelab", "compare", str(recipe), "--output_dir", str(out),
                           "--device", "cpu"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


