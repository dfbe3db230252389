"""Every method's adapter generates what its forward pass predicts; prompt-learning adapters (prompt tuning, prefix
tuning) are the ones that did not.

transformers 5.x hands the key/value cache to ``prepare_inputs_for_generation`` as ``cache``; peft 0.21 looks for
``past_key_values``. Without tunelab's bridge a causal LM's soft prompt was injected again at every step (prompt
tuning) or its prefix dropped (prefix tuning), so every generated answer, and every score computed from one, was
wrong. The reference here is greedy decoding by the adapter's own forward pass on the whole sequence, no cache."""

from __future__ import annotations

import pytest
import torch

from tunelab import inference


def _prompt_learning(model_path, kind: str, task_type: str):
    """The tiny model with weights drawn wide enough that greedy answers depend on the input (the fixtures' small
    initialisation repeats one token whatever comes in, which would hide a misplaced prompt)."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    auto = AutoModelForCausalLM if task_type == "CAUSAL_LM" else AutoModelForSeq2SeqLM
    wide = ({"initializer_range": 0.6} if task_type == "CAUSAL_LM" else {"initializer_factor": 30.0})
    base = auto.from_config(AutoConfig.from_pretrained(model_path, **wide))
    config = (PromptTuningConfig(task_type=task_type, num_virtual_tokens=4) if kind == "prompt_tuning"
              else PrefixTuningConfig(task_type=task_type, num_virtual_tokens=4))
    return get_peft_model(base, config).eval()


def _greedy_by_forward(model, input_ids, steps: int, *, seq2seq: bool, start_id: int | None) -> list[int]:
    out: list[int] = []
    with torch.no_grad():
        for _ in range(steps):
            if seq2seq:
                decoder = torch.tensor([[start_id, *out]])
                logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                               decoder_input_ids=decoder, use_cache=False).logits
            else:
                seq = torch.cat([input_ids, torch.tensor([out], dtype=input_ids.dtype)], dim=1)
                logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits
            out.append(int(logits[0, -1].argmax()))
    return out


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_generation_follows_the_adapter(kind, arch, tiny_llama, tiny_t5):
    path, task_type = (tiny_llama, "CAUSAL_LM") if arch == "llama" else (tiny_t5, "SEQ_2_SEQ_LM")
    base = inference.load(str(path), None, use_cpu=True, template="plain")
    model = _prompt_learning(str(path), kind, task_type)
    lm = inference.LoadedModel(model, base.tokenizer, base.task_kind, base.template, base.model_path,
                               {"default": "in memory"}, dtype=torch.float32)
    prompts = [[{"role": "user", "content": "count the books in the shop"}],
               [{"role": "user", "content": "which author wrote the longest book of all"}]]
    steps = 8
    answers, _ = inference.generate(lm, prompts, max_new_tokens=steps, min_new_tokens=steps, strip=False)
    tok = base.tokenizer
    seq2seq = arch == "t5"
    for messages, answer in zip(prompts, answers):
        ids = tok(inference.prompt_text(lm, messages), return_tensors="pt",
                  add_special_tokens=seq2seq)["input_ids"]
        want = _greedy_by_forward(model, ids, steps, seq2seq=seq2seq,
                                  start_id=model.config.decoder_start_token_id if seq2seq else None)
        assert answer == tok.decode(want, skip_special_tokens=True), (kind, arch)


def test_with_the_adapter_disabled_generation_is_the_base_s(tiny_llama):
    """The retention probes' adapter-disabled pass: twice in one disable_adapter() block, the base's answers."""
    base = inference.load(str(tiny_llama), None, use_cpu=True, template="plain")
    model = _prompt_learning(str(tiny_llama), "prompt_tuning", "CAUSAL_LM")
    lm = inference.LoadedModel(model, base.tokenizer, base.task_kind, base.template, base.model_path,
                               {"default": "in memory"}, dtype=torch.float32)
    plain = inference.LoadedModel(model.get_base_model(), base.tokenizer, base.task_kind, base.template,
                                  base.model_path, dtype=torch.float32)
    prompts = [[{"role": "user", "content": "count the books in the shop"}]]
    settings = dict(max_new_tokens=6, min_new_tokens=6, strip=False)
    want = inference.generate(plain, prompts, **settings)[0]
    tuned = inference.generate(lm, prompts, **settings)[0]
    with inference.adapter_disabled(lm) as off:
        assert inference.generate(off, prompts, **settings)[0] == want
        assert inference.generate(off, prompts, **settings)[0] == want
        # batched as the base is (padded batches), so that "adapter disabled equals the base" compares like with
        # like: in bf16, which rows share a batch moves the answers slightly
        texts = [inference.prompt_text(lm, p) for p in ([{"role": "user", "content": "a"}],
                                                           [{"role": "user", "content": "a longer prompt"}])]
        assert inference._generation_batches(off, texts, 8, 1024) == inference._generation_batches(plain, texts, 8,
                                                                                                 1024) == [[0, 1]]
    assert inference._generation_batches(lm, texts, 8, 1024) == [[0], [1]]  # the adapter on: one length a batch
    assert inference.generate(lm, prompts, **settings)[0] == tuned != want


def _every_peft_method():
    from tunelab.methods import get_method, method_names

    # (qlora: lora on a 4-bit base, which generates through the same peft path)
    return [(name, arch) for arch, kind in (("llama", "causal_lm"), ("t5", "seq2seq_lm")) for name in method_names()
            if get_method(name).peft and kind in get_method(name).task_kinds and name != "qlora"]


@pytest.mark.parametrize(("name", "arch"), _every_peft_method())
def test_every_method_generates_what_its_forward_pass_predicts(name, arch, tiny_llama, tiny_t5):
    """Each method's adapter, its weights moved off their identity start, batched with a prompt of another length:
    greedy generation equals greedy decoding by the adapter's forward pass on the prompt alone, without a cache."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from tunelab.config import TrainOptions
    from tunelab.methods import get_method
    from tunelab.methods.base import ApplyContext

    seq2seq = arch == "t5"
    path, kind = (str(tiny_t5), "seq2seq_lm") if seq2seq else (str(tiny_llama), "causal_lm")
    base = inference.load(path, None, use_cpu=True, template="plain")
    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM
    wide = auto.from_config(AutoConfig.from_pretrained(path, **({"initializer_factor": 30.0} if seq2seq
                                                                 else {"initializer_range": 0.6})))
    opts = TrainOptions(model_name_or_path=path, dataset_name_or_path="x.jsonl", output_dir="o",
                        method=name, lora_r=4, num_virtual_tokens=4, max_steps=10)
    model = get_method(name).apply(wide, opts, ApplyContext(task_kind=kind, model_path=path, total_steps=10)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.5)
    lm = inference.LoadedModel(model, base.tokenizer, base.task_kind, base.template, base.model_path,
                               {"default": "in memory"}, dtype=torch.float32)
    prompts = [[{"role": "user", "content": "count the books in the shop"}],
               [{"role": "user", "content": "which author wrote the longest book of all"}]]
    answers, _ = inference.generate(lm, prompts, max_new_tokens=6, min_new_tokens=6, strip=False)
    for messages, answer in zip(prompts, answers):
        ids = base.tokenizer(inference.prompt_text(lm, messages), return_tensors="pt",
                             add_special_tokens=seq2seq)["input_ids"]
        want = _greedy_by_forward(model, ids, 6, seq2seq=seq2seq,
                                  start_id=model.config.decoder_start_token_id if seq2seq else None)
        assert answer == base.tokenizer.decode(want, skip_special_tokens=True), (name, arch)


