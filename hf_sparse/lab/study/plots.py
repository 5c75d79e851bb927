"""The study's pictures (matplotlib, Agg): per task, the metric against train and eval throughput with the
Pareto front marked, and the metric against token density (one line per swept entry, dense as a reference)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import pareto_front, role_of


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(r: dict[str, Any]) -> str:
    return r["sweep"] or r["entry"]


def metric_vs_speed(task_rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Two panels (train, eval samples/s); the Pareto front (faster and better) joined in red."""
    ok = [r for r in task_rows if r["status"] == "ok" and r["value"] is not None]
    if not ok:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    metric = ok[0]["metric"]
    for ax, kind in zip(axes, ("train", "eval"), strict=True):
        points = [(r[f"{kind}_samples_per_s"], r["value"], r) for r in ok if r[f"{kind}_samples_per_s"]]
        for x, y, r in points:
            dense = r["pattern"] == "dense"
            ax.scatter([x], [y], marker="s" if dense else "o", color="black" if dense else "tab:blue", zorder=3)
            ax.annotate(r["run"].removeprefix(f"{r['task']}-"), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        front = sorted(points[i] for i in pareto_front([(x, y) for x, y, _ in points]))
        if front:
            ax.plot([p[0] for p in front], [p[1] for p in front], color="tab:red", lw=1.5, marker="o",
                    mfc="none", ms=11, label="Pareto front", zorder=2)
            ax.legend(fontsize=8, loc="best")
        ax.set_xlabel(f"{kind} samples/s (higher is faster)")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{task_rows[0]['task']}: {metric} vs speed (square: dense)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_vs_density(task_rows: list[dict[str, Any]], path: Path) -> Path | None:
    """The metric against token density, a line per entry; dense drawn as a dashed horizontal line."""
    ok = [r for r in task_rows if r["status"] == "ok" and r["value"] is not None and r["token_density"] is not None]
    if not ok:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    dense = next((r for r in ok if role_of(r) == "dense"), None)  # not the truncated row
    if dense is not None:
        ax.axhline(dense["value"], color="black", ls="--", lw=1, label=f"dense ({dense['value']:.3f})")
    for entry in dict.fromkeys(r["entry"] for r in ok if r["pattern"] != "dense"):
        points = sorted((r for r in ok if r["entry"] == entry), key=lambda r: r["token_density"])
        ax.plot([r["token_density"] for r in points], [r["value"] for r in points], marker="o", label=entry)
        for r in points:
            if r["sweep"]:
                ax.annotate(r["sweep"].split("=", 1)[-1] if "," not in r["sweep"] else r["sweep"],
                            (r["token_density"], r["value"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xlabel("token density (fraction of (query, key) pairs kept)")
    ax.set_ylabel(f"test {ok[0]['metric']}")
    ax.set_xlim(0, 1.05)
    ax.set_title(f"{task_rows[0]['task']}: {ok[0]['metric']} vs density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(table: list[dict[str, Any]], folder: Path) -> dict[str, list[str]]:
    """Both plots for every task with a finished run; returns task -> file names relative to ``folder.parent``."""
    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    for task in dict.fromkeys(r["task"] for r in table):
        task_rows = [r for r in table if r["task"] == task]
        for kind, draw in (("metric_vs_speed", metric_vs_speed), ("metric_vs_density", metric_vs_density)):
            out = draw(task_rows, folder / f"{task}_{kind}.png")
            if out is not None:
                made.setdefault(task, []).append(f"{folder.name}/{out.name}")
    return made
