"""Shared by the benchmarks: the machine's description and atomic result files under bench/results/."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def machine() -> dict:
    import torch
    import transformers
    import peft

    info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "date": _dt.datetime.now(_dt.timezone.utc).isoformat()}
    try:
        mem = [l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")][0]
        info["memory"] = " ".join(mem.split()[1:])
    except (OSError, IndexError):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, payload: dict) -> Path:
    from tunelab.fileio import atomic_write_json

    payload = {"benchmark": name, "machine": machine(), **payload}
    path = atomic_write_json(RESULTS / f"{name}.json", payload)
    print(f"wrote {path}")
    return path
