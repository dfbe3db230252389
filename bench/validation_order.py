"""What evaluating validation rows longest first saves (training.validation_dataset).

The Trainer evaluates its eval_dataset in order, in batches padded to their longest row. A learning-rate search
validates every trial at every rung, so on long, varied rows (DialogSum) these passes are much of a trial's time.
This benchmark evaluates
smollm2-135m (bf16 where the CPU has it, as training does) on 200 DialogSum validation rows, as many as a DialogSum
search validates on (`tunelab train --validation_split 0.1 --max_eval_samples 200` on the training file), in the order
they were drawn (tunelab's order before) and longest first (its order now), interleaved, each order --repeats times after an untimed warm-up
pass of each; it prints and saves the seconds per pass, the padded token positions and the validation loss each
order gives.

    .venv/bin/python bench/validation_order.py        # -> bench/results/validation-order.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from common import REPO, write_result

SYSTEM_PROMPT = "Summarize the dialogue in one or two sentences."  # the dialogsum recipe's


def padded_positions(lengths: list[int], batch_size: int) -> int:
    """Token positions of batches of ``batch_size`` consecutive rows, each padded to its longest row."""
    return sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
               for i in range(0, len(lengths), batch_size))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--per_device_eval_batch_size", type=int, default=8)
    args = ap.parse_args()

    from datasets import Dataset

    from tunelab import precision
    from tunelab.config import TrainOptions, resolve
    from tunelab.data.prepare import prepare
    from tunelab.models import detect_task_kind, load_config, load_tokenizer, resolve_model
    from tunelab.training import (_collator, build_model, trainer_class, training_arguments,
                                  validation_dataset)

    train_file = Path(args.data_dir) / "dialogsum" / "dialogsum.train.jsonl"
    if not train_file.is_file():
        raise SystemExit(f"{train_file} not found: pass --data_dir (the shared data folder)")
    with tempfile.TemporaryDirectory() as tmp:
        opts = TrainOptions(model_name_or_path="smollm2-135m", dataset_name_or_path=str(train_file),
                            max_train_samples=2000, validation_split=0.1, max_eval_samples=200,
                            system_prompt=SYSTEM_PROMPT,
                            max_seq_length=512, method="full", output_dir=tmp, max_steps=1, eval_steps=1,
                            per_device_eval_batch_size=args.per_device_eval_batch_size, seed=0)
        prec = precision.for_options(opts)
        opts, _ = resolve(opts, set())
        model_path = resolve_model(opts.model_name_or_path)
        task_kind = detect_task_kind(load_config(model_path))
        tokenizer = load_tokenizer(model_path, task_kind=task_kind)
        tokenizer.padding_side = "right"
        data = prepare(opts, tokenizer, task_kind)
        model, _ = build_model(opts, model_path, task_kind, tokenizer, data.label_names, 1)
        orders = {"as drawn": Dataset.from_list(data.eval), "longest first": validation_dataset(data.eval)}
        trainer = trainer_class(task_kind)(model=model, args=training_arguments(opts, True, task_kind),
                                           train_dataset=Dataset.from_list(data.train), processing_class=tokenizer,
                                           eval_dataset=orders["as drawn"],
                                           data_collator=_collator(tokenizer, task_kind, model))
        seconds: dict[str, list[float]] = {name: [] for name in orders}
        losses: dict[str, float] = {}
        for repeat in range(args.repeats + 1):  # the first round is the untimed warm-up
            names = list(orders) if repeat % 2 else list(reversed(orders))
            for name in names:
                started = time.perf_counter()
                loss = trainer.evaluate(eval_dataset=orders[name])["eval_loss"]
                if repeat:
                    seconds[name].append(time.perf_counter() - started)
                losses[name] = loss
    rows = []
    for name, ds in orders.items():
        lengths = [len(ids) for ids in ds["input_ids"]]
        rows.append({"order": name, "seconds": seconds[name], "median_seconds": statistics.median(seconds[name]),
                     "padded_positions": padded_positions(lengths, args.per_device_eval_batch_size),
                     "real_tokens": sum(lengths), "eval_loss": losses[name]})
        print(f"{name:14s} {statistics.median(seconds[name]):6.1f} s per pass  "
              f"{rows[-1]['padded_positions']:6d} positions for {rows[-1]['real_tokens']} tokens  "
              f"eval_loss {losses[name]:.4f}")
    ratio = rows[1]["median_seconds"] / rows[0]["median_seconds"]
    print(f"longest first takes {ratio:.2f}x the time of the order as drawn")
    write_result("validation-order", {
        "command": "python bench/validation_order.py" + (f" --repeats {args.repeats}" if args.repeats != 2 else ""),
        "model": "smollm2-135m", "data": "dialogsum.train.jsonl, --validation_split 0.1 --max_eval_samples 200",
        "validation_rows": len(data.eval), "max_seq_length": 512, "precision": prec.name,
        "per_device_eval_batch_size": args.per_device_eval_batch_size, "repeats": args.repeats,
        "orders": rows, "time_ratio": ratio})


if __name__ == "__main__":
    main()
