"""The model card shows the hyper-parameters the method declares, as peft saved them (not the flags' values)."""

from __future__ import annotations

import json

import yaml


def _adapter_dir(tmp_path, method, adapter_config):
    d = tmp_path / method
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps(adapter_config))
    (d / "tunelab_config.yaml").write_text(yaml.safe_dump({"method": method, "lora_r": 16, "lora_alpha": 32}))
    return d


def test_model_card_shows_what_the_method_used_not_the_rank_flag(tmp_path):
    from tunelab.hub import model_card

    oft = _adapter_dir(tmp_path, "oft", {"peft_type": "OFT", "r": 0, "oft_block_size": 32, "module_dropout": 0.0})
    card = model_card(oft, repo_id="me/oft")
    assert "| block size | 32 |" in card and "| rank |" not in card  # --lora_r 16 does not size OFT
    prompt = _adapter_dir(tmp_path, "prompt_tuning", {"peft_type": "PROMPT_TUNING", "num_virtual_tokens": 8})
    assert "| virtual tokens | 8 |" in model_card(prompt, repo_id="me/prompt")
