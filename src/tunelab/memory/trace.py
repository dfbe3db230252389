"""Counting the live tensor bytes of one training step, on fake tensors (a prediction) or real ones (a measurement).

``LiveBytes`` is a ``TorchDispatchMode``: every aten (and bitsandbytes custom) op that runs under it reports its
outputs; each output's *storage* is counted once, when it first appears, and uncounted when the storage dies (a
weak reference to the storage object, which PyTorch keeps alive exactly as long as the C++ storage). Views share
their base's storage and cost nothing; in-place ops return storages already counted. The running sum is the number
of bytes a device allocator would hold for the tensors, without allocator caching or fragmentation; its maximum is
the peak. On CUDA each storage is rounded up to the caching allocator's 512-byte block, as
``torch.cuda.max_memory_allocated`` counts it.

The same mode runs over ``FakeTensorMode`` (shapes, dtypes and devices, no data: a 70B step costs nothing) and over
real tensors (the measurement on the CPU). What differs between the two is only where the tensors come from.

Each counted storage remembers the *phase* it was allocated in (weights registered before the step, forward,
backward, optimizer) and the number of the allocation. At each new peak of a phase the per-phase running totals are
copied (a handful of integers), so the peak can be split afterwards into weights, gradients, optimizer states,
activations (forward allocations still alive) and temporaries (the rest), gradients and optimizer states being
recognised after the step by their allocation numbers.

Ops that are opaque to the dispatcher but allocate inside (bitsandbytes' ``gemm_4bit`` dequantizes the whole weight
before its matmul) are expanded into the ops they run, so the dequantized weight is counted as it really exists.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

CUDA_BLOCK_BYTES = 512  # c10 CUDACachingAllocator kMinBlockSize: every allocation is rounded up to it

PHASES = ("weights", "forward", "backward", "optimizer")


@dataclass
class Allocation:
    """One large allocation, for the report of the biggest tensors of a phase."""

    nbytes: int
    op: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.nbytes, "op": self.op, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class PhasePeak:
    """The highest live-byte count reached while a phase ran, and what was live then (by allocation phase)."""

    nbytes: int = 0
    event: int = -1                               # allocation number at the peak
    by_phase: dict[str, int] = field(default_factory=dict)  # live bytes at the peak, by the phase that allocated them


def _expansions() -> dict[Any, Callable]:
    """Opaque custom ops replaced by the ops they execute, so their internal buffers are counted. An expansion may
    return ``NotImplemented`` to let the op run as it is."""
    table: dict[Any, Callable] = {}
    try:
        import bitsandbytes  # noqa: F401  (registers torch.ops.bitsandbytes)
        from bitsandbytes.backends.default.ops import _gemm_4bit_default_impl
    except Exception:  # bitsandbytes missing or changed: the op stays opaque (its output is still counted)
        return table

    def gemm_4bit(A, B, shapeB, absmax, blocksize, quant_type, bias=None, absmax_8bit=None, absmax_code=None,
                  absmax_offset=None):
        # gemm_4bit = dequantize_4bit (a whole [out, in] weight in the compute dtype) + linear: the CPU kernel, and
        # on CUDA the path of every training-sized batch. bitsandbytes' fused CUDA kernel (no dequantized copy)
        # serves only a few rows at a time; its own heuristic says when.
        if A.device.type == "cuda" and _bnb_fused_cuda_gemm(A, shapeB, blocksize):
            return NotImplemented
        return _gemm_4bit_default_impl(A, B, shapeB, absmax, blocksize, quant_type, bias=bias,
                                       absmax_8bit=absmax_8bit, absmax_code=absmax_code,
                                       absmax_offset=absmax_offset)

    table[torch.ops.bitsandbytes.gemm_4bit.default] = gemm_4bit
    return table


def _bnb_fused_cuda_gemm(A: torch.Tensor, shapeB, blocksize: int) -> bool:
    try:
        from bitsandbytes.backends.cuda import ops as cuda_ops

        K = A.shape[-1]
        M = A.numel() // K
        if M > cuda_ops._gemm_4bit_custom_max_m or K % blocksize != 0:
            return False
        return bool(cuda_ops._gemm_4bit_use_custom_fn(A.device.index, A.dtype, M, shapeB[0], K))
    except Exception:
        return False


class LiveBytes(TorchDispatchMode):
    """Live tensor-storage bytes through a step; see the module docstring."""

    def __init__(self, *, granularity: int = 1, device_type: str | None = None, top_k: int = 6):
        super().__init__()
        self.granularity = max(int(granularity), 1)
        self.device_type = device_type  # count only tensors on this kind of device (None: all)
        self.top_k = top_k
        self.phase = "weights"
        self.current = 0
        self.peak = 0
        self.events = 0
        # storage key -> (allocation number, bytes, phase, weakref)
        self._live: dict[int, tuple[int, int, str, weakref.ref]] = {}
        self._by_phase: dict[str, int] = dict.fromkeys(PHASES, 0)
        self.peaks: dict[str, PhasePeak] = {}
        self._largest: dict[str, list[tuple[int, int, Allocation]]] = {}
        self._tick = itertools.count()
        self._expand = _expansions()

    # --- counting ---------------------------------------------------------------------------------------------
    def _round(self, n: int) -> int:
        g = self.granularity
        return -(-n // g) * g if g > 1 else n

    def track(self, t: torch.Tensor, op: str = "") -> None:
        """Count the storage of ``t`` if it is not counted yet (or its size changed)."""
        if self.device_type is not None and t.device.type != self.device_type:
            return  # e.g. AdamW's step counters, which stay on the CPU beside CUDA parameters
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less tensors
            return
        key = st._cdata
        n = self._round(st.nbytes())
        entry = self._live.get(key)
        if entry is not None and entry[3]() is st:
            if entry[1] != n:  # resized in place
                self.current += n - entry[1]
                self._by_phase[entry[2]] += n - entry[1]
                self._live[key] = (entry[0], n, entry[2], entry[3])
                self._note_peak()
            return
        self.events += 1
        phase = self.phase

        def gone(ref, key=key):
            e = self._live.get(key)
            if e is not None and e[3] is ref:
                del self._live[key]
                self.current -= e[1]
                self._by_phase[e[2]] -= e[1]

        self._live[key] = (self.events, n, phase, weakref.ref(st, gone))
        self.current += n
        self._by_phase[phase] += n
        if op and n:
            heap = self._largest.setdefault(phase, [])
            item = (n, next(self._tick), Allocation(n, op, tuple(int(s) for s in t.shape), str(t.dtype)))
            if len(heap) < self.top_k:
                heapq.heappush(heap, item)
            elif n > heap[0][0]:
                heapq.heapreplace(heap, item)
        self._note_peak()

    def _note_peak(self) -> None:
        if self.current > self.peak:
            self.peak = self.current
        p = self.peaks.get(self.phase)
        if p is None:
            p = self.peaks[self.phase] = PhasePeak()
        if self.current > p.nbytes:
            p.nbytes, p.event, p.by_phase = self.current, self.events, dict(self._by_phase)

    def register(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that exist before the step (weights, buffers, quantization constants)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self.track(t)

    def allocation(self, t: torch.Tensor) -> tuple[int, int] | None:
        """(allocation number, bytes) of a live tensor's storage, or None when it is not counted."""
        st = t.untyped_storage()
        e = self._live.get(st._cdata)
        if e is None or e[3]() is not st:
            return None
        return e[0], e[1]

    def largest(self, phase: str) -> list[Allocation]:
        return [a for _, _, a in sorted(self._largest.get(phase, []), key=lambda x: -x[0])]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        expand = self._expand.get(func)
        if expand is not None:
            with self:  # run the op's own implementation with the counter on, so its inner ops are seen
                out = expand(*args, **kwargs)
            if out is not NotImplemented:
                return out
        if func is _LOCAL_SCALAR:
            return _scalar(func, args, kwargs)
        out = func(*args, **kwargs)
        name = getattr(func, "__name__", str(func))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.track(t, name)
        return out


