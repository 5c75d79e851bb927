"""Independent mask formulas, written from the pattern definitions in the README (not from the package).

Each returns a numpy bool matrix ``[q_len, kv_len]`` for absolute query rows ``q_offset .. q_offset+q_len``.
"""

from __future__ import annotations

import numpy as np


def _grid(q_len: int, kv_len: int, q_offset: int):
    i = np.arange(q_offset, q_offset + q_len)[:, None]
    j = np.arange(kv_len)[None, :]
    return i, j


def finish(allowed, i, j, *, num_global=0, causal=False):
    if num_global:
        allowed = allowed | (i < num_global) | (j < num_global)
    if causal:
        allowed = allowed & (j <= i)
    return np.broadcast_to(allowed, (i.shape[0], j.shape[1])).copy()


def formula(name: str, q_len: int, kv_len: int | None = None, q_offset: int = 0, causal: bool = False, **opt):
    kv_len = q_len if kv_len is None else kv_len
    i, j = _grid(q_len, kv_len, q_offset)
    g = opt.pop("num_global", 0)
    if name == "dense":
        allowed = np.ones((q_len, kv_len), dtype=bool)
    elif name == "sliding_window":
        allowed = np.abs(i - j) <= opt["window"]
    elif name == "block_local":
        allowed = (i // opt["block_size"]) == (j // opt["block_size"])
    elif name == "strided":
        allowed = (np.abs(i - j) <= opt["window"]) | ((i - j) % opt["stride"] == 0)
    elif name == "dilated":
        w, d = opt["window"], opt["dilation"]
        allowed = (np.abs(i - j) <= w * d) & ((i - j) % d == 0)
    elif name == "local_2d":
        (rows, cols), p, w = opt["grid"], opt["num_prefix"], opt["window"]
        assert rows * cols + p == kv_len
        ri, ci = (i - p) // cols, (i - p) % cols
        rj, cj = (j - p) // cols, (j - p) % cols
        patch = (i >= p) & (j >= p)
        allowed = (patch & (np.abs(ri - rj) <= w) & (np.abs(ci - cj) <= w)) | (i < p) | (j < p)
    else:
        raise KeyError(name)
    return finish(allowed, i, j, num_global=g, causal=causal)
