"""hf_sparse.bench.profiling: peak-memory growth, allocation peaks, timing and the allocator settings."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from hf_sparse.bench import profiling
from hf_sparse.bench.profiling import (
    PeakAllocated,
    check_malloc_thresholds,
    glibc_malloc,
    time_runs,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and forks (Linux)")


def test_time_runs_times_only_the_repeats(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(profiling, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    durations = iter([1000.0, 1000.0, 1.0, 2.0, 3.0])  # two warm-up calls, then the repeats

    def step():
        clock[0] += next(durations)

    assert time_runs(step, warmup=2, repeats=3) == [1.0, 2.0, 3.0]
    assert next(durations, None) is None, "five calls in all"


def test_machine_description_names_the_cpu_and_the_allocator_settings(monkeypatch):
    """Benchmarks record the CPU model, PyTorch's vector-instruction level and the allocator variables in force."""
    from hf_sparse.bench.profiling import ALLOCATOR_ENV, allocator_env, cpu_description

    cpu = cpu_description()
    assert cpu["cpu_count"] == os.cpu_count() and cpu["cpu_model"]
    assert cpu["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    assert allocator_env() == {}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1073741824")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "")  # set but empty: not a setting
    assert allocator_env() == {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1073741824"}


_REFAULTS = """
import ctypes, resource, sys
if sys.argv[1] == "fixed":
    from hf_sparse.bench.profiling import set_malloc_thresholds
    set_malloc_thresholds(mmap_threshold_mb=32, trim_threshold_mb=int(sys.argv[2]))
libc = ctypes.CDLL(None)  # malloc/free straight from C: no other allocation lands between the blocks
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, (ctypes.c_size_t,), (ctypes.c_void_p,)
size = 8 << 20
for _ in range(6):  # six "steps", each with 8 x 8 MB activation-sized blocks live at once, written, then freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    blocks = [libc.malloc(size) for _ in range(8)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not glibc_malloc(), reason="mallopt thresholds are a glibc feature")
def test_fixed_malloc_thresholds_reuse_freed_blocks_instead_of_faulting_them_in_again():
    """In a fresh process glibc's dynamic thresholds give the 64 MB freed by each step back to the kernel, so
    every step faults its 16,384 pages in again; with fixed thresholds the heap keeps them after warm-up."""
    faults = {}
    for mode, trim in (("default", "0"), ("fixed", "2047"), ("fixed", "-1")):
        proc = subprocess.run([sys.executable, "-c", _REFAULTS, mode, trim], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        faults[mode, trim] = [int(n) for n in proc.stdout.split()][-3:]  # the steps after warm-up
    assert min(faults["default", "0"]) > 12000, faults
    assert max(faults["fixed", "2047"]) < 500 and max(faults["fixed", "-1"]) < 500, faults


@pytest.mark.parametrize(("mmap_mb", "trim_mb", "match"), [
    (32, None, "set both malloc thresholds or neither"),
    (0, 2047, r"mmap_threshold_mb must be in 1\.\.32 .*got 0"),
    (33, 2047, r"mmap_threshold_mb must be in 1\.\.32 .*got 33"),
    (32, 4096, r"trim_threshold_mb must be -1 \(never trim\) or in mmap_threshold_mb\.\.2047 .*got 4096"),
    (32, 16, r"trim_threshold_mb must be -1 .*got 16"),
    (32, -2, r"trim_threshold_mb must be -1 .*got -2"),
])
def test_malloc_thresholds_out_of_range_name_the_value(mmap_mb, trim_mb, match):
    with pytest.raises(ValueError, match=match):
        check_malloc_thresholds(mmap_mb, trim_mb)
    check_malloc_thresholds(None, None)  # unset: the allocator's defaults, nothing to check


def test_peak_allocated_counts_tensors_alive_at_once_not_what_came_before():
    before = torch.ones(1 << 20)  # 4 MiB held at entry: not counted
    with PeakAllocated() as alloc:
        a = torch.ones(1 << 20)    # 4 MiB
        b = torch.ones(2 << 20)    # + 8 MiB: 12 MiB alive, the peak
        del a
        c = torch.ones(1 << 19)    # 8 + 2 MiB < 12
        del b
    assert alloc.peak_mb == pytest.approx(12.0, abs=0.01), alloc.peak_mb
    assert alloc.end_mb == pytest.approx(2.0, abs=0.01), "c is still held"
    del c, before
