"""How the machine runs the lens's arithmetic: the matmul dtype, measured, and glibc's allocator.

Matmul precision (`matmul_dtype`, `describe`): the one place that decides the matmul
precision for a device, by measuring it.

bfloat16 matmuls (float32 accumulation) halve the memory traffic of the unembedding and
run ~4–10× faster than float32 where the hardware has native bf16 (CUDA GPUs from
Ampere on, CPUs with AMX or AVX-512 BF16). Where it has not, PyTorch emulates them:
on an AVX2-only AMD EPYC a `[1024, 576] @ [576, 8192]` matmul ran at 0.4 GFLOP/s in
bf16 against 47 in float32 (shared/MEASURED.md). No CPU flag check is reliable across
PyTorch builds and oneDNN versions, so `"auto"` measures:

- CUDA: bf16 where `torch.cuda.is_bf16_supported()`; else float16 where the GPU has
  float16 tensor cores (compute capability 7.0 on: V100, T4 — Colab's free GPU);
  else float32. float16 keeps 11 bits of mantissa against bf16's 8, so its chunked KL
  and gradient are closer to float64 than bf16's (tests/core/test_precision.py checks
  it on the CPU); its smaller range is handled where the loss needs it
  (`hooklens.core.chunked_kl.WeightChunks`);
- CPU: a one-time probe (cached per process, well under a second even where bf16 is
  emulated) times a small matmul in both dtypes and picks bf16 only when it is at least
  `BF16_MIN_SPEEDUP` times faster;
- anything else: float32.

An explicit `"bfloat16"` or `"float16"` is honoured, with one warning per process where
the CPU probe found it slower than float32.

Freed memory (`retain_freed_memory`): keep freed memory in the process instead of
handing it back to the kernel (glibc).

glibc serves blocks above its mmap threshold (at most 32 MiB, 128 KiB at start) with
fresh `mmap`s and trims the top of the heap whenever enough is free. A loop that
allocates and frees tens of megabytes per vocabulary chunk then spends more time in
page faults than in the matmuls: one layer's chunked KL forward + backward on 2,048
tokens of SmolLM2 took 0.95 s instead of 0.44 s here. Raising both thresholds makes
glibc reuse the freed blocks. The process keeps its peak memory until it exits,
which is what a training or report run wants anyway.

Examples:
    >>> import torch
    >>> from hooklens.core.precision import matmul_dtype
    >>> matmul_dtype("float32")
    torch.float32
    >>> matmul_dtype("auto") in (torch.float32, torch.bfloat16)
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import sys
import time
from collections.abc import Iterator

import torch

from hooklens.errors import InputError, warn

MATMUL_DTYPES = ("auto", "float32", "bfloat16", "float16")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
# The first CUDA compute capability with float16 tensor cores (Volta; Turing's T4 is 7.5).
FP16_TENSOR_CORES = (7, 0)
# "Clearly faster": native bf16 is 2–10× float32 at these shapes; emulated bf16 is 0.01×.
BF16_MIN_SPEEDUP = 1.5
_PROBE_SHAPE = (256, 512, 512)  # [m, k] @ [k, n]: 134 MFLOP, ~1 ms in float32 here


def _time_matmul(
    dtype: torch.dtype, budget_s: float, shape: tuple[int, int, int] = _PROBE_SHAPE
) -> float:
    """Best seconds per `[m, k] @ [k, n]` matmul in `dtype`, within about `budget_s`."""
    m, k, n = shape
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(m, k, generator=generator).to(dtype)
    b = torch.randn(k, n, generator=generator).to(dtype)
    a @ b  # warm-up: first-call dispatch and kernel selection
    best, spent = float("inf"), 0.0
    while spent < budget_s:
        began = time.perf_counter()
        a @ b
        elapsed = time.perf_counter() - began
        best, spent = min(best, elapsed), spent + elapsed
        if elapsed > budget_s / 4:  # a slow kernel needs no more samples to be judged
            break
    return best


@functools.cache
def cpu_matmul_speedup(dtype: torch.dtype) -> float:
    """float32 seconds / `dtype` seconds for one small matmul on this CPU (cached).

    Above 1 `dtype` is faster. Measured once per process and dtype with the current
    thread count; an emulated dtype is cut short after one slow call, so the probe
    stays sub-second.
    """
    float32 = _time_matmul(torch.float32, budget_s=0.02)
    low = _time_matmul(dtype, budget_s=max(0.02, 40 * float32))
    # Float32 again, after: on a busy machine the first short probe can catch a stall
    # (a 166× "speed-up" of AMX bf16 was printed once under load 12); the best of both
    # keeps the ratio honest either way round.
    float32 = min(float32, _time_matmul(torch.float32, budget_s=0.02))
    return float32 / low


@functools.cache
def cpu_bf16_speedup() -> float:
    """float32 seconds / bfloat16 seconds for one small matmul on this CPU (cached)."""
    return cpu_matmul_speedup(torch.bfloat16)


def matmul_gflops(
    dtype: torch.dtype = torch.float32, shape: tuple[int, int, int] = (512, 576, 8192)
) -> float:
    """Measured GFLOP/s of one `[m, k] @ [k, n]` CPU matmul (default: a lens readout's
    shape), best of a few within ~0.2 s; for fitting work to the machine."""
    m, k, n = shape
    return 2 * m * k * n / _time_matmul(dtype, budget_s=0.2, shape=shape) / 1e9


@functools.cache
def _warn_slow(name: str, ratio: float) -> None:
    warn(
        f"{name} matmuls run {1 / ratio:.1f}× slower than float32 on this CPU "
        f"({torch.backends.cpu.get_cpu_capability()}; it has no native {name}, so "
        "PyTorch emulates it): pass matmul_dtype='auto' or 'float32'",
        RuntimeWarning,
    )


def _has_fp16_tensor_cores(device) -> bool:
    return torch.cuda.get_device_capability(device) >= FP16_TENSOR_CORES


def matmul_dtype(requested: str | torch.dtype = "auto", device=None) -> torch.dtype:
    """The dtype for lens matmuls on `device` (default: CPU).

    `requested` is `"auto"`, `"float32"`, `"bfloat16"` or `"float16"` (or the torch
    dtype itself). `"auto"` gives a 16-bit dtype only where the device runs it natively
    fast (see the module docstring); an explicit 16-bit dtype on a CPU where it is
    slower warns once.
    """
    if isinstance(requested, torch.dtype):
        requested = _DTYPE_NAMES.get(requested, "")
    if requested not in MATMUL_DTYPES:
        raise InputError(
            f"matmul dtype must be one of {', '.join(MATMUL_DTYPES)}, got {requested!r}"
        )
    kind = torch.device(device).type if device is not None else "cpu"
    if requested == "float32":
        return torch.float32
    if requested == "bfloat16":
        if kind == "cpu" and cpu_bf16_speedup() < 1.0:
            _warn_slow("bfloat16", cpu_bf16_speedup())
        return torch.bfloat16
    if requested == "float16":
        if kind == "cpu" and cpu_matmul_speedup(torch.float16) < 1.0:
            _warn_slow("float16", cpu_matmul_speedup(torch.float16))
        return torch.float16
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if _has_fp16_tensor_cores(device) else torch.float32
    if kind == "cpu" and cpu_bf16_speedup() >= BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return torch.float32


@contextlib.contextmanager
def float32_accumulation(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """float16 CUDA matmuls inside accumulate in float32 throughout.

    cuBLAS accumulates float16 GEMMs in float32, but PyTorch lets split-K kernels add
    their partial sums in float16 (`allow_fp16_reduced_precision_reduction`, on by
    default); the loss's long reductions over d_model turn that off, and put it back.
    """
    flags = torch.backends.cuda.matmul
    if dtype != torch.float16 or device.type != "cuda":
        yield
        return
    before = flags.allow_fp16_reduced_precision_reduction
    flags.allow_fp16_reduced_precision_reduction = False
    try:
        yield
    finally:
        flags.allow_fp16_reduced_precision_reduction = before


def describe(requested: str | torch.dtype = "auto", device=None) -> str:
    """One line for logs: the dtype `matmul_dtype(requested, device)` gives, and why."""
    chosen = matmul_dtype(requested, device)
    kind = torch.device(device).type if device is not None else "cpu"
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            why = "CUDA, bf16 supported"
        else:
            capability = ".".join(map(str, torch.cuda.get_device_capability(device)))
            cores = "" if _has_fp16_tensor_cores(device) else "no "
            why = f"CUDA {capability}, no bf16, {cores}float16 tensor cores"
    elif kind == "cpu":
        why = (
            f"CPU {torch.backends.cpu.get_cpu_capability()}: bf16 "
            f"{cpu_bf16_speedup():.2f}× float32's speed"
        )
    else:
        why = kind
    return f"matmul dtype {requested} → {chosen} ({why})".replace("torch.", "")


# --- glibc's allocator -----------------------------------------------------------------

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc refuses larger values on 64-bit
_TRIM_THRESHOLD = 2**31 - 1


@functools.cache
def retain_freed_memory() -> bool:
    """Tell glibc to reuse freed blocks; `False` (and no change) off glibc Linux.

    >>> retain_freed_memory() in (True, False)
    True
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(
        mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
        and mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
