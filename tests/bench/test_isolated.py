"""hf_sparse.bench.isolated: rows in their own process under a memory budget, alone or stepping in turn."""

from __future__ import annotations

import os
import signal
import sys
import time
from types import SimpleNamespace

import pytest

from hf_sparse.bench import isolated
from hf_sparse.bench.isolated import run_interleaved, run_isolated
from hf_sparse.bench.profiling import PeakMemory, time_runs

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
    slow = run_isolated(lambda spec: time_runs(lambda: time.sleep(5), 0, 1), {}, memory_gb=4, timeout_s=0.5)
    assert slow["status"] == "skipped" and "timeout_s=0.5" in slow["reason"]


_CLOCK = [0.0]  # a fake perf_counter for the row processes (each forked row advances its own copy)


class _LoggedRow:
    """Appends ``name step`` to a shared log per step (one write: lines from the processes do not mix); a spec
    may fail while building, at a given step, or die or hang there."""

    def __init__(self, spec):
        self.spec, self.steps = spec, 0
        if spec.get("fail") == "build":
            raise ValueError("bad model")
        self.pid = os.getpid()

    def step(self):
        self.steps += 1
        if self.steps == self.spec.get("fail_at"):
            {"die": lambda: os.kill(os.getpid(), signal.SIGKILL), "hang": lambda: time.sleep(30),
             "raise": lambda: (_ for _ in ()).throw(RuntimeError("step failed"))}[self.spec["fail"]]()
        with open(self.spec["log"], "a") as log:
            log.write(f"{self.spec['name']} {self.steps}\n")
        _CLOCK[0] += self.spec.get("tick", 0.0) * self.steps  # this step "takes" tick x its number

    def finish(self):
        return {"steps": self.steps, "pid": self.pid, "peak": 1.0}


def _log(path):
    return path.read_text().split()[::2]


def test_interleaved_rows_step_in_turn_each_in_its_own_process(tmp_path, monkeypatch):
    monkeypatch.setattr(isolated, "time", SimpleNamespace(perf_counter=lambda: _CLOCK[0], monotonic=time.monotonic))
    log = tmp_path / "log"
    specs = [{"name": name, "log": str(log), "tick": tick} for name, tick in zip("abc", (1.0, 10.0, 100.0), strict=True)]
    results = run_interleaved(_LoggedRow, specs, warmup=1, repeats=3, memory_gb=4, timeout_s=60)
    # rounds alternate direction: a b c, c b a, a b c, c b a (one warm-up round, three timed)
    assert "".join(_log(log)) == "abccbaabccba"
    assert [r["status"] for r in results] == ["ok"] * 3 and [r["steps"] for r in results] == [4, 4, 4]
    assert len({r["pid"] for r in results} | {os.getpid()}) == 4, "one process per row, none the parent"
    # each row reports the clock its own steps advanced, for the timed steps 2-4 only (step 1 is the warm-up)
    assert [r["times_s"] for r in results] == [[2.0, 3.0, 4.0], [20.0, 30.0, 40.0], [200.0, 300.0, 400.0]]


@pytest.mark.parametrize("fail", ["build", "raise", "die", "hang"])
def test_an_interleaved_row_that_fails_is_reported_and_the_others_go_on(tmp_path, fail):
    log = tmp_path / "log"
    specs = [{"name": "a", "log": str(log)}, {"name": "b", "log": str(log), "fail": fail, "fail_at": 2}]
    results = run_interleaved(_LoggedRow, specs, warmup=0, repeats=3, memory_gb=4,
                              timeout_s=2 if fail == "hang" else 60)
    assert results[0]["status"] == "ok" and results[0]["steps"] == 3 and len(results[0]["times_s"]) == 3, results
    want = {"build": ("error", "ValueError: bad model"), "raise": ("error", "RuntimeError: step failed"),
            "die": ("skipped", "killed by signal 9"), "hang": ("skipped", "took longer than timeout_s=2")}[fail]
    assert results[1]["status"] == want[0] and want[1] in results[1]["reason"], results[1]
    assert "times_s" not in results[1]
    assert _log(log) == (["a"] * 3 if fail == "build" else ["a", "b", "a", "a"]), "b failed in its second step"
