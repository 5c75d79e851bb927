"""The study's table: one row per run from its metrics.json, the honesty notes on speed, the Pareto front, the
"too sparse" point, and the CSV / markdown / console forms.

Speed-ups divide only by runs of the same task in the same study folder, measured on the same documents (the
same ``train_size`` for train speed, ``test_size`` for eval speed): ``*_speedup`` by the faster of the task's
``dense`` rows (full-length dense attention; the faster one separately for train and eval),
``*_speedup_vs_truncated`` by its ``dense_truncated`` row (see hf_sparse.lab.study.grid for roles). A dense speed
row on fewer documents is compared with the others in the note, not in the columns. The committed reference
study contributes only its metric (``ref_value``, ``ref_diff``), never a speed."""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .runner import RunResult

#: Backends that compute every (query, key) pair: a speed difference with them is overhead or noise.
DENSE_COST_BACKENDS = {"masked_sdpa", "reference"}

CSV_COLUMNS = [
    "task", "run", "entry", "role", "sweep", "status", "skipped", "pattern", "metric", "value", "value_se",
    "train_size", "test_size", "ref_value", "ref_diff", "token_density", "block_density", "block_size", "eval_length",
    "train_samples_per_s", "eval_samples_per_s", "generation_tokens_per_s", "train_speedup", "eval_speedup",
    "train_speedup_vs_truncated", "eval_speedup_vs_truncated", "peak_memory_mb", "backends", "pareto",
    "total_wall_s", "ref_note", "error",
]


def rows(results: list[RunResult], reference: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One flat row per result (``reference``: :func:`~hf_sparse.lab.study.runner.reference_metrics`); speed-ups
    as the module docstring says."""
    out = []
    for result in results:
        m = result.metrics if result.status == "ok" else None
        m = m or {}
        speed, sparse = m.get("speed") or {}, m.get("sparse") or {}
        primary = m.get("primary_metric")
        pattern = sparse.get("pattern") or _part_patterns(sparse)
        test, data = m.get("test") or {}, m.get("data") or {}
        value = test.get(primary)
        test_size = data.get("test")
        ref = (reference or {}).get(result.run.name) or {}
        ref_value = ((ref.get("metrics") or {}).get("test") or {}).get(primary) if primary else None
        out.append({
            "task": result.run.task, "run": result.run.name, "entry": result.run.entry,
            "role": result.run.role or (None if pattern is None else "dense" if pattern == "dense" else "sparse"),
            "sweep": ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in result.run.sweep.items()),
            "status": result.status, "skipped": result.skipped,
            "pattern": pattern, "metric": primary, "value": value,
            "value_se": standard_error(primary, value, test_size, test.get(f"{primary}_se")), "ref_value": ref_value,
            "ref_diff": round(value - ref_value, 6) if value is not None and ref_value is not None else None,
            "ref_note": ref.get("differs"), "token_density": _density(sparse, "token_density"),
            "block_density": _density(sparse, "block_density"), "block_size": sparse.get("block_size"),
            "eval_length": sparse.get("eval_length"),
            "train_samples_per_s": speed.get("train_samples_per_s"), "eval_samples_per_s": speed.get("eval_samples_per_s"),
            "generation_tokens_per_s": speed.get("generation_tokens_per_s"),
            "train_speedup": None, "eval_speedup": None, "train_speedup_vs_truncated": None,
            "eval_speedup_vs_truncated": None, "peak_memory_mb": speed.get("peak_memory_mb"),
            "train_size": data.get("train"), "test_size": test_size, "load_avg": result.load_avg,
            "backends": _backends(sparse), "backends_set": sorted(set(_collect(sparse, "backends"))), "pareto": False, "total_wall_s": speed.get("total_wall_s"),
            "error": result.error if result.status != "ok" else None,
        })
    for task in tasks(out):
        task_rows = [r for r in out if r["task"] == task]
        for kind in ("train", "eval"):
            for r in task_rows:
                mine, docs = r[f"{kind}_samples_per_s"], documents(r, kind)
                for role, column in (("dense", f"{kind}_speedup"), ("dense_truncated", f"{kind}_speedup_vs_truncated")):
                    base = baseline(task_rows, role, kind, docs)
                    if base is not None and mine:
                        r[column] = round(mine / base[f"{kind}_samples_per_s"], 3)
        ok = [r for r in task_rows if r["value"] is not None and r["train_samples_per_s"]]
        for i in pareto_front([(r["train_samples_per_s"], r["value"]) for r in ok]):
            ok[i]["pareto"] = True
    return out


def standard_error(metric: str | None, value: float | None, n: int | None, recorded: float | None = None) -> float | None:
    """One standard error of the test metric: the run's own ``recorded`` one (``test["<metric>_se"]``: seq2seq
    scores record theirs, see ``hf_sparse.lab.finetune.scores``), else for an accuracy measured on ``n``
    examples ``sqrt(p (1 - p) / n)``; ``None`` when neither applies."""
    if recorded is not None:
        return round(float(recorded), 4)
    if metric != "accuracy" or value is None or not n:
        return None
    return round(math.sqrt(value * (1 - value) / n), 4)


def role_of(r: dict[str, Any]) -> str | None:
    """A row's role; rows built without one (older callers) count as dense when their pattern is."""
    return r.get("role") or ("dense" if r.get("pattern") == "dense" else "sparse")


