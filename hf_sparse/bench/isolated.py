"""Benchmark rows in child processes under a memory budget: one row per process, or several rows' processes
stepping in turn.

    result = run_isolated(measure_row, spec, memory_gb=16, timeout_s=3600)   # {"status": "ok" | ..., ...}
    results = run_interleaved(Row, [dense_spec, sparse_spec], warmup=1, repeats=3, memory_gb=16, timeout_s=3600)

:func:`run_isolated` runs ``measure_row(spec)`` in a fresh process. :func:`run_interleaved` keeps one process per
row alive at once and has them take their timed steps one at a time in turn, so that a machine whose speed drifts
(another tenant, clock changes) slows the rows being compared alike instead of whichever ran while it was slow.
A row that runs out of memory, is killed or takes too long comes back as ``status: "skipped"`` with the reason;
any other exception as ``"error"``; the benchmark goes on either way.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import resource
import time
from collections.abc import Callable
from typing import Any, Protocol


class SteppedRow(Protocol):
    """A row built in its own process (``prepare(spec)``) for :func:`run_interleaved`."""

    def step(self) -> None:
        """One (timed) step."""

    def finish(self) -> dict[str, Any]:
        """What the row reports besides its times, measured after the last step."""


def _first_line(exc: BaseException, limit: int = 200) -> str:
    return (str(exc).splitlines() or [""])[0][:limit]


def _failure(exc: BaseException, memory_gb: float) -> dict[str, Any]:
    """A row's exception as ``skipped`` (out of memory under the budget) or ``error``."""
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "allocate" in str(exc)):
        wanted = re.search(r"allocate (\d+) bytes", str(exc))
        detail = f" (an allocation of {int(wanted.group(1)) / 2**20:.0f} MB failed)" if wanted else ""
        return {"status": "skipped", "reason": f"out of memory under the {memory_gb:g} GB budget{detail}"}
    return {"status": "error", "reason": f"{type(exc).__name__}: {_first_line(exc)}"}


def _limit_memory(memory_gb: float) -> None:
    limit = int(memory_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))


def _context():
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _died(proc) -> dict[str, Any]:
    """Why a row's process ended without a result."""
    proc.join()
    code = proc.exitcode
    if code is not None and code < 0:
        return {"status": "skipped", "reason": f"row process killed by signal {-code} (out of memory?)"}
    return {"status": "error", "reason": f"row process exited with code {code} without a result"}


def _timed_out(proc, timeout_s: float) -> dict[str, Any]:
    proc.kill()
    proc.join()
    return {"status": "skipped", "reason": f"took longer than timeout_s={timeout_s:g}"}


def _child(target: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any], memory_gb: float, conn) -> None:
    _limit_memory(memory_gb)
    try:
        result = {"status": "ok", **target(spec)}
    except Exception as exc:  # reported in the row; the benchmark goes on
        result = _failure(exc, memory_gb)
    conn.send(result)
    conn.close()


def run_isolated(
    target: Callable[[dict[str, Any]], dict[str, Any]], spec: dict[str, Any], *, memory_gb: float, timeout_s: float
) -> dict[str, Any]:
    """``{"status": "ok", **target(spec)}`` computed in a fresh child process, or why not.

    The child is forked (spawned where fork is unavailable), so it starts with the parent's imports but none
    of a previous row's allocations; fork before the parent runs any multi-threaded torch work. It runs
    under ``RLIMIT_DATA = memory_gb``: a failed allocation returns ``status: "skipped"`` with the reason, as
    do a child killed by a signal and one running past ``timeout_s``; other exceptions give ``"error"``.
    """
    context = _context()
    receive, send = context.Pipe(duplex=False)
    proc = context.Process(target=_child, args=(target, spec, memory_gb, send), daemon=True)
    proc.start()
    send.close()
    if not receive.poll(timeout_s):
        return _timed_out(proc, timeout_s)
    try:  # a result, or EOF when the child died without one
        result = receive.recv()
    except EOFError:
        return _died(proc)
    proc.join()
    return result


def _stepping_child(prepare: Callable[[dict[str, Any]], SteppedRow], spec: dict[str, Any], memory_gb: float,
                    conn) -> None:
    """Build the row, answer ``"ready"``; then one timed step (answer: seconds) per ``"step"`` until
    ``"finish"`` (answer: the row's result). A failure answers with it and ends the process."""
    _limit_memory(memory_gb)
    try:
        row = prepare(spec)
        conn.send("ready")
        while conn.recv() == "step":
            start = time.perf_counter()
            row.step()
            conn.send(time.perf_counter() - start)
        conn.send({"status": "ok", **row.finish()})
    except Exception as exc:
        conn.send(_failure(exc, memory_gb))
    conn.close()


class _Stepping:
    """The parent's end of one row's process; ``timeout_s`` bounds the time spent waiting for this row's answers
    (not the other rows' steps)."""

    def __init__(self, prepare, spec: dict[str, Any], memory_gb: float, timeout_s: float) -> None:
        context = _context()
        self.conn, child_end = context.Pipe()
        self.proc = context.Process(target=_stepping_child, args=(prepare, spec, memory_gb, child_end), daemon=True)
        self.proc.start()
        child_end.close()
        self.left, self.timeout_s = timeout_s, timeout_s
        self.times: list[float] = []
        self.result: dict[str, Any] | None = None  # set once the row is done, failed or not

    def ask(self, request: str | None) -> Any:
        """Send ``request`` (or nothing) and return the answer; ``None`` when the row failed (see :attr:`result`)."""
        try:
            if request is not None:
                self.conn.send(request)
            start = time.monotonic()
            answered = self.conn.poll(max(0.0, self.left))
            self.left -= time.monotonic() - start
            if not answered:
                self.result = _timed_out(self.proc, self.timeout_s)
                return None
            answer = self.conn.recv()
        except (EOFError, OSError):
            self.result = _died(self.proc)
            return None
        if isinstance(answer, dict):  # a failure (or, after "finish", the result)
            self.result = answer
            return None
        return answer


def run_interleaved(prepare: Callable[[dict[str, Any]], SteppedRow], specs: list[dict[str, Any]], *, warmup: int,
                    repeats: int, memory_gb: float, timeout_s: float) -> list[dict[str, Any]]:
    """One result per spec, as :func:`run_isolated`'s, with ``times_s`` (the ``repeats`` timed steps) added.

    Every spec gets its own process (forked as in :func:`run_isolated`, each under ``RLIMIT_DATA = memory_gb``:
    the caller checks that the rows fit side by side), all alive at once. After all are built, they step one at
    a time: ``warmup`` untimed rounds, then ``repeats`` timed ones, each round visiting every row once, in
    reverse order every other round (A B, B A, ...), so a drift of the machine's speed during a round falls on
    the rows alike. Each row ends with ``finish()`` in its process; ``timeout_s`` bounds the time spent
    waiting for each row (its build, steps and finish).
    """
    rows = [_Stepping(prepare, spec, memory_gb, timeout_s) for spec in specs]
    for row in rows:
        row.ask(None)  # "ready", or the row's failure
    for round_ in range(warmup + repeats):
        for row in rows if round_ % 2 == 0 else rows[::-1]:
            if row.result is None:
                seconds = row.ask("step")
                if seconds is not None and round_ >= warmup:
                    row.times.append(seconds)
    for row in rows:
        if row.result is None:
            row.ask("finish")
        row.proc.join()
        if row.result.get("status") == "ok":
            row.result["times_s"] = row.times
    return [row.result for row in rows]
