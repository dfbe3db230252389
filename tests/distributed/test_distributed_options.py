"""The flags of several devices without the devices: the shipped FSDP / DeepSpeed configs are what the Trainer's
own code accepts (as far as that code runs on a CPU), and impossible combinations are one clear line, exit 2,
nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tunelab.cli import main
from tunelab.errors import TunelabError

from conftest import REPO, tiny_recipe, write_jsonl

EXAMPLES = REPO / "examples" / "distributed"


def test_fsdp_example_is_what_the_trainer_and_accelerate_accept(tmp_path):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import TrainingArguments

    path = EXAMPLES / "fsdp_full_shard.json"
    assert isinstance(json.loads(path.read_text()), dict)
    # Both spellings the README gives: --fsdp true, and the legacy "full_shard auto_wrap" on top of the file.
    for fsdp in (True, "full_shard auto_wrap"):
        args = TrainingArguments(output_dir=str(tmp_path), fsdp=fsdp, fsdp_config=str(path), use_cpu=True,
                                 report_to="none")
        plugin = FullyShardedDataParallelPlugin(**args.fsdp_plugin_args)
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # full shard
        assert "transformer_auto_wrap_policy" in getattr(plugin.auto_wrap_policy, "__name__", "")
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # save_model writes one whole file


def _trainer_deepspeed_config(path: Path):
    """transformers' HfTrainerDeepSpeedConfig, the object the Trainer fills "auto" values into. Its base class
    needs the deepspeed package (GPU-only here); accelerate's parser stands in for it, the filling is the
    Trainer's own code."""
    from accelerate.utils.deepspeed import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    class TrainerConfig(HfTrainerDeepSpeedConfig, HfDeepSpeedConfig):
        def __init__(self, config):
            HfDeepSpeedConfig.__init__(self, config)
            self._dtype, self.mismatches = None, []

    return TrainerConfig(str(path))


@pytest.mark.parametrize("name, stage, offload", [("ds_zero2", 2, False), ("ds_zero3_offload", 3, True)])
def test_deepspeed_examples_fill_from_the_training_arguments(name, stage, offload, tmp_path):
    from transformers import LlamaConfig, TrainingArguments

    path = EXAMPLES / f"{name}.json"
    config = _trainer_deepspeed_config(path)
    assert config.get_value("zero_optimization.stage") == stage and config.is_offload() == offload
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=3, gradient_accumulation_steps=2,
                             learning_rate=1e-4, bf16=False, use_cpu=True, report_to="none")
    config.trainer_config_process(args)
    config.trainer_config_finalize(args, SimpleNamespace(config=LlamaConfig(hidden_size=64)), num_training_steps=10)
    assert config.mismatches == []
    text = json.dumps(config.config)
    assert '"auto"' not in text, f"{name}: an 'auto' the Trainer does not fill: {text}"
    assert config.get_value("train_batch_size") == 3 * 2 * args.world_size
    assert config.get_value("gradient_clipping") == args.max_grad_norm


@pytest.fixture
def rows(tmp_path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a", "completion": "b"}])


@pytest.mark.parametrize("flags, needle", [
    (["--fsdp", "full_shard auto_wrap"], "--fsdp needs CUDA GPUs"),
    (["--deepspeed", str(EXAMPLES / "ds_zero2.json")], "--deepspeed needs CUDA GPUs"),
    (["--deepspeed", "no-such.json"], "--deepspeed no-such.json: file not found"),
    (["--fsdp", "true", "--deepspeed", str(EXAMPLES / "ds_zero2.json")], "choose one"),
    (["--fsdp_config", str(EXAMPLES / "fsdp_full_shard.json")], "read only with --fsdp"),
    (["--num_processes", "0"], "--num_processes 0: must be at least 1"),
])
def test_impossible_train_flags_are_one_line(flags, needle, tiny_llama, rows, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(rows),
                 "--output_dir", str(out), "--use_cpu", *flags])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("error: ") and needle in err, err
    assert "Traceback" not in err and not out.exists()


def test_the_api_points_several_processes_to_the_command_line(tiny_llama, rows, tmp_path):
    import tunelab

    with pytest.raises(TunelabError, match="tunelab train --num_processes 2"):
        tunelab.train(str(tiny_llama), str(rows), output_dir=str(tmp_path / "o"), num_processes=2, use_cpu=True)


def test_under_a_launcher_num_processes_must_agree(monkeypatch):
    from tunelab import distributed
    from tunelab.config import TrainOptions

    opts = TrainOptions(model_name_or_path="m", dataset_name_or_path="d", output_dir="o")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.settle_options(opts, set()).num_processes == 2  # recorded from the launcher
    with pytest.raises(TunelabError, match="started by a launcher with 2 processes"):
        distributed.settle_options(TrainOptions(model_name_or_path="m", dataset_name_or_path="d", output_dir="o",
                                                num_processes=4), {"num_processes"})
    assert not distributed.is_main_process() and distributed.process_label() == "(process 1 of 2) "
    assert distributed.strip_num_processes(["--a", "1", "--num_processes", "4", "--num_processes=2", "--b"]) == \
        ["--a", "1", "--b"]


def test_impossible_compare_flags_are_one_line(tiny_llama, tmp_path):
    recipe = tiny_recipe(tmp_path, tiny_llama, ["lora"])
    base = [sys.executable, "-m", "tunelab", "compare", str(recipe), "--device", "cpu"]
    # A real process each: the exit status and stderr a user sees. The second hides ray from the import system,
    # as on a machine without the extra.
    no_ray = ("import sys; sys.modules['ray'] = None; from tunelab.cli import main; "
              "sys.exit(main(sys.argv[1:]))")
    cases = [
        ([*base, "--output_dir", str(tmp_path / "a"), "--parallel", "0"], "--parallel 0: must be at least 1"),
        ([sys.executable, "-c", no_ray, *base[3:], "--output_dir", str(tmp_path / "b"), "--launcher", "ray"],
         "pip install 'tunelab[ray]'"),
        ([*base, "--output_dir", str(tmp_path / "c"), "--ray_address", "auto"], "--ray_address is read only with"),
    ]
    for cmd, needle in cases:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr[-2000:]
        lines = done.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and needle in lines[-1], done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        assert not Path(cmd[cmd.index("--output_dir") + 1]).exists(), "nothing written"