def documents(r: dict[str, Any], kind: str) -> int | None:
    """How many documents the row's ``kind`` ("train" | "eval") speed was measured on (``None``: not recorded)."""
    return r.get("train_size" if kind == "train" else "test_size")


def baseline(task_rows: list[dict[str, Any]], role: str, kind: str, docs: int | None = None) -> dict[str, Any] | None:
    """The fastest ok row of ``role`` by ``kind`` ("train" | "eval") samples/s among the rows measured on the same
    number of documents ``docs`` (rows of a task draw them in one order, so equal counts are the same documents),
    if any has a speed."""
    rows_ = [r for r in task_rows if r["status"] == "ok" and role_of(r) == role and r[f"{kind}_samples_per_s"]
             and documents(r, kind) == docs]
    return max(rows_, key=lambda r: r[f"{kind}_samples_per_s"], default=None)


def baseline_note(task_rows: list[dict[str, Any]]) -> str:
    """Which runs the speed-up columns divide by, and how dense runs on other documents compare."""
    parts, others = [], []
    for kind in ("train", "eval"):
        main = _main_documents(task_rows, kind)
        dense = baseline(task_rows, "dense", kind, main)
        if dense is None:
            continue
        parts.append(f"{kind}: {dense['run']} ({dense[f'{kind}_samples_per_s']:.1f}/s on {main} documents)")
        for r in task_rows:
            if role_of(r) == "dense" and r["status"] == "ok" and r[f"{kind}_samples_per_s"] and \
                    documents(r, kind) != main:
                ratio = r[f"{kind}_samples_per_s"] / dense[f"{kind}_samples_per_s"]
                others.append(f"{r['run']} measured {kind} speed on {documents(r, kind)} other documents: "
                              f"{ratio:.2f}x {dense['run']}'s samples/s (its own {kind} speed-up divides by itself)")
    if not parts:
        return "No dense full-length run finished, so there are no speed-ups."
    note = f"Speed-ups divide by the faster full-length dense run on the same documents ({'; '.join(parts)})"
    truncated = baseline(task_rows, "dense_truncated", "train", _main_documents(task_rows, "train"))
    if truncated is not None:
        length = f" at {truncated['eval_length']} tokens" if truncated["eval_length"] else ""
        note += f"; the \"vs truncated\" columns by {truncated['run']} (dense attention on truncated inputs{length})"
    return note + "." + "".join(f" {o}." for o in others)


def _main_documents(task_rows: list[dict[str, Any]], kind: str) -> int | None:
    """The number of documents most of the task's ``kind`` speeds were measured on."""
    counts = [documents(r, kind) for r in task_rows if r[f"{kind}_samples_per_s"]]
    return max(set(counts), key=counts.count, default=None)


