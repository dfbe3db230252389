"""Weight diagnostics: on a ΔW built with a known rank and known new singular directions the effective rank and the
intruder count come out exactly; a LoRA of rank r gives ΔW of rank at most r; `tunelab diagnose` on saved runs."""

from __future__ import annotations

import json

import pytest
import torch

from tunelab.cli import main
from tunelab.config import TrainOptions
from tunelab.evaluation.diagnostics import (MITIGATED_DIR, diagnose, effective_rank, largest_cosines,
                                            matrix_diagnostics)
from tunelab.training import train

from conftest import write_jsonl


def _constructed(replaced: list[int], new_values: list[float]):
    """W_base = U diag(s) V^T (24 x 16, full rank). W_tuned replaces the left singular vectors u_j, j in
    ``replaced``, by new directions orthogonal to every u_i, with singular value c_j: ΔW = Σ_j (c_j u'_j − s_j u_j)
    v_j^T, rank len(replaced), singular values sqrt(c_j² + s_j²)."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen, dtype=torch.float64))
    u, extra = q[:, :16], q[:, 16:]            # the base's left singular vectors, and 8 directions outside them
    v, _ = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))
    s = torch.linspace(1.0, 0.1, 16, dtype=torch.float64)
    w_base = u @ torch.diag(s) @ v.T
    delta = torch.zeros(24, 16, dtype=torch.float64)
    for i, (j, c) in enumerate(zip(replaced, new_values)):
        delta += torch.outer(c * extra[:, i] - s[j] * u[:, j], v[:, j])
    return w_base, delta, s


def test_effective_rank_counts_the_singular_values_holding_90_percent():
    assert effective_rank(torch.tensor([3.0, 1.0, 0.0])) == 1        # 9 / 10 of the energy in one value
    assert effective_rank(torch.tensor([2.0, 1.0, 1.0])) == 3        # 4/6, 5/6 < 0.9
    assert effective_rank(torch.zeros(5)) == 0


def test_constructed_delta_gives_exact_rank_and_intruders():
    # three new directions with singular values 4, 2, 1 (above every base value): energies ~16:4:1 of ΔW
    w_base, delta, s = _constructed([0, 5, 9], [4.0, 2.0, 1.0])
    assert torch.linalg.matrix_rank(delta) == 3
    sv = torch.linalg.svdvals(delta)[:3]
    energy = (sv ** 2).cumsum(0) / (sv ** 2).sum()
    assert energy[0] < 0.9 <= energy[1]  # so two values hold 90% of it
    d = matrix_diagnostics(w_base, delta)
    assert d["effective_rank"] == 2
    assert d["intruders"] == 3
    cos = d["largest_cosines"]
    assert sorted(cos)[:3] == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)   # new directions: orthogonal to the base
    assert sorted(cos)[3:] == pytest.approx([1.0] * 7, abs=1e-9)          # the rest are the base's own vectors
    assert d["frobenius_norm"] == pytest.approx(float(torch.sqrt((torch.tensor([4.0, 2.0, 1.0]) ** 2).sum()
                                                                 + (s[[0, 5, 9]] ** 2).sum())))


def test_new_directions_below_the_top_k_are_not_counted():
    # a new direction with a small singular value (0.05, below the base's top 10) is not among the top k
    w_base, delta, _ = _constructed([0, 3], [5.0, 0.05])
    assert matrix_diagnostics(w_base, delta)["intruders"] == 1
    assert largest_cosines(w_base, w_base, top_k=10).min() == pytest.approx(1.0)  # no change: no intruder


ROWS = [{"instruction": "Count the books.", "input": "", "output": "SELECT count(*) FROM books"},
        {"instruction": "Name the capital of France.", "input": "", "output": "Paris is the capital"}]


def _train(tiny_llama, tmp_path, name, **extra):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    opts = TrainOptions(model_name_or_path=str(tiny_llama), dataset_name_or_path=str(data),
                        output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=2,
                        max_seq_length=48, save_steps=100, seed=0, use_cpu=True, **extra)
    return train(opts, explicit=set(extra)).output_dir


def test_lora_delta_has_rank_at_most_r(tiny_llama, tmp_path):
    out = _train(tiny_llama, tmp_path, "lora", method="lora", lora_r=2, learning_rate=5e-2)
    result = diagnose(out)
    assert result["method"] == "lora" and result["matrices"] > 0
    for name, m in result["per_matrix"].items():
        assert m["effective_rank"] <= 2, name
    assert (out / "diagnostics.json").is_file()
    shares = result["by_layer_type"]
    assert set(shares) <= {"attention", "mlp", "other"} and "attention" in shares and "mlp" in shares
    assert sum(v["energy_share"] for v in shares.values()) == pytest.approx(1.0)
    assert sum(v["energy_share"] for v in result["by_depth"].values()) == pytest.approx(1.0)
    assert set(result["by_depth"]) == {"0", "1"}


def test_diagnose_cli_full_and_mitigate(tiny_llama, tmp_path, capsys):
    full = _train(tiny_llama, tmp_path, "full", method="full", learning_rate=1e-3)
    assert main(["diagnose", str(full)]) == 0
    printed = capsys.readouterr().out
    assert "effective rank" in printed and "intruder" in printed
    result = json.loads((full / "diagnostics.json").read_text())
    # full fine-tuning changes every linear layer but the (tied) output head: 7 per block x 2 blocks
    assert result["method"] == "full" and result["matrices"] == 14
    lora = _train(tiny_llama, tmp_path, "lora", method="lora", lora_r=4, learning_rate=5e-2)
    assert main(["diagnose", str(lora), "--mitigate"]) == 0
    printed = capsys.readouterr().out
    mitigated = lora / MITIGATED_DIR
    assert (mitigated / "adapter_config.json").is_file() and (mitigated / "tunelab_config.yaml").is_file()
    assert str(mitigated) in printed
    # the mitigated adapter is an adapter like any other: it loads, and it is diagnosed too
    assert json.loads((mitigated / "diagnostics.json").read_text())["method"] == "lora"
    # the run as the other commands take it, by flag
    (mitigated / "diagnostics.json").unlink()
    assert main(["diagnose", "--adapter", str(mitigated)]) == 0
    assert (mitigated / "diagnostics.json").is_file()
    assert main(["diagnose"]) == 2 and "missing required option(s): --run_dir" in capsys.readouterr().err
    assert main(["diagnose", str(tmp_path / "nowhere")]) == 2
    assert main(["diagnose", str(full), "--mitigate"]) == 2
    assert "for LoRA adapters" in capsys.readouterr().err
