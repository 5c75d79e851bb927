"""Measuring benchmark rows: wall times, peak memory, the CPU and allocator they ran with (the processes rows
run in: :mod:`hf_sparse.bench.isolated`).

    with PeakMemory() as peak:
        times = time_runs(step, warmup=1, repeats=3)
    peak.growth_mb, peak.method

Peak memory is the growth of the process's resident set: :class:`PeakMemory` records VmRSS on entry and
resets the kernel's peak mark (writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0); on exit the growth
is VmHWM minus that baseline, so it counts everything a run allocates (activations, gradients, masks,
kernel workspaces) and nothing allocated before (weights). Where the mark cannot be reset it falls back to
``ru_maxrss`` (the process's peak since start) and says so in ``method``.

    with PeakAllocated() as alloc:        # PyTorch's own CPU allocations, from the profiler's memory events
        step()
    alloc.peak_mb, alloc.end_mb

Resident-set peaks move run to run with the C library's caching of freed memory; :class:`PeakAllocated` counts
only the bytes of PyTorch tensors alive at once, which is the same in every run of the same code.

    set_malloc_thresholds(mmap_threshold_mb=32, trim_threshold_mb=-1)   # glibc: fixed, see its docstring
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import time
from collections.abc import Callable
from typing import Any

HWM_METHOD = "VmHWM after clear_refs reset, minus VmRSS baseline"
MAXRSS_METHOD = "ru_maxrss (process peak, not reset) minus VmRSS baseline"


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Context manager: ``growth_mb`` = peak resident set during the block minus the resident set at entry."""

    def __enter__(self) -> PeakMemory:
        gc.collect()
        self.baseline_kb = _status_kb("VmRSS") or 0
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")
            self.method = HWM_METHOD
        except OSError:
            self.method = MAXRSS_METHOD
        self.growth_mb = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.method == HWM_METHOD:
            peak_kb = _status_kb("VmHWM") or 0
        else:
            peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.growth_mb = round(max(0, peak_kb - self.baseline_kb) / 1024, 1)


class PeakAllocated:
    """Context manager: ``peak_mb`` = the most bytes PyTorch's CPU allocator held at once during the block,
    minus what it held at entry; ``end_mb`` = what is still held at exit (e.g. a cache built in the block).

    Read from the memory events of :class:`torch.profiler.profile` (``profile_memory=True``): every allocation
    and free of PyTorch's CPU allocator, in order. Memory that libraries take outside it (oneDNN/MKL scratch) is
    not counted; the C library's caching and page handling, which move resident-set peaks run to run, do not
    enter. The profiler slows the block down, so time other runs, not this one.
    """

    def __enter__(self) -> PeakAllocated:
        from torch.profiler import ProfilerActivity, profile

        self._profile = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._profile.__enter__()
        self.peak_mb = self.end_mb = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self._profile.__exit__(*exc)
        results = getattr(self._profile.profiler, "kineto_results", None)
        if results is None:
            raise RuntimeError("PeakAllocated: this PyTorch build's profiler gives no memory events "
                               "(profiler.kineto_results is missing); use PeakMemory instead")
        events = sorted((e for e in results.events() if e.name() == "[memory]" and e.device_type().name == "CPU"),
                        key=lambda e: e.start_ns())
        held = peak = 0
        for event in events:
            held += event.nbytes()
            peak = max(peak, held)
        self.peak_mb, self.end_mb = round(peak / 2**20, 2), round(held / 2**20, 2)


def time_runs(step: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    """Wall times (``time.perf_counter``) of ``repeats`` calls of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def cpu_description() -> dict[str, Any]:
    """The CPU that timings ran on: model name (``/proc/cpuinfo``, else ``platform.processor()``), the vector
    instructions PyTorch's CPU kernels use (e.g. ``AVX512``, ``AVX2``), and the number of cores. Timings of the
    same command differ between machines, so every benchmark records this beside its numbers."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_count": os.cpu_count()}


#: Environment variables that change how the C allocator hands out and returns memory (glibc tunables, a
#: preloaded jemalloc/tcmalloc, PyTorch's transparent-huge-page switch for CPU tensors); they move CPU timings of
#: large tensors by several percent.
ALLOCATOR_ENV = ("GLIBC_TUNABLES", "LD_PRELOAD", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_",
                 "MALLOC_TOP_PAD_", "MALLOC_CONF", "THP_MEM_ALLOC_ENABLE")


