"""Methods declare their capabilities and options; code outside the registry reads the declarations.

Nothing here names a method where a declaration can be asked instead: a new method is checked by being registered.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from tunelab import methods
from tunelab.config import TrainOptions
from tunelab.errors import TunelabError
from tunelab.methods import ApplyContext, get_method, method_names, method_of_adapter

TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainOptions)}
PEFT_METHODS = [m for m in method_names() if get_method(m).peft]


class _Recorder:
    """TrainOptions that remember which fields were read."""

    def __init__(self, opts):
        self._opts, self.read = opts, set()

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._opts, name)


@pytest.mark.parametrize("name", method_names())
def test_declared_options_are_train_options_and_cover_what_peft_config_reads(name, tiny_llama):
    from transformers import AutoModelForCausalLM

    method = get_method(name)
    declared = {o.name for o in method.options}
    assert declared <= TRAIN_FIELDS, f"{name} declares options TrainOptions does not have"
    assert method.rank_option is None or method.rank_option in declared
    if not method.peft or "causal_lm" not in method.task_kinds:
        return
    opts = _Recorder(TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path="x.jsonl",
                                  output_dir="out", method=name, prompt_tuning_init="text",
                                  prompt_tuning_init_text="answer the question"))
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    method.peft_config(opts, model, ApplyContext(task_kind="causal_lm", model_path=str(tiny_llama), total_steps=10))
    assert opts.read <= declared, f"{name}.peft_config reads undeclared {opts.read - declared}"


def test_a_saved_adapter_maps_back_to_its_method():
    assert method_of_adapter({"peft_type": "LORA"}, "dora").name == "dora"    # the run's method wins
    assert method_of_adapter({"peft_type": "LORA"}).name == "lora"           # a plain peft LoRA adapter
    assert method_of_adapter({"peft_type": "PREFIX_TUNING"}).name == "prefix_tuning"
    assert method_of_adapter({"peft_type": "P_TUNING"}) is None              # no tunelab method makes it
    for name in PEFT_METHODS:
        assert get_method(name).peft_type, f"{name} declares no peft_type"
        assert method_of_adapter({"peft_type": get_method(name).peft_type}).peft_type == get_method(name).peft_type


def test_packing_is_refused_by_declaration(tiny_llama, tmp_path):
    from tunelab.training import check_options

    data = tmp_path / "x.jsonl"
    data.write_text("")
    base = dict(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data), output_dir="out",
                max_steps=1, packing=True)
    for name in method_names():
        opts = TrainOptions(method=name, **base)
        if get_method(name).supports_packing:
            check_options(opts)
        else:
            with pytest.raises(TunelabError, match=f"--packing cannot be used with --method {name}"):
                check_options(opts)


def _adapter_dir(tmp_path, method, adapter_config):
    d = tmp_path / method
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(adapter_config))
    (d / "tunelab_config.yaml").write_text(yaml.safe_dump({"method": method, "lora_r": 16, "lora_alpha": 32}))
    return d


def test_mergeability_comes_from_the_methods_declaration_then_from_peft(tmp_path):
    from tunelab.merge import check_mergeable

    for name in PEFT_METHODS:
        d = _adapter_dir(tmp_path, name, {"peft_type": get_method(name).peft_type})
        if get_method(name).mergeable:
            assert check_mergeable(d) == get_method(name).peft_type
        else:
            with pytest.raises(TunelabError, match=f"{name} adapters cannot be merged"):
                check_mergeable(d)
    foreign = tmp_path / "p_tuning"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text(json.dumps({"peft_type": "P_TUNING"}))
    with pytest.raises(TunelabError, match="p_tuning adapters cannot be merged"):
        check_mergeable(foreign)


def test_help_and_method_table_are_generated_from_the_declarations():
    from tunelab.methods import method_table
    from tunelab.options import fields_of

    fields = {f.name: f for f in fields_of(TrainOptions)}
    helps = {name: f.metadata["help"] for name, f in fields.items()}
    helps = {name: h() if callable(h) else h for name, h in helps.items()}
    for name in method_names():
        method = get_method(name)
        for option in method.options:
            # the flag's default, choices and help are the declaration's; --help names the methods that read it
            field = fields[option.name]
            assert field.default == option.default and field.metadata["choices"] == option.choices
            assert helps[option.name] == f"[{', '.join(methods.used_by(option.name))}] {option.help}"
            assert name in helps[option.name].split("]")[0], f"--{option.name}'s help does not name {name}"
        if name != "full":
            assert name in helps["method"]
        assert name in helps["learning_rate"]
        assert f"| `{name}` | {method.summary} |" in method_table()


def test_a_method_flag_has_exactly_one_declaration(monkeypatch):
    from tunelab.methods.base import MethodFlag

    with pytest.raises(ValueError, match="0 declarations"):
        methods.flag_declaration("no_such_flag")
    # a second, different declaration of --lora_r is refused, not silently merged (replaced in place: the
    # registry's order is the order of --help)
    rival = dataclasses.replace(get_method("vera"), options=(MethodFlag("lora_r", 4, "another rank"),))
    monkeypatch.setitem(methods._REGISTRY, "vera", rival)
    with pytest.raises(ValueError, match="2 declarations"):
        methods.flag_declaration("lora_r")


# The model card shows the hyper-parameters the method declares, as peft saved them (not the flags' values).
def test_model_card_shows_what_the_method_used_not_the_rank_flag(tmp_path):
    from tunelab.hub import model_card

    oft = _adapter_dir(tmp_path, "oft", {"peft_type": "OFT", "r": 0, "oft_block_size": 32, "module_dropout": 0.0})
    card = model_card(oft, repo_id="me/oft")
    assert "| block size | 32 |" in card and "| rank |" not in card  # --lora_r 16 does not size OFT
    prompt = _adapter_dir(tmp_path, "prompt_tuning", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8})
    assert "| virtual tokens | 8 |" in model_card(prompt, repo_id="me/prompt")
