"""Adding a method is one module and one registration: a method defined here, in the test, trains, saves, reloads and
answers through tunelab's public functions, and no other file of tunelab knows it.

The method is rank-stabilised LoRA (peft's ``use_rslora``: alpha / sqrt(r) instead of alpha / r) on the attention's
query and value projections only: a real variant a user might add, built from the declarations alone. It brings an
option no tunelab flag holds (``targets``), which --method_options sets and --help lists while it is registered.
"""

from __future__ import annotations

import pytest
import yaml

from tunelab import methods
from tunelab.config import TrainOptions
from tunelab.errors import TunelabError
from tunelab.methods.base import Method, MethodOption, task_type
from tunelab.methods.lora import LORA_ALPHA, LORA_DROPOUT, LORA_R

from conftest import ALPACA_ROWS, write_jsonl


class RsLoRA(Method):
    def peft_config(self, opts, model, ctx):
        from peft import LoraConfig

        own = self.option_values(opts)
        return LoraConfig(task_type=task_type(ctx), r=opts.lora_r, lora_alpha=opts.lora_alpha,
                          lora_dropout=opts.lora_dropout, target_modules=own["targets"].split("+"),
                          use_rslora=own["rank_stabilised"])


PLUGIN = RsLoRA(name="test_rslora", summary="rank-stabilised LoRA on q and v (Kalajievic 2023)", peft_type="LORA",
                rank_option="lora_r", options=(LORA_R, LORA_ALPHA, LORA_DROPOUT),
                hyperparameters=(("rank", "r"), ("alpha", "lora_alpha"), ("rank-stabilised", "use_rslora")),
                default_learning_rate=1e-2, default_learning_rate_why="a tiny random model in a test",
                own_options=(MethodOption("targets", "q_proj+v_proj", "projections to adapt, joined by +"),
                             MethodOption("rank_stabilised", True, "alpha / sqrt(r) scaling")))


@pytest.fixture
def plugin():
    methods.register(PLUGIN)
    try:
        yield PLUGIN
    finally:
        methods.unregister(PLUGIN.name)  # other tests see only the built-in methods


def test_a_method_defined_outside_tunelab_trains_saves_reloads_and_answers(plugin, tiny_llama, tmp_path):
    from tunelab import inference
    from tunelab.hub import model_card
    from tunelab.merge import check_mergeable
    from tunelab.training import train

    assert plugin.name in methods.method_names()
    data = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    opts = TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data),
                        output_dir=str(tmp_path / "out"), method=plugin.name, max_steps=3, logging_steps=1,
                        per_device_train_batch_size=4, max_seq_length=64, lora_r=4, lora_alpha=8, save_steps=100,
                        bf16=False, seed=0, use_cpu=True, method_options=["targets=q_proj+k_proj"])
    result = train(opts)
    r = result.results
    assert r["method"] == plugin.name and len(r["loss_curve"]) == 3
    saved = result.output_dir
    run = yaml.safe_load((saved / "tunelab_config.yaml").read_text())
    assert run["learning_rate"] == plugin.default_learning_rate  # the method's default, chosen by its declaration
    assert (saved / "adapter_model.safetensors").is_file()

    lm = inference.load(str(tiny_llama), str(saved), use_cpu=True)
    adapted = {n.split(".")[-4] for n, _ in lm.model.named_parameters() if "lora_A" in n}
    assert adapted == {"q_proj", "k_proj"}  # its own option, given on the command line
    assert lm.model.peft_config["default"].use_rslora
    answers, _ = inference.generate(lm, [[{"role": "user", "content": "Name the capital of France."}]],
                                    max_new_tokens=4)
    assert len(answers) == 1 and isinstance(answers[0], str)

    # what the rest of tunelab reads from the declarations: mergeability, the model card's hyper-parameters
    assert check_mergeable(saved) == "LORA"
    card = model_card(saved, repo_id="me/rslora")
    assert f"| method | {plugin.name} |" in card and "| rank-stabilised | True |" in card


def test_unregistered_methods_are_unknown():
    from tunelab.errors import TunelabError

    assert PLUGIN.name not in methods.method_names()
    with pytest.raises(TunelabError, match="unknown method"):
        methods.get_method(PLUGIN.name)


def test_a_plugins_own_options_are_checked_and_listed(plugin, tiny_llama, tmp_path, capsys):
    from tunelab.cli import main
    from tunelab.methods import method_table

    data = write_jsonl(tmp_path / "alpaca.jsonl", ALPACA_ROWS)
    base = ["train", "--model_name_or_path", str(tiny_llama), "--dataset_name_or_path", str(data), "--method",
            plugin.name, "--max_steps", "1", "--use_cpu", "--output_dir"]
    for i, (given, needle) in enumerate([("rank=4", "has no option 'rank'; its own options: targets, rank_stabilised"),
                                         ("rank_stabilised=maybe", "expects bool"), ("targets", "expected NAME=VALUE")]):
        out = tmp_path / f"bad{i}"
        assert main([*base, str(out), "--method_options", given]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert needle in err[-1] and len(err) == 1, err
        assert not out.exists()  # refused before anything was written
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "test_rslora: targets (default 'q_proj+v_proj'" in text
    assert "--lora_r LORA_R [lora, qlora, dora, adalora, loha, lokr, vera, test_rslora] rank" in text  # reads it
    assert "`--method_options targets=…`" in method_table()
    with pytest.raises(TunelabError, match="--method lora has no option 'targets'"):
        methods.get_method("lora").option_values(TrainOptions(model_name_or_path="m", dataset_name_or_path="d", output_dir="o",
                                                              method_options=["targets=x"]))
