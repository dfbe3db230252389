"""An adapter given without --model_name_or_path: its base is the one its run saved (inference.base_for)."""

from __future__ import annotations

import json

import pytest
import yaml

from tunelab.errors import TunelabError
from tunelab.inference import base_for


def _adapter(tmp_path, run_base=None, peft_base=None):
    folder = tmp_path / "adapter"
    folder.mkdir()
    if run_base is not None:
        (folder / "tunelab_config.yaml").write_text(yaml.safe_dump({"model_name_or_path": run_base}))
    if peft_base is not None:
        (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": peft_base}))
    return folder


def test_a_given_model_wins(tmp_path):
    assert base_for("smollm2-135m", str(_adapter(tmp_path, run_base="other"))) == "smollm2-135m"


def test_the_run_s_own_name_comes_first_and_a_built_in_name_stays_one(tmp_path):
    adapter = _adapter(tmp_path, run_base="smollm2-135m", peft_base="/root/.cache/tunelab/models/smollm2-135m")
    assert base_for(None, str(adapter)) == "smollm2-135m"


def test_a_relative_path_that_leads_nowhere_from_here_falls_back_to_peft_s(tmp_path):
    adapter = _adapter(tmp_path, run_base="./models/base", peft_base=str(tmp_path))
    assert base_for(None, str(adapter)) == str(tmp_path)


@pytest.mark.parametrize(("model", "adapter", "needle"), [
    (None, None, "missing required option(s): --model_name_or_path"),
    (None, "no/such/adapter", "--adapter no/such/adapter: no such directory"),
])
def test_nothing_to_go_on_is_one_clear_error(model, adapter, needle):
    with pytest.raises(TunelabError, match=None) as e:
        base_for(model, adapter)
    assert needle in str(e.value)


def test_an_adapter_that_saved_no_usable_base_says_pass_the_model(tmp_path):
    adapter = _adapter(tmp_path, run_base="./models/base")
    with pytest.raises(TunelabError) as e:
        base_for(None, str(adapter))
    assert "names no base model that can be found here (./models/base)" in str(e.value)
    assert "--model_name_or_path" in str(e.value)


def test_an_unreadable_adapter_config_is_one_clear_error(tmp_path):
    adapter = _adapter(tmp_path)
    (adapter / "adapter_config.json").write_text("{not json")
    with pytest.raises(TunelabError) as e:
        base_for(None, str(adapter))
    assert f"--adapter {adapter}: adapter_config.json is not valid JSON" in str(e.value)
