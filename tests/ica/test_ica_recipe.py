"""Recipes list masked methods as `X+ica_Y`: method X trained with --mask_mode Y, labelled with the full spec."""

from __future__ import annotations

import pytest

from tunelab.comparison.recipe import apply_overrides, load_recipe, parse_recipe
from tunelab.errors import TunelabError

RAW = {"model": "smollm2-135m", "task": "text2sql", "data": {"train": "t.jsonl", "eval": "e.jsonl"}}


def test_masked_method_entries():
    recipe = parse_recipe({**RAW, "methods": ["lora", "lora+ica_preserve",
                                              {"method": "full+ica_lesion", "label": "full lesion",
                                               "ica_component_ids": [0, 1], "anti_drift": True}]}, source="r.yaml")
    plain, preserve, lesion = recipe.methods
    assert (plain.label, plain.method, plain.overrides) == ("lora", "lora", {})
    assert (preserve.label, preserve.method, preserve.overrides) == ("lora+ica_preserve", "lora",
                                                                     {"mask_mode": "preserve"})
    assert (lesion.label, lesion.method) == ("full lesion", "full")
    opts = recipe.train_options(lesion, 0, train_file="t.jsonl", output_dir="o")
    assert (opts.method, opts.mask_mode, opts.ica_component_ids, opts.anti_drift) == ("full", "lesion", [0, 1], True)
    assert recipe.run_key(plain, 0) != recipe.run_key(preserve, 0)


@pytest.mark.parametrize("entry, needle", [
    ("lora+ica_keep", "must be lesion or preserve"),
    ("lorax+ica_lesion", "unknown method 'lorax'"),
    ({"method": "lora+ica_lesion", "mask_mode": "preserve"}, "also sets mask_mode 'preserve'"),
])
def test_bad_masked_entries(entry, needle):
    with pytest.raises(TunelabError) as e:
        parse_recipe({**RAW, "methods": [entry]}, source="r.yaml")
    assert needle in str(e.value) and "recipe r.yaml" in str(e.value)


def test_builtin_demo_ica_recipe():
    recipe = load_recipe("demo-ica")
    assert [m.label for m in recipe.methods] == ["lora", "lora+ica_preserve", "lora+ica_lesion",
                                                 "lora+ica_lesion 2 components", "lora+ica_lesion layers 15+",
                                                 "lora+ica_preserve anti_drift", "lora+ica_lesion anti_drift",
                                                 "full", "full+ica_preserve"]
    demo = load_recipe("demo")
    assert recipe.budget == demo.budget and recipe.eval == demo.eval and recipe.data == demo.data
    modes = [recipe.train_options(m, 0, train_file="t.jsonl", output_dir="o").mask_mode for m in recipe.methods]
    assert modes == ["none", "preserve", "lesion", "lesion", "lesion", "preserve", "lesion", "none", "preserve"]
    smaller = [recipe.train_options(m, 0, train_file="t.jsonl", output_dir="o") for m in recipe.methods[3:7]]
    assert [(o.ica_component_ids, o.ica_mask_layers, o.anti_drift) for o in smaller] == [
        ([0, 1], None, False), (None, "15:", False), (None, None, True), (None, None, True)]
    masked = recipe.train_options(recipe.methods[1], 0, train_file="t.jsonl", output_dir="o")
    assert (masked.ica_samples, masked.ica_max_pca_components, masked.ica_templates) == (32, 128, None)
    # --methods can name a masked method the recipe does not list
    picked = apply_overrides(recipe, methods=["full+ica_lesion", "lora"])
    assert [(m.label, m.method, m.overrides.get("mask_mode")) for m in picked.methods] == [
        ("full+ica_lesion", "full", "lesion"), ("lora", "lora", None)]
