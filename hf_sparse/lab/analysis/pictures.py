"""Pictures of what each layer and head of a model kept (from :func:`hf_sparse.lab.analysis.recall.analyze`).

* :func:`plot_kept_heads`: a layers × heads grid; grey = the dense model's attention (log scale, darker =
  more mass), blue tint = the cells the pattern keeps, each panel titled with the head's recall.
* :func:`plot_recall_heatmap`: the layers × heads recall matrix of one pattern, numbers written in.
* :func:`plot_recall_vs_density`: mean recall against density for each pattern family.

matplotlib is imported lazily.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from .recall import LayerPicture, RecallTable

_KEPT_RGB = np.array([0.12, 0.47, 0.95])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def kept_rgb(mass: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """RGB image ``[rows, cols, 3]`` of one head: grey from log attention mass, blended toward blue by the
    kept fraction of each cell (0 = not kept, 1 = fully kept)."""
    logm = np.log10(np.clip(mass, 1e-6, None))
    lo, hi = np.percentile(logm, 5), logm.max()
    shade = 1.0 - np.clip((logm - lo) / max(hi - lo, 1e-9), 0.0, 1.0)  # white = no mass, black = most
    grey = np.repeat(shade[..., None], 3, axis=-1)
    alpha = 0.55 * np.clip(kept, 0.0, 1.0)[..., None]
    return grey * (1 - alpha) + _KEPT_RGB * alpha


def plot_kept_heads(pictures: Sequence[LayerPicture], path: str | os.PathLike, title: str = "") -> None:
    """One panel per (layer, head) of ``pictures`` (rows = layers); see the module docstring."""
    plt = _pyplot()
    heads = max(p.mass.shape[0] for p in pictures)
    fig, axes = plt.subplots(len(pictures), heads, figsize=(1.25 * heads, 1.35 * len(pictures) + 0.5), squeeze=False)
    for row, picture in zip(axes, pictures, strict=True):
        for h, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if h >= picture.mass.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(kept_rgb(picture.mass[h], picture.kept[h]), interpolation="nearest")
            ax.set_title(f"h{h} {picture.recall[h]:.0%}", fontsize=6, pad=1)
        row[0].set_ylabel(f"L{picture.layer}", fontsize=7)
    fig.suptitle(title + "\ngrey: dense attention (log), blue: kept; panel title: recall", fontsize=8)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)


def plot_recall_heatmap(table: RecallTable, label: str, path: str | os.PathLike) -> None:
    """Layers × heads recall of pattern ``label`` with the values written in."""
    plt = _pyplot()
    values = table.matrix(label)
    layers = [r["layer"] for r in table.rows if r["pattern"] == label and r["head"] == 0]
    fig, ax = plt.subplots(figsize=(0.55 * values.shape[1] + 1.5, 0.45 * values.shape[0] + 1.2))
    image = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0)
    for (i, j), v in np.ndenumerate(values):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=6, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(values.shape[1]), [f"h{h}" for h in range(values.shape[1])], fontsize=7)
    ax.set_yticks(range(values.shape[0]), [f"L{x}" for x in layers], fontsize=7)
    ax.set_title(f"attention-mass recall: {label}", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)


def plot_recall_vs_density(table: RecallTable, path: str | os.PathLike) -> None:
    """Mean recall against mean density, one line per pattern family (``name``)."""
    plt = _pyplot()
    families: dict[str, list[tuple[float, float]]] = {}
    for s in table.summary():
        families.setdefault(s["name"], []).append((s["density"], s["recall"]))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, points in families.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":", label="recall = density")
    ax.set_xlabel("density (fraction of attended pairs kept)")
    ax.set_ylabel("attention-mass recall")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=120)
    plt.close(fig)