def allocator_env() -> dict[str, str]:
    """The :data:`ALLOCATOR_ENV` variables set in this process (``{}`` = the system allocator's defaults)."""
    return {name: os.environ[name] for name in ALLOCATOR_ENV if os.environ.get(name)}


#: glibc's ``mallopt`` parameters (``<malloc.h>``) and the largest mmap threshold it accepts (``HEAP_MAX_SIZE / 2``
#: on 64-bit builds).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MAX_MMAP_THRESHOLD_MB = 32
#: ``mallopt`` takes a C ``int`` (bytes), so the trim threshold stops just under 2 GiB.
MAX_TRIM_THRESHOLD_MB = (2**31 - 1) >> 20


def glibc_malloc() -> bool:
    """Whether this process's C library is glibc (whose ``mallopt`` :func:`set_malloc_thresholds` calls)."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def check_malloc_thresholds(mmap_threshold_mb: int | None, trim_threshold_mb: int | None) -> None:
    """``ValueError`` naming the value unless both thresholds are unset, or both set, in range, on glibc.
    ``trim_threshold_mb=-1`` means never trim (as ``mallopt(3)`` documents)."""
    if mmap_threshold_mb is None and trim_threshold_mb is None:
        return
    if mmap_threshold_mb is None or trim_threshold_mb is None:
        raise ValueError(f"set both malloc thresholds or neither, got mmap_threshold_mb={mmap_threshold_mb}, "
                         f"trim_threshold_mb={trim_threshold_mb}")
    if not 0 < mmap_threshold_mb <= MAX_MMAP_THRESHOLD_MB:
        raise ValueError(f"mmap_threshold_mb must be in 1..{MAX_MMAP_THRESHOLD_MB} (glibc's limit), "
                         f"got {mmap_threshold_mb}")
    if trim_threshold_mb != -1 and not mmap_threshold_mb <= trim_threshold_mb <= MAX_TRIM_THRESHOLD_MB:
        raise ValueError(f"trim_threshold_mb must be -1 (never trim) or in mmap_threshold_mb..{MAX_TRIM_THRESHOLD_MB} "
                         f"(mallopt takes a C int of bytes), got {trim_threshold_mb}")
    if not glibc_malloc():
        raise ValueError(f"malloc thresholds need glibc's mallopt; this is {platform.system()} "
                         f"{'-'.join(platform.libc_ver()) or 'without glibc'}: leave them unset")


def set_malloc_thresholds(mmap_threshold_mb: int, trim_threshold_mb: int) -> None:
    """Fix glibc's malloc thresholds for the rest of this process (``mallopt``; like starting it with
    ``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=<bytes>:glibc.malloc.trim_threshold=<bytes>``).

    By default glibc serves blocks above a *dynamic* threshold (128 KB, raised up to 32 MB as mapped blocks are
    freed) with their own ``mmap`` and gives the heap's free top back to the kernel above twice that. A training
    step frees and re-allocates the same activation sizes every layer, so pages go back to the kernel and are
    faulted in again (a fixed cost per step; docs/benchmarks.md, "Why the allocator matters").
    Fixed thresholds stop that for
    blocks under ``mmap_threshold_mb``: they come from the heap, which is trimmed only when more than
    ``trim_threshold_mb`` of it is free at the top (``-1``: never; a BERT-base backward at 8,192 tokens frees
    more than the 2047 MB ``mallopt`` can express otherwise). Larger blocks (a BERT-base feed-forward activation
    at 8,192 tokens is 100 MB) still get their own mapping and go back when freed, so peak memory stays close to
    the default's, unlike a threshold above every tensor. Affects dense and sparse attention alike.

    Raises:
        ValueError: for values :func:`check_malloc_thresholds` rejects, or if glibc refuses them.
    """
    check_malloc_thresholds(mmap_threshold_mb, trim_threshold_mb)
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    trim = -1 if trim_threshold_mb == -1 else trim_threshold_mb << 20
    for param, value, name in ((_M_MMAP_THRESHOLD, mmap_threshold_mb << 20, f"mmap_threshold_mb={mmap_threshold_mb}"),
                               (_M_TRIM_THRESHOLD, trim, f"trim_threshold_mb={trim_threshold_mb}")):
        if mallopt(param, value) != 1:
            raise ValueError(f"glibc's mallopt refused {name}")


def available_memory_gb(fraction: float = 0.75) -> float:
    """``fraction`` of the memory the kernel reports available now (``MemAvailable``), or 8 GB if unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return round(fraction * int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return 8.0
