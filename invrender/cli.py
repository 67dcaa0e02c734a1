"""Command line: ``invrender <command> ...`` (also ``python -m invrender``).

    invrender data synth --root DIR [--objects 10] [--views 24] [--size 64] [--seed 0]
                         [--categories car chair ...] [--elevation 30 | --elevation-range -10 30]
                         [--points 10000] [--voxels 32] [--background white|random]
"""

import argparse
import sys
import time
from typing import List, Optional


def _synth(args) -> int:
    from .synthetic import CATEGORIES, generate_dataset

    categories = args.categories or list(CATEGORIES)
    elevation = tuple(args.elevation_range) if args.elevation_range else args.elevation
    start = time.perf_counter()
    generate_dataset(args.root, objects_per_category=args.objects, categories=categories, views=args.views,
                     image_size=args.size, seed=args.seed, elevation=elevation, points=args.points,
                     voxel_resolution=args.voxels, background=args.background, progress=not args.quiet)
    n = len(categories) * args.objects
    print(f"wrote {n} objects x {args.views} views to {args.root} in {time.perf_counter() - start:.1f} s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invrender", description="invrender command line")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the procedural dataset (ShapeNet-NMR layout)")
    synth.add_argument("--root", required=True, help="output directory")
    synth.add_argument("--objects", type=int, default=10, help="objects per category")
    synth.add_argument("--views", type=int, default=24)
    synth.add_argument("--size", type=int, default=64, help="image size (square)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--categories", nargs="+", default=None)
    synth.add_argument("--elevation", type=float, default=30.0, help="fixed elevation in degrees")
    synth.add_argument("--elevation-range", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    synth.add_argument("--points", type=int, default=10_000, help="surface points per object (0: none)")
    synth.add_argument("--voxels", type=int, default=32, help="voxel resolution (0: none)")
    synth.add_argument("--background", choices=("white", "random"), default="white")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
