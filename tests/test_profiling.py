"""hf_sparse.profiling: peak-memory growth, and rows in their own process under a memory budget."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import torch

from hf_sparse.profiling import PeakMemory, run_isolated, time_runs

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and forks (Linux)")


def _allocate(spec):
    with PeakMemory() as peak:
        block = bytearray(spec["mb"] * 2**20)  # zero-filled: resident at once
        del block
    return {"growth_mb": peak.growth_mb, "method": peak.method}


def _fail(spec):
    raise ValueError("bad row")


def _die(spec):
    os.kill(os.getpid(), signal.SIGKILL)


def test_peak_memory_counts_a_transient_allocation_and_rows_run_isolated():
    ok = run_isolated(_allocate, {"mb": 300}, memory_gb=4, timeout_s=60)
    assert ok["status"] == "ok" and 280 <= ok["growth_mb"] <= 400, ok
    small = run_isolated(_allocate, {"mb": 20}, memory_gb=4, timeout_s=60)
    assert small["growth_mb"] < 100, "a fresh process must not carry the previous row's peak"


def test_rows_that_do_not_fit_fail_or_hang_are_reported_not_raised():
    over = run_isolated(_allocate, {"mb": 3000}, memory_gb=1, timeout_s=60)
    assert over["status"] == "skipped" and "out of memory under the 1 GB budget" in over["reason"]
    assert run_isolated(_fail, {}, memory_gb=4, timeout_s=60) == {"status": "error", "reason": "ValueError: bad row"}
    killed = run_isolated(_die, {}, memory_gb=4, timeout_s=60)
    assert killed["status"] == "skipped" and "signal 9" in killed["reason"]
    slow = run_isolated(lambda spec: time_runs(lambda: __import__("time").sleep(5), 0, 1), {}, memory_gb=4, timeout_s=0.5)
    assert slow["status"] == "skipped" and "timeout_s=0.5" in slow["reason"]


def test_time_runs_times_only_the_repeats():
    calls = []
    times = time_runs(lambda: calls.append(1), warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_machine_description_names_the_cpu_and_the_allocator_settings(monkeypatch):
    """Benchmarks record the CPU model, PyTorch's vector-instruction level and the allocator variables in force."""
    from hf_sparse.profiling import ALLOCATOR_ENV, allocator_env, cpu_description

    cpu = cpu_description()
    assert cpu["cpu_count"] == os.cpu_count() and cpu["cpu_model"]
    assert cpu["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    for name in ALLOCATOR_ENV:
        monkeypatch.delenv(name, raising=False)
    assert allocator_env() == {}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1073741824")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "")  # set but empty: not a setting
    assert allocator_env() == {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1073741824"}
