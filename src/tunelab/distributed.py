"""Training on several processes through the engines that exist: `accelerate launch` / `torchrun` start one process
per device, the Hugging Face Trainer does DDP, FSDP or DeepSpeed ZeRO inside them. tunelab only makes sure that

- the main process alone writes the output directory (the others wait where they must not read half-written files),
- train_results.json counts all processes (tokens, padding, the peak memory of the busiest process),
- ``tunelab train --num_processes N`` starts the launcher itself, so nobody has to learn it.

Process ranks come from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK). See examples/distributed/.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

log = logging.getLogger(__name__)

_RANK_VARS = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                pass
    return default


def world_size() -> int:
    """Processes started by the launcher this process belongs to (1 when there is none)."""
    return max(1, _env_int(_WORLD_VARS, 1))


def launched() -> bool:
    """Whether a launcher (accelerate launch, torchrun, mpirun) started this process as one of several."""
    return world_size() > 1 or "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0 of the launch, or the only process (from the launcher's environment, usable before any set-up)."""
    return _env_int(_RANK_VARS, 0) == 0


def process_label() -> str:
    """``"(process R of N) "`` in a launched process, so that N processes' error lines can be told apart."""
    return f"(process {_env_int(_RANK_VARS, 0)} of {world_size()}) " if launched() else ""


# --- options -----------------------------------------------------------------------------------------------------

def settle_options(opts, explicit: set[str] | frozenset[str]):
    """Inside a launched process, --num_processes records the launcher's world size; outside one, asking for
    several processes is the CLI's job (``tunelab train --num_processes N`` re-executes through accelerate)."""
    import dataclasses

    if opts.num_processes < 1:
        raise TunelabError(f"--num_processes {opts.num_processes}: must be at least 1")
    if launched():
        size = world_size()
        if "num_processes" in explicit and opts.num_processes not in (1, size):
            raise TunelabError(f"--num_processes {opts.num_processes}: this process was started by a launcher with "
                               f"{size} processes (WORLD_SIZE); drop --num_processes when using accelerate launch or "
                               "torchrun, or make them agree")
        return dataclasses.replace(opts, num_processes=size)
    if opts.num_processes > 1:
        raise TunelabError(f"--num_processes {opts.num_processes}: tunelab.train() trains in this process; start "
                           f"several with the command line, `tunelab train --num_processes {opts.num_processes} ...`, "
                           "or run your script with `accelerate launch --num_processes N script.py`")
    return opts


def check_options(opts) -> None:
    """--fsdp / --fsdp_config / --deepspeed combinations that cannot work, before anything is loaded."""
    import torch

    on_gpu = torch.cuda.is_available() and not opts.use_cpu
    if opts.fsdp and opts.deepspeed:
        raise TunelabError("--fsdp and --deepspeed are two ways to shard the same model; choose one")
    if opts.fsdp_config and not opts.fsdp:
        raise TunelabError(f"--fsdp_config {opts.fsdp_config} is read only with --fsdp; add --fsdp \"full_shard "
                           "auto_wrap\" (or --fsdp true) or drop --fsdp_config")
    for flag in ("fsdp_config", "deepspeed"):
        path = getattr(opts, flag)
        if path is None:
            continue
        if not Path(path).is_file():
            raise TunelabError(f"--{flag} {path}: file not found; pass a JSON file such as "
                               f"examples/distributed/{'fsdp_full_shard' if flag == 'fsdp_config' else 'ds_zero2'}.json")
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise TunelabError(f"--{flag} {path} line {e.lineno}: not valid JSON ({e.msg}); fix the syntax") from None
        if not isinstance(data, dict):
            raise TunelabError(f"--{flag} {path}: expected a JSON object of settings")
    if opts.fsdp and not on_gpu:
        # Sharding is for models too big for one device's memory: a GPU matter. On the CPU, tunelab does not
        # pretend to support it (nothing here has tested FSDP over gloo); plain data parallel is what runs there.
        raise TunelabError("--fsdp needs CUDA GPUs; on the CPU drop --fsdp (--num_processes N trains data "
                           "parallel, each process a full copy of the model)")
    if opts.deepspeed:
        if not on_gpu:
            raise TunelabError("--deepspeed needs CUDA GPUs (DeepSpeed ZeRO runs on them only); on the CPU drop "
                               "--deepspeed (--num_processes N trains data parallel)")
        from transformers.integrations.deepspeed import is_deepspeed_available

        if not is_deepspeed_available():
            raise TunelabError(f"--deepspeed {opts.deepspeed}: the deepspeed package is not installed; "
                               "pip install deepspeed (on the GPU machine) or drop --deepspeed")


def _zero3(path: str) -> bool:
    from accelerate.utils.deepspeed import HfDeepSpeedConfig  # (parses the JSON; deepspeed itself is not needed)

    return bool(HfDeepSpeedConfig(path).is_zero3())


def shards_weights(opts) -> bool:
    """QLoRA under an engine that shards the weights themselves (FSDP, DeepSpeed ZeRO-3)."""
    return bool(opts.use_4bit and (opts.fsdp or (opts.deepspeed and Path(opts.deepspeed).is_file()
                                                 and _zero3(opts.deepspeed))))


