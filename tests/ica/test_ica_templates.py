"""ICA templates: the pipeline recovers planted networks, building is deterministic for a seed, the one JSON format
round-trips and is validated, layer specs parse, and templates for another model are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunelab.errors import TunelabError
from tunelab.ica import split_method_spec
from tunelab.ica.build import BuildSettings, build_templates, choose_sequences, independent_components
from tunelab.ica.templates import FORMAT, VERSION, IcaTemplates, Layout, parse_layers

from conftest import ALPACA_ROWS


def _sequences(tokenizer, n=16):
    rows = (ALPACA_ROWS * 8)[:n]
    return [tokenizer(f"{r['instruction']} {r['input']} {r['output']}")["input_ids"] for r in rows]


@pytest.mark.parametrize("max_pca", [4, 1000], ids=["with-pca", "without-pca"])
def test_planted_networks_are_recovered(max_pca):
    """Two non-Gaussian sources drive two groups of (layer, channel) columns; each component must be one group."""
    rng = np.random.default_rng(0)
    tokens, layers, hidden = 4000, 2, 8
    s1, s2 = rng.laplace(size=tokens), rng.uniform(-1.7, 1.7, size=tokens)
    X = 0.05 * rng.standard_normal((tokens, layers * hidden))
    for col in (0, 1, 2):            # layer 0, channels 0-2
        X[:, col] += (1.0 + 0.1 * col) * s1
    for col in (9, 10, 11):          # layer 1, channels 1-3
        X[:, col] += (1.0 + 0.1 * col) * s2
    settings = BuildSettings(components=2, percentile=81.0, max_pca_components=max_pca, seed=0)
    components, info = independent_components(X.astype(np.float32), hidden, settings)
    assert info["pca_components"] == (4 if max_pca == 4 else None)
    assert info["fastica"]["converged"]
    assert sorted(components, key=lambda c: min(c)) == [{0: [0, 1, 2]}, {1: [1, 2, 3]}]


def test_build_is_deterministic_for_a_seed_and_round_trips(tiny_llama, tiny_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    seqs = _sequences(tiny_tokenizer)
    settings = BuildSettings(samples=12, components=4, percentile=90.0, max_pca_components=32, seed=3)
    kwargs = dict(pad_token_id=tiny_tokenizer.pad_token_id, model_name_or_path="tiny")
    first = build_templates(model, seqs, settings, **kwargs)
    second = build_templates(model, seqs, settings, **kwargs)
    assert first.components == second.components
    assert first.layout == Layout("llama", "LlamaForCausalLM", 2, 64)
    assert first.build["sequences"] == 12 and first.build["pca_components"] == 32
    # every token of the 12 chosen sequences, no padding
    assert first.build["tokens"] == sum(len(s) for s in choose_sequences(seqs, 12, 3)) < sum(len(s) for s in seqs)
    for comp in first.components:    # 90th percentile of 128 pairs: the top 13
        assert sum(len(ch) for ch in comp.values()) == 13
        assert all(0 <= layer < 2 and all(0 <= c < 64 for c in ch) for layer, ch in comp.items())

    path = first.save(tmp_path / "t.json")
    data = json.loads(path.read_text())
    assert data["format"] == FORMAT and data["version"] == VERSION
    assert data["layout"] == {"model_type": "llama", "architecture": "LlamaForCausalLM", "num_layers": 2,
                              "hidden_size": 64}
    assert [c["id"] for c in data["components"]] == [0, 1, 2, 3]
    loaded = IcaTemplates.load(path)
    assert loaded.components == first.components and loaded.layout == first.layout
    assert loaded.to_json() == data
    other_seed = build_templates(model, seqs, BuildSettings(samples=12, components=4, percentile=90.0,
                                                             max_pca_components=32, seed=4), **kwargs)
    assert other_seed.components != first.components


def test_padding_is_excluded_from_the_activations(tiny_llama, tiny_tokenizer):
    """Batching sequences of different lengths together or one by one gives the same activation rows."""
    from transformers import AutoModelForCausalLM

    from tunelab.ica.build import collect_activations

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    seqs = _sequences(tiny_tokenizer, 6)
    assert len({len(s) for s in seqs}) > 1
    batched = collect_activations(model, seqs, pad_token_id=tiny_tokenizer.pad_token_id, batch_size=6)
    single = collect_activations(model, seqs, pad_token_id=tiny_tokenizer.pad_token_id, batch_size=1)
    assert batched.shape == (sum(len(s) for s in seqs), 2 * 64)
    np.testing.assert_allclose(batched, single, atol=1e-5)


def _valid() -> dict:
    return {"format": FORMAT, "version": 1,
            "layout": {"model_type": "llama", "architecture": None, "num_layers": 2, "hidden_size": 8},
            "components": [{"id": 0, "layers": {"0": [1, 2]}}, {"id": 1, "layers": {"1": [7], "0": [2, 3]}}]}


@pytest.mark.parametrize("change, needle", [
    (lambda d: d.update(format="other"), "not an ICA template file"),
    (lambda d: d.update(version=2), "version 2 is newer"),
    (lambda d: d["components"][1].update(id=5), "ids in order"),
    (lambda d: d["components"][0]["layers"].update({"0": [8]}), "channel indices must be in [0, 8)"),
    (lambda d: d["components"][0]["layers"].update({"2": [1]}), "layer 2 is outside"),
    (lambda d: d["layout"].pop("hidden_size"), "'layout' needs"),
    (lambda d: d.update(components=[]), "non-empty list"),
])
def test_bad_template_files_are_refused(change, needle):
    data = _valid()
    change(data)
    with pytest.raises(TunelabError) as e:
        IcaTemplates.from_json(data, "--ica_templates t.json")
    assert needle in str(e.value) and "--ica_templates t.json" in str(e.value)


def test_select_unions_components_and_filters_layers():
    t = IcaTemplates.from_json(_valid(), "t")
    assert t.select() == {0: [1, 2, 3], 1: [7]}
    assert t.select([1]) == {0: [2, 3], 1: [7]}
    assert t.select(None, [1]) == {1: [7]}
    assert t.select([0], [1]) == {}
    with pytest.raises(TunelabError, match="components 0 to 1"):
        t.select([2])


def test_layout_mismatch_names_both_layouts():
    t = IcaTemplates.from_json(_valid(), "t")
    t.model_name_or_path = "tiny-gpt2"
    with pytest.raises(TunelabError) as e:
        t.check_layout(Layout("llama", "LlamaForCausalLM", 30, 576), source="--ica_templates t.json",
                       model="smollm2-135m")
    text = str(e.value)
    assert "2 layers, hidden size 8 (tiny-gpt2)" in text and "30 layers, hidden size 576" in text
    assert "tunelab ica build" in text
    t.check_layout(Layout("llama", "LlamaForCausalLM", 2, 8), source="t", model="m")  # same layout: fine


@pytest.mark.parametrize("spec, n, expected", [
    ("0,2:5", 8, [0, 2, 3, 4]), ("5:", 8, [5, 6, 7]), (":2", 8, [0, 1]), ("3", 8, [3]), (" 1 , 1:3", 8, [1, 2]),
    (None, 8, None),
])
def test_layer_specs(spec, n, expected):
    assert parse_layers(spec, n) == expected


@pytest.mark.parametrize("spec, n, needle", [
    ("a", None, "'a' is not a layer index"), ("3:1", None, "'3:1'"), ("-1", None, "'-1'"), ("", None, "empty"),
    ("0,9", 8, "layer 9 does not exist; the model has layers 0 to 7"),
])
def test_bad_layer_specs(spec, n, needle):
    with pytest.raises(TunelabError, match="--ica_mask_layers") as e:
        parse_layers(spec, n)
    assert needle in str(e.value)


def test_method_specs():
    assert split_method_spec("lora+ica_preserve") == ("lora", "preserve")
    assert split_method_spec("full+ica_lesion") == ("full", "lesion")
    assert split_method_spec("qlora") == ("qlora", None)
    with pytest.raises(TunelabError, match="lesion or preserve"):
        split_method_spec("lora+ica_keep")
