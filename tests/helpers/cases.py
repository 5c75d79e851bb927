"""Seeded random attention calls covering every pattern, for the backend-equivalence property tests."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from hf_sparse.kernels import AttentionCall
from hf_sparse.patterns import MaskContext, Pattern, make_pattern

HEAD_DIMS = (16, 32, 64)


@dataclass
class Case:
    """A reproducible attention call: build it with :meth:`call`."""

    seed: int
    length: int
    q_len: int
    batch: int
    heads: int
    kv_heads: int
    head_dim: int
    causal: bool
    padded: bool
    pattern: Pattern
    block_size: int | None
    image_grid: tuple[int, int] | None = None

    def __str__(self) -> str:
        return (f"seed={self.seed} L={self.length} Lq={self.q_len} B={self.batch} H={self.heads}/{self.kv_heads} "
                f"D={self.head_dim} causal={self.causal} padded={self.padded} block={self.block_size} "
                f"{self.pattern.describe()}")

    def call(self, dtype=torch.float32, device="cpu", requires_grad=True) -> AttentionCall:
        gen = torch.Generator().manual_seed(self.seed)
        shape_q = (self.batch, self.heads, self.q_len, self.head_dim)
        shape_kv = (self.batch, self.kv_heads, self.length, self.head_dim)
        q = torch.randn(shape_q, generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)
        k = torch.randn(shape_kv, generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)
        v = torch.randn(shape_kv, generator=gen).to(device=device, dtype=dtype).requires_grad_(requires_grad)
        mask = None
        if self.padded:
            keep = torch.ones(self.batch, self.length, dtype=torch.bool)
            for b in range(1, self.batch):
                keep[b, max(1, self.length - 1 - (self.seed * 7 + b * 13) % max(1, self.length // 2)):] = False
            mask = keep[:, None, None, :].expand(self.batch, 1, self.q_len, self.length).to(device)
            if self.causal:
                i = torch.arange(self.length - self.q_len, self.length, device=device)[:, None]
                mask = mask & (torch.arange(self.length, device=device)[None, :] <= i)
        ctx = MaskContext(self.q_len, self.length, self.length - self.q_len, causal=self.causal,
                          image_grid=self.image_grid, num_prefix=1 if self.image_grid else None)
        return AttentionCall(query=q, key=k, value=v, pattern=self.pattern, ctx=ctx, attention_mask=mask,
                             scale=None, block_size=self.block_size)


def _pattern(rng: random.Random, length: int) -> tuple[Pattern, tuple[int, int] | None]:
    num_global = rng.choice([0, 0, 1, 3])
    name = rng.choice(["sliding_window", "block_local", "strided", "dilated", "random", "bigbird", "longformer",
                       "local_2d", "dense", "union"])
    scale = max(2, length // 8)
    if name == "sliding_window":
        return make_pattern(name, window=rng.randint(1, scale), num_global=num_global), None
    if name == "longformer":
        return make_pattern(name, window=rng.randint(1, scale)), None
    if name == "block_local":
        return make_pattern(name, block_size=rng.choice([8, 16, 32, 64]), num_global=num_global), None
    if name == "strided":
        return make_pattern(name, stride=rng.randint(2, scale + 2), window=rng.randint(0, scale), num_global=num_global), None
    if name == "dilated":
        return make_pattern(name, window=rng.randint(1, scale), dilation=rng.randint(1, 4), num_global=num_global), None
    if name == "random":
        return make_pattern(name, num_random=rng.randint(1, 3), block_size=rng.choice([8, 16, 32]),
                            seed=rng.randint(0, 99), num_global=num_global), None
    if name == "bigbird":
        return make_pattern(name, block_size=rng.choice([8, 16, 32]), num_random_blocks=rng.randint(0, 3),
                            num_global_blocks=rng.randint(0, 2), seed=rng.randint(0, 99)), None
    if name == "local_2d":
        return make_pattern(name, window=rng.randint(1, 3), num_global=num_global), None
    if name == "union":
        return (make_pattern("sliding_window", window=rng.randint(1, scale))
                | make_pattern("strided", stride=rng.randint(2, scale + 2), window=0)), None
    return make_pattern("dense", num_global=num_global), None


def make_cases(count: int, seed: int = 1234, max_len: int = 600) -> list[Case]:
    """``count`` reproducible cases: odd lengths 1..max_len, 1-4 heads (some grouped-query), head dims
    16/32/64, padded batches, global tokens, causal and not, decode-style query offsets."""
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        length = rng.randrange(1, max_len + 1, 2) if index % 5 else rng.randint(1, max_len)
        pattern, grid = _pattern(rng, length)
        if pattern.name == "local_2d":
            side = max(1, int(math.isqrt(max(length - 1, 1))))
            rows = rng.randint(max(1, side // 2), side)
            cols = max(1, (length - 1) // rows)
            length, grid = rows * cols + 1, (rows, cols)
        heads = rng.randint(1, 4)
        kv_heads = rng.choice([h for h in (1, 2, heads) if heads % h == 0])
        causal = rng.random() < 0.4 and pattern.name != "local_2d"
        q_len = length if rng.random() < 0.85 or length < 3 else rng.randint(1, length)
        cases.append(Case(
            seed=seed + index, length=length, q_len=q_len, batch=rng.choice([1, 2, 3]), heads=heads,
            kv_heads=kv_heads, head_dim=rng.choice(HEAD_DIMS), causal=causal, padded=rng.random() < 0.5,
            pattern=pattern, block_size=rng.choice([None, 16, 32, 64, 128]), image_grid=grid,
        ))
    return cases
