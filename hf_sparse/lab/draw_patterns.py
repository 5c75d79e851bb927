"""Draw every built-in pattern (allowed cells + active blocks) into PNGs.

    hf-sparse draw-patterns --length 256 --block-size 32 --out results/patterns

Prints one line per picture with its token and block density.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hf_sparse import viz
from hf_sparse.patterns import MaskContext, block_layout, density, make_pattern

GALLERY = [
    ("dense", {}),
    ("sliding_window", {"window": 16}),
    ("block_local", {"block_size": 32}),
    ("strided", {"stride": 32, "window": 8}),
    ("dilated", {"window": 8, "dilation": 3}),
    ("random", {"num_random": 2, "block_size": 32}),
    ("bigbird", {"block_size": 32, "num_random_blocks": 1}),
    ("longformer", {"window": 16}),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, default=256, help="sequence length drawn")
    parser.add_argument("--block-size", type=int, default=32, help="tile size of the block layout shown")
    parser.add_argument("--causal", action="store_true", help="draw the causal variants")
    parser.add_argument("--out", type=Path, default=Path("results/patterns"), help="output folder")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    patterns = [make_pattern(name, **options) for name, options in GALLERY]
    side = 15
    image_length = side * side + 1
    patterns_2d = [make_pattern("local_2d", window=2)]
    for pattern in patterns:
        ctx = MaskContext.for_length(args.length, causal=args.causal)
        path = args.out / f"{pattern.name}.png"
        viz.plot_pattern(pattern, path, args.length, block_size=args.block_size, causal=args.causal)
        layout = block_layout(pattern, ctx, args.block_size)
        print(f"{path}  {pattern.describe():70s} density {density(pattern, ctx):6.1%}  blocks {layout.block_density:6.1%}")
    grid_ctx = dict(image_grid=(side, side), num_prefix=1)
    viz.plot_pattern(patterns_2d[0], args.out / "local_2d.png", image_length, block_size=args.block_size, **grid_ctx)
    print(f"{args.out / 'local_2d.png'}  local_2d on a {side}x{side} grid + [CLS]")
    viz.plot_pattern_gallery(patterns, args.out / "gallery.png", args.length, block_size=args.block_size,
                             causal=args.causal)
    print(f"{args.out / 'gallery.png'}  all patterns side by side")


if __name__ == "__main__":
    main()
