"""Peak memory of this process: allocated GPU memory on CUDA, resident set size on the CPU."""

from __future__ import annotations

import resource
import sys


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[int, str]:
    """(bytes, kind). kind is ``cuda_max_allocated`` or ``cpu_peak_rss`` (the process's lifetime peak)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss"


def device_description() -> dict[str, str]:
    import platform

    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(0)}
    return {"device": "cpu", "device_name": platform.processor() or platform.machine(),
            "cpu_threads": str(torch.get_num_threads())}