def device_map(quantization, opts) -> dict[str, int] | None:
    """Where a launched process loads a quantized model: its own GPU (bitsandbytes weights are placed at load time
    and not moved by the Trainer afterwards). Unquantized models are placed by the Trainer / the engine."""
    import torch

    if quantization is None or not launched() or opts.use_cpu or not torch.cuda.is_available():
        return None
    if shards_weights(opts):
        return None  # FSDP / ZeRO-3 place (and shard) the weights themselves
    return {"": int(os.environ.get("LOCAL_RANK", 0))}


def training_arguments(opts) -> dict[str, Any]:
    """The TrainingArguments for the engines: FSDP, DeepSpeed, and the CPU for a launch without CUDA (gloo)."""
    import torch

    kwargs: dict[str, Any] = {}
    if opts.fsdp:
        kwargs["fsdp"] = True if str(opts.fsdp).strip().lower() in ("true", "1", "yes") else opts.fsdp
        if opts.fsdp_config:
            kwargs["fsdp_config"] = opts.fsdp_config
    if opts.deepspeed:
        kwargs["deepspeed"] = opts.deepspeed
    if launched() and not torch.cuda.is_available():
        kwargs["use_cpu"] = True  # several CPU processes: the Trainer's accelerate state picks gloo (MULTI_CPU)
    return kwargs


# --- collective helpers (no-ops in a single process) --------------------------------------------------------------

def wait_for_everyone(args) -> None:
    """A barrier over the Trainer's processes (``args`` is the TrainingArguments, whose state knows them)."""
    if args.world_size > 1:
        args.distributed_state.wait_for_everyone()


def is_world_main(args) -> bool:
    return args.process_index == 0


def max_over_processes(value: int, trainer) -> int:
    """The largest of one number per process (the peak memory of the busiest process)."""
    if trainer.args.world_size <= 1:
        return value
    import torch

    gathered = trainer.accelerator.gather(torch.tensor([int(value)], device=trainer.args.device))
    return int(gathered.max().item())


def sum_over_processes(values: list[int], trainer) -> list[int]:
    if trainer.args.world_size <= 1:
        return list(values)
    import torch

    tensor = torch.tensor([list(map(int, values))], device=trainer.args.device)
    return [int(x) for x in trainer.accelerator.gather(tensor).sum(dim=0).tolist()]


def broadcast(obj: Any, args) -> Any:
    """The main process's ``obj`` on every process."""
    if args.world_size <= 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj]
    broadcast_object_list(box, from_process=0)
    return box[0]


# --- the launcher that `tunelab train --num_processes N` starts ---------------------------------------------------

def strip_num_processes(argv: list[str]) -> list[str]:
    """The command line without --num_processes (the launched processes must not launch again)."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--num_processes":
            i += 2
            continue
        if arg.startswith("--num_processes="):
            i += 1
            continue
        out.append(arg)
        i += 1
    return out


def launch_command(num_processes: int, train_argv: list[str], *, use_cpu: bool) -> tuple[list[str], dict[str, str]]:
    """`accelerate launch` for one machine: torch.distributed.run under the hood, one process per GPU, or per CPU
    share when there is no GPU (each then gets cores / N threads and the gloo backend)."""
    import torch

    cpu = use_cpu or not torch.cuda.is_available()
    # --multi_gpu selects torch.distributed.run. accelerate's own --cpu path starts a single process (several CPU
    # processes need mpirun there), so the CPU case goes the same way and the Trainer picks gloo for it.
    # --main_process_port 0: accelerate picks a free port, so that two launches on one machine do not collide.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
           "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no"]
    env = dict(os.environ)
    if cpu:
        env["ACCELERATE_USE_CPU"] = "true"
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    else:
        gpus = torch.cuda.device_count()
        if num_processes > gpus:
            raise TunelabError(f"--num_processes {num_processes}: this machine has {gpus} GPU(s); one process per GPU "
                               f"means --num_processes {gpus} or fewer (or --use_cpu)")
    cmd += ["-m", "tunelab", "train", *train_argv]
    return cmd, env


def run_launcher(cmd: list[str], env: dict[str, str]) -> int:
    """Run the launcher, its output on this console. Returns its exit status, or 2 when it failed on a user error
    that the launched processes reported (their ``error: ...`` line is on the console already)."""
    log.info("starting %s processes: %s", cmd[cmd.index("--num_processes") + 1], " ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE)  # stdout goes straight through
    assert proc.stderr is not None
    user_error, line_start = False, b""
    try:
        while True:
            chunk = os.read(proc.stderr.fileno(), 65536)
            if not chunk:
                break
            # a user error is a line that starts with "error: " (progress bars end lines with \r, not \n)
            *lines, rest = (line_start + chunk).replace(b"\r", b"\n").split(b"\n")
            user_error = user_error or any(line.startswith(b"error: ") for line in lines)
            line_start = rest[:64]  # the start of the unfinished line is all that matters
            sys.stderr.write(chunk.decode("utf-8", errors="replace"))
            sys.stderr.flush()
        code = proc.wait()
    except BaseException:
        proc.terminate()
        proc.wait()
        raise
    return 2 if code != 0 and user_error else code


def launch_train(opts, argv: list[str]) -> int:
    """`tunelab train --num_processes N`: run ``accelerate launch ... -m tunelab train <the same flags without
    --num_processes>`` and return its status. (The caller checks the flags first: one clear error, not N.)"""
    cmd, env = launch_command(opts.num_processes, strip_num_processes(argv), use_cpu=opts.use_cpu)
    return run_launcher(cmd, env)