_LOCAL_SCALAR = torch.ops.aten._local_scalar_dense.default


def _scalar(func, args, kwargs):
    """``bool(t)`` / ``t.item()``. A fake tensor has no value; for a boolean the answer a real training step gets is
    True in every case that reaches here (an all-ones mask is all ones, gradients are finite, LyCORIS' module dropout
    ``rand(1) > p`` keeps the adapter), so a fake boolean answers True. Anything else must have a value."""
    from torch._subclasses.fake_tensor import DataDependentOutputException

    try:
        return func(*args, **kwargs)
    except DataDependentOutputException:
        if args and isinstance(args[0], torch.Tensor) and args[0].dtype == torch.bool:
            return True
        raise


# --- the tensors a model holds ---------------------------------------------------------------------------------

def resident_tensors(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    """Parameters, buffers and bitsandbytes' quantization constants (absmax, code, nested absmax, offset, SCB)."""
    seen: set[int] = set()
    for t in itertools.chain(model.parameters(), model.buffers()):
        if id(t) in seen:
            continue
        seen.add(id(t))
        yield t
        qs = getattr(t, "quant_state", None)
        while qs is not None:
            for name in ("absmax", "code", "offset"):
                v = getattr(qs, name, None)
                if isinstance(v, torch.Tensor):
                    yield v
            qs = getattr(qs, "state2", None)
        scb = getattr(t, "SCB", None)
        if isinstance(scb, torch.Tensor):
            yield scb
    for module in model.modules():  # bitsandbytes 8-bit layers move CB / SCB to their MatmulLtState
        state = getattr(module, "state", None)
        for name in ("CB", "SCB"):
            v = getattr(state, name, None)
            if isinstance(v, torch.Tensor):
                yield v


def storage_bytes(tensors: Iterable[torch.Tensor], granularity: int = 1) -> int:
    """Bytes of the distinct storages behind ``tensors`` (tied weights and views counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        st = t.untyped_storage()
        n = st.nbytes()
        seen[st._cdata] = -(-n // granularity) * granularity if granularity > 1 else n
    return sum(seen.values())


# --- fake models --------------------------------------------------------------------------------------------------

def new_fake_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    # Small real constants (bitsandbytes' cached 8-bit code book) may meet fake tensors; they are converted on the fly.
    return FakeTensorMode(allow_non_fake_inputs=True)


def materialize_fake(model: torch.nn.Module, fake_mode, device: str | torch.device) -> None:
    """Replace the meta-device parameters and buffers of ``model`` by fake tensors on ``device`` (in place).

    Shared (tied) tensors stay shared. bitsandbytes 4-bit weights are quantized on the fake tensors by bitsandbytes'
    own ``Params4bit._quantize``, so the packed uint8 data and the absmax / nested-absmax constants have exactly the
    shapes and dtypes that loading the real checkpoint produces; 8-bit weights become int8 data plus their fp32 row
    scales (SCB), as ``Int8Params._quantize`` stores them.
    """
    _warm_bitsandbytes()
    with fake_mode:
        _replace_tensors(model, torch.device(device))


def quantize_on_meta(model: torch.nn.Module) -> None:
    """Quantize the bitsandbytes weights of a meta-device model on the meta device (bitsandbytes' ops have meta
    implementations), so that peft can wrap them (DoRA reads the dequantized weight) before anything is faked."""
    _warm_bitsandbytes()
    _replace_tensors(model, torch.device("meta"), quantized_only=True)


def _warm_bitsandbytes() -> None:
    """bitsandbytes builds its 8-bit code book once, from Python numbers, on first use; build it on the CPU (1 KiB),
    as a real run does, rather than on the meta or fake device where it would have no values."""
    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        return
    if "dynamic" not in bnbf.name2qmap:
        with torch.device("cpu"):
            bnbf.name2qmap["dynamic"] = bnbf.create_dynamic_map()


def _replace_tensors(model: torch.nn.Module, device: torch.device, *, quantized_only: bool = False) -> None:
    memo: dict[int, torch.Tensor] = {}
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is None or (quantized_only and type(p).__name__ not in ("Params4bit", "Int8Params")):
                continue
            if id(p) not in memo:
                memo[id(p)] = _new_param(p, device)
            new = memo[id(p)]
            module._parameters[name] = new
            if quantized_kind(new) == "4bit":
                new.module = module
                module.quant_state = new.quant_state
        if quantized_only:
            continue
        for name, b in list(module._buffers.items()):
            if b is None:
                continue
            if id(b) not in memo:
                memo[id(b)] = torch.empty(b.shape, dtype=b.dtype, device=device)
            module._buffers[name] = memo[id(b)]


def _new_param(p: torch.Tensor, device: torch.device) -> torch.Tensor:
    kind = type(p).__name__
    if kind == "Params4bit":
        import bitsandbytes as bnb

        shape = p.quant_state.shape if getattr(p, "quant_state", None) is not None else p.shape
        # The unquantized weight exists only for the instant of quantization, as when a checkpoint is loaded.
        w = torch.empty(shape, dtype=torch.float32, device=device)
        if device.type == "meta":
            return bnb.nn.Params4bit(w, requires_grad=False, blocksize=p.blocksize,
                                     compress_statistics=p.compress_statistics, quant_type=p.quant_type,
                                     quant_storage=p.quant_storage)._quantize(device)
        # A fake tensor cannot be wrapped by the Params4bit subclass, so the fake model holds the packed data as a
        # plain frozen parameter carrying the attributes bitsandbytes and peft read (quant_state and friends); the
        # forward then runs bitsandbytes' real matmul_4bit path on it.
        w_4bit, state = bnb.functional.quantize_4bit(w, blocksize=p.blocksize,
                                                     compress_statistics=p.compress_statistics,
                                                     quant_type=p.quant_type, quant_storage=p.quant_storage)
        return _marked(w_4bit, "4bit", quant_state=state, blocksize=p.blocksize,
                       compress_statistics=p.compress_statistics, quant_type=p.quant_type,
                       quant_storage=p.quant_storage, bnb_quantized=True)
    if kind == "Int8Params":
        import bitsandbytes as bnb

        w = torch.empty(p.shape, dtype=torch.float16, device=device)
        if device.type == "meta":
            return bnb.nn.Int8Params(w, requires_grad=False, has_fp16_weights=p.has_fp16_weights)._quantize(device)
        cb, scb, _ = bnb.functional.int8_vectorwise_quant(w)
        return _marked(cb, "8bit", CB=cb, SCB=scb, has_fp16_weights=False)
    return torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype, device=device), requires_grad=p.requires_grad)


def _marked(data: torch.Tensor, kind: str, **attrs) -> torch.Tensor:
    param = torch.nn.Parameter(data, requires_grad=False)
    for k, v in attrs.items():
        setattr(param, k, v)
    param.tunelab_quantized = kind
    return param


def quantized_kind(t: torch.Tensor) -> str | None:
    """'4bit' / '8bit' for a bitsandbytes weight (real Params4bit / Int8Params, or its fake stand-in), else None."""
    kind = type(t).__name__
    if kind == "Params4bit":
        return "4bit"
    if kind == "Int8Params":
        return "8bit"
    return getattr(t, "tunelab_quantized", None)


def weight_count(t: torch.Tensor) -> int:
    """How many weights a parameter holds (a packed 4-bit tensor holds two per byte)."""
    qs = getattr(t, "quant_state", None)
    if quantized_kind(t) == "4bit" and qs is not None:
        n = 1
        for d in qs.shape:
            n *= int(d)
        return n
    return t.numel()


# --- one training step ----------------------------------------------------------------------------------------------

@dataclass
class StepTrace:
    """What one traced step leaves: the peak of each phase and the tensors that persist into the next step."""

    peaks: dict[str, PhasePeak]
    weights_bytes: int             # counted before the step
    state_bytes: int               # optimizer state that persists into the next step
    state_events: list[tuple[int, int]]   # (allocation number, bytes) of each optimizer-state storage
    grad_bytes: int                # gradients of trainable parameters at the end of backward
    grad_events: list[tuple[int, int]]
    largest: dict[str, list[Allocation]]
    measured_peak: int = 0         # the plain maximum of the counter over every step run


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic GC frees tensors at moments that depend on unrelated allocations; pause it so a fake trace and
    a real run free the same tensors at the same ops (reference counting still frees everything else at once)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_step(model, optimizer, make_batch: Callable[[], dict], *, counter: LiveBytes, micro_batches: int = 1,
             autocast: tuple[str, torch.dtype] | None = None, max_grad_norm: float = 1.0,
             clip_foreach: bool | None = None) -> None:
    """One optimizer step as transformers' Trainer runs it: for each micro-batch, forward with labels (the outputs
    other than the loss dropped at once, as ``compute_loss`` does) and backward; then gradient clipping, the
    optimizer step and ``zero_grad(set_to_none=True)``."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for _ in range(micro_batches):
        counter.phase = "forward"
        batch = make_batch()
        ctx = torch.autocast(autocast[0], dtype=autocast[1]) if autocast else contextlib.nullcontext()
        with ctx:
            loss = model(**batch).loss
        del batch
        if micro_batches > 1:
            loss = loss / micro_batches
        counter.phase = "backward"
        loss.backward()
        del loss
    counter.phase = "optimizer"
    if max_grad_norm and max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=clip_foreach)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def trace_step(model, optimizer, make_batch: Callable[[], dict], *, modes: list, granularity: int = 1,
               device_type: str | None = None, steps: int = 1, micro_batches: int = 1, autocast=None,
               max_grad_norm: float = 1.0, clip_foreach: bool | None = None) -> StepTrace:
    """Run ``steps`` training steps under the live-byte counter (inside ``modes``, e.g. a FakeTensorMode).

    The per-phase peaks and the breakdown come from the first step; ``measured_peak`` is the plain maximum over all
    steps (the measurement). Gradients are recognised by post-accumulate-grad hooks and optimizer states by walking
    ``optimizer.state`` after the first step.
    """
    counter = LiveBytes(granularity=granularity, device_type=device_type)
    counter.register(resident_tensors(model))
    weights = counter.current
    grad_events: dict[int, tuple[int, int]] = {}   # id(parameter) -> (allocation number, bytes) of its .grad

    def on_grad(p):
        info = counter.allocation(p.grad)
        if info is not None:
            grad_events[id(p)] = info

    handles = [p.register_post_accumulate_grad_hook(on_grad) for p in model.parameters() if p.requires_grad]
    first: StepTrace | None = None
    try:
        with _gc_paused(), contextlib.ExitStack() as stack:
            for m in modes:
                stack.enter_context(m)
            stack.enter_context(counter)
            for step in range(steps):
                if step == 0:
                    run_step(model, optimizer, make_batch, counter=counter, micro_batches=micro_batches,
                             autocast=autocast, max_grad_norm=max_grad_norm, clip_foreach=clip_foreach)
                    state = _state_allocations(optimizer, counter)
                    grads = sorted(set(grad_events.values()))  # storages, once each
                    first = StepTrace(peaks=dict(counter.peaks), weights_bytes=weights,
                                      state_bytes=sum(b for _, b in state), state_events=state,
                                      grad_bytes=sum(b for _, b in grads), grad_events=grads,
                                      largest={ph: counter.largest(ph) for ph in PHASES})
                else:
                    counter.peaks = {}
                    run_step(model, optimizer, make_batch, counter=counter, micro_batches=micro_batches,
                             autocast=autocast, max_grad_norm=max_grad_norm, clip_foreach=clip_foreach)
    finally:
        for h in handles:
            h.remove()
    assert first is not None
    first.measured_peak = counter.peak
    return first


def _state_allocations(optimizer, counter: LiveBytes) -> list[tuple[int, int]]:
    found: dict[int, tuple[int, int]] = {}
    for state in optimizer.state.values():
        for v in state.values():
            if isinstance(v, torch.Tensor):
                info = counter.allocation(v)
                if info is not None:
                    found[info[0]] = info
    return sorted(found.values())
