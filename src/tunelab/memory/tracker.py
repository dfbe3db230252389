"""Peak memory of this process: allocated GPU memory on CUDA, resident set size on the CPU.

On Linux the CPU peak is reset just before training (``/proc/self/clear_refs``), after freed heap memory is
handed back to the system, so the figure covers training rather than the transient peaks of loading a model.
"""

from __future__ import annotations

import ctypes
import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _cpu_peak_resettable() -> bool:
    return _STATUS.is_file() and _CLEAR_REFS.exists()


def reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    if _cpu_peak_resettable():
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed loading buffers, so they do not count
        except OSError:
            pass
        try:
            _CLEAR_REFS.write_text("5")  # resets VmHWM, the peak resident set size
        except OSError:
            pass


def _vm_hwm() -> int | None:
    for line in _STATUS.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def peak_memory() -> tuple[int, str]:
    """(bytes, kind): ``cuda_max_allocated``, or ``cpu_peak_rss`` (since the last reset_peak where the OS allows
    it, else over the process's lifetime)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    if _cpu_peak_resettable():
        hwm = _vm_hwm()
        if hwm:
            return hwm, "cpu_peak_rss"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return int(rss if sys.platform == "darwin" else rss * 1024), "cpu_peak_rss_lifetime"


def device_description() -> dict[str, str]:
    import platform

    import torch

    if torch.cuda.is_available():
        return {"device": "cuda", "device_name": torch.cuda.get_device_name(0)}
    from tunelab.precision import cpu_model

    return {"device": "cpu", "device_name": cpu_model() or platform.processor() or platform.machine(),
            "cpu_threads": str(torch.get_num_threads())}


TENSOR_PEAK_STEPS = 2  # the first step creates the optimizer states; the second holds them with its activations


def tensor_peak_callback(model, steps: int = TENSOR_PEAK_STEPS):
    """A Trainer callback that counts the live tensor bytes of a CPU run (``trace.LiveBytes``, the counter
    ``tunelab estimate --validate`` measures with) over its first ``steps`` optimizer steps; ``.peak_bytes`` is then
    their peak. The resident set size also holds the allocator's cached and fragmented memory and the Python
    runtime; this figure compares methods rather than allocators. It counts the first steps only because every op
    passes through Python while it counts (a few percent of those steps' time); the methods of a comparison see the
    same first batches, and the second step is the steady state (weights, optimizer states, activations)."""
    from transformers import TrainerCallback

    from tunelab.memory.trace import LiveBytes, resident_tensors

    class TensorPeak(TrainerCallback):
        def __init__(self):
            self.counter: LiveBytes | None = None
            self.until = 0
            self.peak_bytes: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.counter = LiveBytes(device_type="cpu")
            self.counter.register(resident_tensors(model))
            self.until = state.global_step + steps
            self.counter.__enter__()

        def stop(self) -> None:
            """End the count (also when training stopped early or failed: no counter stays on)."""
            if self.counter is not None:
                self.counter.__exit__(None, None, None)
                self.peak_bytes, self.counter = self.counter.peak, None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= self.until:
                self.stop()

        def on_train_end(self, args, state, control, **kwargs):
            self.stop()

    return TensorPeak()
