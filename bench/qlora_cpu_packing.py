"""bitsandbytes' packed CPU inference path for 4-bit weights against the path QLoRA trains through.

On a CPU with avx512_bf16, bitsandbytes' Linear4bit repacks its weight in place the first time it runs in eval
mode without gradients, and from then on computes with a packed-weight kernel. tunelab keeps the weights unpacked
(models.keep_4bit_weights_unpacked): training on repacked weights went wrong, and the packed kernel's logits differ
from the training path's. This measures, on smollm2-135m in NF4 with bf16 compute, both paths' speed (scoring a
batch, generating) and how far their logits are apart.

    .venv/bin/python bench/qlora_cpu_packing.py [--batch 8] [--length 200] [--new_tokens 32]

Writes bench/results/qlora-cpu-packing.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import write_result


def four_bit_model(model_path: str, packed: bool):
    import torch

    from tunelab.models import load_model, quantization_config

    quant = quantization_config(use_4bit=True, use_8bit=False, quant_type="nf4", compute_dtype=torch.bfloat16,
                                double_quant=True)
    model = load_model(model_path, "causal_lm", quantization=quant, device_map="cpu", dtype=torch.bfloat16)
    if packed:  # bitsandbytes' own default, which load_model turns off
        from bitsandbytes.functional import has_avx512bf16

        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = has_avx512bf16()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=200)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import torch
    from bitsandbytes.functional import has_avx512bf16

    from tunelab.models import resolve_model

    path = resolve_model(args.model)
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (args.batch, args.length))
    prompts = ids[: max(1, args.batch // 2), :50]
    result, logits = {}, {}
    for packed in (True, False):
        model = four_bit_model(path, packed)
        with torch.no_grad():
            model(input_ids=ids[:1, :8])  # (packs the weights, where bitsandbytes does)
            score, generate = [], []
            for _ in range(args.repeats):
                start = time.perf_counter()
                out = model(input_ids=ids).logits
                score.append(time.perf_counter() - start)
                start = time.perf_counter()
                model.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts),
                               max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
                generate.append(time.perf_counter() - start)
        name = "packed" if packed else "unpacked (tunelab)"
        logits[name] = out.float()
        result[name] = {"scoring_seconds": statistics.median(score), "generation_seconds": statistics.median(generate)}
        print(f"{name}: scoring {args.batch} x {args.length} tokens {result[name]['scoring_seconds']:.2f} s, "
              f"generating {prompts.shape[0]} x {args.new_tokens} tokens {result[name]['generation_seconds']:.2f} s",
              flush=True)
    a, b = logits.values()
    agreement = float((a.argmax(-1) == b.argmax(-1)).float().mean())
    diff = float((a - b).abs().max())
    print(f"next-token argmax agreement {agreement:.3f}; largest logit difference {diff:.3f}")
    write_result("qlora-cpu-packing", {"settings": vars(args), "cpu_has_avx512_bf16": bool(has_avx512bf16()),
                                       "paths": result, "argmax_agreement": agreement, "max_logit_difference": diff})


if __name__ == "__main__":
    main()