def tasks(table: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["task"] for r in table))


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats in both coordinates (higher is better in both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return front


def speed_note(task_rows: list[dict[str, Any]]) -> str:
    """Whether any sparse kernel ran for the task; if none did, say the speed columns are not a speed-up."""
    sparse = [r for r in task_rows if r["status"] == "ok" and r["pattern"] not in (None, "dense")]
    if not sparse:
        return "No sparse run finished, so there is no speed comparison."
    lengths = sorted({r["eval_length"] for r in sparse if r["eval_length"]})
    at = f" at {'/'.join(str(n) for n in lengths)} tokens" if lengths else ""
    fast = [r for r in sparse if set(r["backends_set"]) - DENSE_COST_BACKENDS]
    if not fast:
        return (f"**No sparse kernel ran{at}**: every sparse run used masked_sdpa (dense attention plus a mask), "
                "so speed differences are mask overhead and noise, not a sparsity speed-up (speed-ups in parentheses).")
    slow = [r["run"] for r in sparse if r not in fast]
    kernels = sorted({b for r in fast for b in r["backends_set"]} - DENSE_COST_BACKENDS)
    note = f"A sparse kernel ({', '.join(kernels)}) ran{at} in {len(fast)} of {len(sparse)} sparse runs"
    if slow:
        note += (f"; {', '.join(slow)} used masked_sdpa only (their speed-ups, in parentheses, are overhead and "
                 "noise)")
    return note + ". Differences under ~10% are within run-to-run noise on a shared CPU."


def too_sparse(task_rows: list[dict[str, Any]], tolerance: float) -> list[str]:
    """Per swept entry: the densest setting whose metric falls more than the fraction ``tolerance`` below
    dense (``value < dense * (1 - tolerance)``)."""
    dense = next((r for r in task_rows if r["status"] == "ok" and role_of(r) == "dense"), None)
    if dense is None or dense["value"] is None:
        return []
    lines = []
    for entry in dict.fromkeys(r["entry"] for r in task_rows if r["sweep"]):
        points = sorted((r for r in task_rows if r["entry"] == entry and r["value"] is not None
                         and r["token_density"] is not None), key=lambda r: -r["token_density"])
        if len(points) < 2:
            continue
        bad = [r for r in points if r["value"] < dense["value"] * (1 - tolerance)]
        if not bad:
            lines.append(f"{entry}: every setting stays within {tolerance:.0%} of dense "
                         f"(down to token density {points[-1]['token_density']:.3f})")
        elif len(bad) == len(points):
            lines.append(f"{entry}: every setting falls more than {tolerance:.0%} below dense, the densest too "
                         f"({bad[0]['sweep']}, token density {bad[0]['token_density']:.3f}, {bad[0]['metric']} "
                         f"{bad[0]['value']:.4f} vs dense {dense['value']:.4f})")
        elif any(points.index(r) > points.index(bad[0]) for r in points if r not in bad):
            fine = ", ".join(r["sweep"] for r in points[points.index(bad[0]):] if r not in bad)
            lines.append(f"{entry}: no clear point: {', '.join(r['sweep'] for r in bad)} fall more than "
                         f"{tolerance:.0%} below dense but the sparser {fine} do not (noise at this budget)")
        else:
            first = bad[0]
            lines.append(f"{entry}: too sparse from {first['sweep']} (token density {first['token_density']:.3f}, "
                         f"{first['metric']} {first['value']:.4f} vs dense {dense['value']:.4f})")
    se = dense.get("value_se") or standard_error(dense["metric"], dense["value"], dense.get("test_size"))
    if se is not None and lines:
        lines.append(f"for scale: one standard error of the dense {dense['metric']} on {dense.get('test_size')} test "
                     f"examples is ±{se:.3f}")
    return lines


# -- output forms ---------------------------------------------------------------------------------------------------

MD_COLUMNS = [("run", "run"), ("role", "role"), ("status", "status"), ("value", "metric"),
              ("train_size", "trained on"), ("test_size", "test n"),
              ("token_density", "token density"), ("eval_length", "eval length"),
              ("train_samples_per_s", "train samples/s"), ("eval_samples_per_s", "eval samples/s"),
              ("train_speedup", "train speed-up"), ("eval_speedup", "eval speed-up"), ("peak_memory_mb", "peak MB"),
              ("backends", "backend"), ("pareto", "Pareto")]
#: Columns shown only where a row of the task has a value: (key, title, the column they follow).
MD_OPTIONAL = [("ref_value", "reference (diff)", "value"),
               ("generation_tokens_per_s", "generated tokens/s", "eval_samples_per_s"),
               ("train_speedup_vs_truncated", "train vs truncated", "eval_speedup"),
               ("eval_speedup_vs_truncated", "eval vs truncated", "train_speedup_vs_truncated")]


def write_csv(table: list[dict[str, Any]], path: Path) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in table:
            writer.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_COLUMNS})
    return path