@pytest.mark.parametrize("kind", ["prompt_tuning", "prefix_tuning"])
def test_lm_eval_generation_follows_the_adapter(kind, tiny_llama):
    """A benchmark that generates (lm-eval's generate_until) through the HFLM tunelab builds: the adapter's answers,
    documents of different lengths in one call."""
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from tunelab.evaluation.benchmarks import lm_eval_model

    base = inference.load(str(tiny_llama), None, use_cpu=True, template="plain")
    model = _prompt_learning(str(tiny_llama), kind, "CAUSAL_LM")
    contexts = ["count the books in the shop", "which author wrote the longest book of all"]
    until = {"until": ["<never written>"], "max_gen_toks": 6, "do_sample": False}
    requests = [Instance(request_type="generate_until", doc={}, arguments=(c, until), idx=i)
                for i, c in enumerate(contexts)]
    with lm_eval_model(model, base.tokenizer, batch_size=8, generates=True) as lm:
        answers = lm.generate_until(requests, disable_tqdm=True)
    tok = base.tokenizer
    for context, answer in zip(contexts, answers):
        ids = tok(context, return_tensors="pt", add_special_tokens=False)["input_ids"]
        want = _greedy_by_forward(model, ids, 6, seq2seq=False, start_id=None)
        if tok.eos_token_id in want:  # generation stops there
            want = want[:want.index(tok.eos_token_id)]
        assert answer == tok.decode(want), kind
