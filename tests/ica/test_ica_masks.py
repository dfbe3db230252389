"""Masks on real models: lesion zeroes exactly the selected channels of the MLP outputs and preserve keeps exactly
them (checked on the hooked outputs); removing them leaves no hook; the anti-drift parametrization keeps frozen
rows bit-identical under AdamW with weight decay and bakes into plain weights."""

from __future__ import annotations

import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.ica.masks import AntiDrift, ChannelMasks, decoder_blocks, model_layout, zero_masks

from conftest import builtin_model


def _observe(blocks, store, key):
    def make(i):
        def hook(module, args, output):
            store[(key, i)] = output.detach().clone()
        return hook
    return [b.mlp.register_forward_hook(make(i)) for i, b in enumerate(blocks)]


def check_masks(model, selection, mode, input_ids):
    """Register an observer before the masks (sees the raw MLP output) and one after (sees the masked one)."""
    blocks = decoder_blocks(model)
    hidden = model_layout(model).hidden_size
    store = {}
    handles = _observe(blocks, store, "raw")
    masks = ChannelMasks(blocks, zero_masks(selection, mode, hidden))
    masks.install()
    handles += _observe(blocks, store, "masked")
    with torch.no_grad():
        model(input_ids=input_ids)
    for i in range(len(blocks)):
        raw, masked = store[("raw", i)], store[("masked", i)]
        selected = torch.zeros(hidden, dtype=torch.bool)
        selected[selection.get(i, [])] = True
        if i not in selection:
            assert torch.equal(raw, masked), f"layer {i} holds no selected channel and must be untouched"
            continue
        zeroed = selected if mode == "lesion" else ~selected
        assert (masked[..., zeroed] == 0).all()
        assert torch.equal(masked[..., ~zeroed], raw[..., ~zeroed])
        assert (raw[..., zeroed] != 0).any()  # the zeros are the mask's doing
    masks.remove()
    for h in handles:
        h.remove()
    assert all(not b.mlp._forward_hooks for b in blocks)


@pytest.mark.parametrize("mode", ["lesion", "preserve"])
def test_masks_zero_exactly_the_right_channels(mode, tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    ids = torch.randint(5, 300, (2, 12))
    with torch.no_grad():
        before = model(input_ids=ids).logits
    check_masks(model, {1: [0, 5, 17, 63]}, mode, ids)          # layer 0 has no selected channel
    check_masks(model, {0: [3], 1: list(range(10, 40))}, mode, ids)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before), "removed masks leave the model as it was"


def test_masks_act_through_a_peft_wrapper(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=2, target_modules=["down_proj", "q_proj"], init_lora_weights=False))
    check_masks(model, {0: [1, 2], 1: [60]}, "preserve", torch.randint(5, 300, (1, 9)))


def test_models_without_mlp_blocks_are_refused(tiny_t5, tiny_bert):
    from transformers import AutoModelForSeq2SeqLM, AutoModelForSequenceClassification

    for model in (AutoModelForSeq2SeqLM.from_pretrained(tiny_t5),
                  AutoModelForSequenceClassification.from_pretrained(tiny_bert)):
        with pytest.raises(TunelabError, match="decoder-only model whose blocks have an `mlp`"):
            decoder_blocks(model)


def _frozen(hidden, rows):
    frozen = torch.zeros(hidden, dtype=torch.bool)
    frozen[rows] = True
    return frozen


def test_anti_drift_keeps_frozen_rows_bit_identical_under_weight_decay(tiny_llama):
    """No masks here, so every row gets a gradient: only the parametrization keeps the frozen rows in place."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    blocks = decoder_blocks(model)
    base = [b.mlp.down_proj.weight.detach().clone() for b in blocks]
    params = [b.mlp.down_proj.weight for b in blocks]
    frozen = {0: _frozen(64, [0, 1, 2, 40]), 1: _frozen(64, list(range(32)))}
    anti = AntiDrift(blocks, frozen)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    ids = torch.randint(5, 300, (2, 10))
    for step in range(4):
        anti.install()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 2:   # bake and re-install in between, as around a checkpoint
            anti.bake()
            assert not any("parametrizations" in k for k in model.state_dict())
    anti.bake()
    for i, b in enumerate(blocks):
        w = b.mlp.down_proj.weight
        assert w is params[i], "baking keeps the Parameter the optimizer holds"
        assert type(b.mlp.down_proj) is torch.nn.Linear
        assert torch.equal(w[frozen[i]], base[i][frozen[i]])
        assert (w[~frozen[i]] != base[i][~frozen[i]]).any()
    assert set(model.state_dict()) == set(AutoModelForCausalLM.from_pretrained(tiny_llama).state_dict())


def test_anti_drift_on_lora_b_rows(tiny_llama):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama),
                           LoraConfig(r=2, target_modules=["down_proj"], init_lora_weights=False))
    blocks = decoder_blocks(model)
    lora_b = [b.mlp.down_proj.lora_B["default"].weight for b in blocks]
    base = [w.detach().clone() for w in lora_b]
    frozen = {1: _frozen(64, [3, 4, 9])}
    anti = AntiDrift(blocks, frozen)
    anti.install()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.5)
    ids = torch.randint(5, 300, (2, 10))
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    anti.bake()
    assert torch.equal(lora_b[1][frozen[1]], base[1][frozen[1]])
    assert (lora_b[1][~frozen[1]] != base[1][~frozen[1]]).any()
    assert (lora_b[0] != base[0]).any(), "layer 0 has no frozen rows and trains freely"
    from peft import get_peft_model_state_dict

    assert all("parametrizations" not in k for k in get_peft_model_state_dict(model))


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(builtin_model("smollm2-135m"))


@pytest.mark.integration
@pytest.mark.xdist_group("smollm2")
@pytest.mark.parametrize("mode", ["lesion", "preserve"])
def test_masks_on_smollm2(mode, smollm2):
    assert model_layout(smollm2).describe() == "llama (LlamaForCausalLM), 30 layers, hidden size 576"
    gen = torch.Generator().manual_seed(0)
    selection = {layer: sorted(torch.randperm(576, generator=gen)[:40].tolist()) for layer in (0, 7, 29)}
    check_masks(smollm2, selection, mode, torch.randint(100, 5000, (1, 8), generator=gen))


@pytest.mark.integration
@pytest.mark.xdist_group("smollm2")
def test_templates_on_smollm2(smollm2):
    from transformers import AutoTokenizer

    from tunelab.ica.build import BuildSettings, build_templates

    tok = AutoTokenizer.from_pretrained(builtin_model("smollm2-135m"))
    texts = ["SELECT title FROM books WHERE price > 10", "The capital of France is Paris.",
             "How many orders are pending?", "Translate to French: the cat sat on the mat."]
    t = build_templates(smollm2, [tok(x)["input_ids"] for x in texts],
                        BuildSettings(components=3, max_pca_components=16), pad_token_id=tok.pad_token_id,
                        model_name_or_path="smollm2-135m")
    assert t.layout.num_layers == 30 and t.layout.hidden_size == 576 and t.build["features"] == 17280
    # the 98th percentile of 17,280 pairs: the top 2% (346 pairs) per component
    assert [sum(map(len, c.values())) for c in t.components] == [346, 346, 346]