def task_table(task_rows: list[dict[str, Any]]) -> list[list[str]]:
    """Header plus one row of cells per run (a failed run shows its error in the status cell)."""
    metric = next((r["metric"] for r in task_rows if r["metric"]), "metric")
    columns = list(MD_COLUMNS)
    for key, title, after in MD_OPTIONAL:
        if any(r.get(key) is not None for r in task_rows):
            columns.insert([k for k, _ in columns].index(after) + 1, (key, title))
    header = [f"{metric} ± SE" if key == "value" and any(r["value_se"] is not None for r in task_rows)
              else metric if key == "value" else title for key, title in columns]
    return [header, *[[_cell(key, r) for key, _ in columns] for r in task_rows]]


def markdown(table: list[dict[str, Any]], title: str, preamble: Iterable[str], tolerance: float,
             plots: dict[str, list[str]]) -> str:
    lines = [f"# {title}", "", *preamble, ""]
    for task in tasks(table):
        task_rows = [r for r in table if r["task"] == task]
        cells = task_table(task_rows)
        lines += [f"## {task}", "", speed_note(task_rows), "", baseline_note(task_rows), ""]
        lines += ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in cells[1:]]
        lines.append("")
        sparse_limits = too_sparse(task_rows, tolerance)
        if sparse_limits:
            lines += [f"Where \"too sparse\" starts (metric more than {tolerance:.0%} below dense):", "", *[f"- {line}" for line in sparse_limits], ""]
        for name in plots.get(task, []):
            lines += [f"![{task}: {Path(name).stem}]({name})", ""]
    return "\n".join(lines)


def console(table: list[dict[str, Any]]) -> str:
    """The tables as aligned plain text, one block per task, with the speed note."""
    blocks = []
    for task in tasks(table):
        task_rows = [r for r in table if r["task"] == task]
        cells = task_table(task_rows)
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        text = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
        blocks.append("\n".join([f"== {task}", speed_note(task_rows).replace("**", ""), baseline_note(task_rows), *text]))
    return "\n\n".join(blocks)


# -- helpers -----------------------------------------------------------------------------------------------------------


def _cell(key: str, r: dict[str, Any]) -> str:
    value = r.get(key)
    if key == "status":
        if r["status"] != "ok":
            return f"failed: {r['error']}"
        return "ok (cached)" if r["skipped"] else "ok"
    if key == "pareto":
        return "*" if value else ""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if key == "value" and r.get("value_se") is not None:
        return f"{value:.4f} ± {r['value_se']:.3f}"
    if key == "ref_value":
        return f"{value:.4f} ({r['ref_diff']:+.4f})" if r.get("ref_diff") is not None else f"{value:.4f}"
    if "speedup" in key:
        no_kernel = r["pattern"] != "dense" and not set(r["backends_set"]) - DENSE_COST_BACKENDS
        return f"({value:.2f}x)" if no_kernel else f"{value:.2f}x"
    if key in ("token_density", "block_density", "value"):
        return f"{value:.3f}" if key != "value" else f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _backends(sparse: dict[str, Any]) -> str | None:
    counts = Counter(_collect(sparse, "backends"))
    if not counts:
        return "sdpa (dense)" if sparse.get("pattern") == "dense" else None
    return ", ".join(name if len(counts) == 1 else f"{name} x{n}" for name, n in counts.most_common())


def _collect(tree: Any, key: str) -> list[str]:
    """Every backend name under any ``key`` mapping in ``tree`` (per-part sparse blocks nest them)."""
    found: list[str] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == key and isinstance(v, dict):
                found += [str(b) for b in v.values() if isinstance(b, str)]
            elif isinstance(v, dict):
                found += _collect(v, key)
    return found


def _density(sparse: dict[str, Any], key: str) -> float | None:
    """A density of the run; with per-part blocks (encoder/decoder) the mean over the parts that report one."""
    if isinstance(sparse.get(key), (int, float)):
        return float(sparse[key])
    parts = [v[key] for v in sparse.values() if isinstance(v, dict) and isinstance(v.get(key), (int, float))]
    return round(sum(parts) / len(parts), 4) if parts else None


def _part_patterns(sparse: dict[str, Any]) -> str | None:
    parts = [f"{k}: {v['pattern']}" for k, v in sparse.items() if isinstance(v, dict) and v.get("pattern")]
    return "; ".join(parts) or None

