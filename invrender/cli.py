"""Command line: ``invrender <command> ...`` (also ``python -m invrender``).

    invrender data synth --root DIR [--objects 10] [--views 24] [--size 64] [--seed 0]
                         [--categories car chair ...] [--elevation 30 | --elevation-range -10 30]
                         [--points 10000] [--voxels 32] [--background white|random]
    invrender data shaded --root DIR [--categories chair ...] [--objects 500] [--regime views|unlimited]
                          [--views 1] [--length N] [--viewpoints default|chairs|lvp] [--size 64] [--split train|test]
    invrender train <task> [--config FILE] [--run-dir DIR] [--device auto|cpu|cuda] [--resume]
                           [--no-progress] [key=value ...]
    invrender eval <run-dir> [--checkpoint FILE] [--device auto] [--out DIR] [key=value ...]
    invrender demo [--model ucar|unicorn] [--out DIR] [--steps N] [--device auto|cpu|cuda] [--categories car ...] [key=value ...]
    invrender fid train [--size 64] [--steps N] [--objects N] [--batch-size N] [--force] [--quiet]
    invrender fid score --samples FILE.pt|DIR_OF_PNGS --category chair [--size 64] [--viewpoints default]
                        [--reference-images 2000] [--quiet]

``fid`` trains and caches the classifier of IG-GAN's FID (:mod:`invrender.fid`) and scores samples against a
category's held-out renders.

``train`` runs any registered task (``invrender.training.register_task``; ``invrender.models.<task>``
is imported on demand) with the config file plus ``key=value`` overrides (dotted keys, YAML values).
Launch it with ``torchrun --nproc-per-node N -m invrender train ...`` for DDP.

A mistake in what was asked for (an unknown config key, a value of the wrong type, a missing file, an
unavailable device; :class:`invrender.errors.UsageError`) is reported as one line
``invrender: error: ...`` with exit status 2; any other exception is a bug and keeps its traceback.
"""

import argparse
import math
import os
import sys
import time
from typing import List, Optional

from .errors import UsageError


def _count(least: int):
    """An argparse ``type``: an integer >= ``least`` (a negative count would silently do nothing)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"must be {'positive' if least == 1 else 'at least ' + str(least)}, "
                                             f"got {value}")
        return value
    return parse


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


def _shaded(args) -> int:
    import json

    from tqdm.auto import tqdm

    from . import io
    from .data import ShadedViews

    try:
        views = ShadedViews(args.categories, args.objects, regime=args.regime, views_per_object=args.views,
                            length=args.length, viewpoints=args.viewpoints, image_size=args.size, split=args.split,
                            seed=args.seed)
    except ValueError as e:
        raise UsageError(str(e)) from None
    os.makedirs(args.root, exist_ok=True)
    index = []
    for i in tqdm(range(len(views)), desc="rendering", disable=args.quiet):
        item = views[i]
        name = f"{i:06d}.png"
        io.save_image(os.path.join(args.root, name), item["image"])
        index.append({"file": name, "category": item["category"], "object": int(item["object"]),
                      "azimuth_deg": round(math.degrees(float(item["azimuth"])), 4),
                      "elevation_deg": round(math.degrees(float(item["elevation"])), 4)})
    with open(os.path.join(args.root, "views.json"), "w") as f:
        json.dump(index, f, indent=1)
    print(f"wrote {len(views)} grey renders ({args.size}x{args.size}) and views.json to {args.root}")
    return 0


def _train(args) -> int:
    from . import training

    try:
        task = training.get_task(args.task)
    except KeyError as e:
        raise UsageError(e.args[0]) from None
    config_path = args.config
    saved = os.path.join(args.run_dir, "config.yaml") if args.run_dir else None
    if config_path is None and args.resume and saved and os.path.exists(saved):
        config_path = saved  # resuming without --config: the run's own config
    config = training.resolve_config(task, config_path, args.overrides)
    run_dir = args.run_dir or config.get("run_dir") or os.path.join(
        "runs", args.task, time.strftime("%Y%m%d-%H%M%S"))
    config["task"] = args.task
    trainer = training.Trainer(task, config, run_dir, device=args.device, resume=args.resume,
                               progress=not args.no_progress)
    trainer.fit()
    if trainer.is_main:
        print(f"trained {args.task} to step {trainer.step}; run directory: {run_dir}")
    return 0


def _eval(args) -> int:
    import json

    from . import training

    metrics = training.evaluate_run(args.run_dir, checkpoint=args.checkpoint, device=args.device,
                                    out_dir=args.out, overrides=args.overrides)
    print(json.dumps(metrics, indent=2, default=float))
    return 0


def _demo(args) -> int:
    from .demo import run_demo

    run_demo(args.out, steps=args.steps, device=args.device, categories=args.categories,
             overrides=args.overrides, progress=not args.no_progress, model=args.model)
    return 0


def _fid_train(args) -> int:
    from . import fid
    from .errors import MissingInputError

    path = fid.classifier_path(args.size)
    training = {k: v for k, v in (("steps", args.steps), ("objects", args.objects), ("batch_size", args.batch_size))
                if v is not None}
    if not args.force:
        try:
            model, info = fid.load_fid_classifier(args.size, train_if_missing=False)
        except MissingInputError:
            pass
        else:
            wanted = dict(fid.DEFAULT_TRAINING, **training)
            if all(info["config"].get(k) == wanted[k] for k in ("steps", "objects", "batch_size")):
                print(f"FID classifier {args.size}px already cached: {fid.describe_classifier(info)}\n{path}\n"
                      "(--force retrains it)")
                return 0
    model, info = fid.load_fid_classifier(args.size, progress=not args.quiet, force=True, **training)
    print(f"FID classifier {args.size}px: {fid.describe_classifier(info)}\n{path}")
    return 0


def _fid_score(args) -> int:
    from . import fid

    images = fid.load_samples(args.samples)
    model, info = fid.load_fid_classifier(args.size, progress=not args.quiet)
    score = fid.fid_score(images, category=args.category, classifier=model, image_size=args.size,
                          viewpoints=args.viewpoints, reference_images=args.reference_images,
                          progress=not args.quiet)
    print(f"FID {score:.4f}  ({images.shape[0]} samples of {images.shape[-1]}px vs {args.reference_images} held-out "
          f"'{args.category}' renders at {args.size}px, viewpoints '{args.viewpoints}'; classifier "
          f"{100 * float(info['test_accuracy']):.1f}% test accuracy)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="invrender", description="invrender command line")
    sub = parser.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="generate the procedural dataset (ShapeNet-NMR layout)")
    synth.add_argument("--root", required=True, help="output directory")
    synth.add_argument("--objects", type=_count(1), default=10, help="objects per category")
    synth.add_argument("--views", type=_count(1), default=24)
    synth.add_argument("--size", type=_count(1), default=64, help="image size (square)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--categories", nargs="+", default=None)
    synth.add_argument("--elevation", type=float, default=30.0, help="fixed elevation in degrees")
    synth.add_argument("--elevation-range", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    synth.add_argument("--points", type=_count(0), default=10_000, help="surface points per object (0: none)")
    synth.add_argument("--voxels", type=_count(0), default=32, help="voxel resolution (0: none)")
    synth.add_argument("--background", choices=("white", "random"), default="white")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_synth)
    shaded = data.add_parser("shaded", help="export IG-GAN's grey renders (invrender.data.ShadedViews) as PNGs")
    shaded.add_argument("--root", required=True, help="output directory (PNGs and views.json)")
    shaded.add_argument("--categories", nargs="+", default=["chair"])
    shaded.add_argument("--objects", type=_count(1), default=500)
    shaded.add_argument("--regime", choices=("views", "unlimited"), default="views")
    shaded.add_argument("--views", type=_count(1), default=1, help="views per object (regime views)")
    shaded.add_argument("--length", type=_count(1), default=None, help="images (regime unlimited)")
    shaded.add_argument("--viewpoints", choices=("default", "chairs", "lvp"), default="default")
    shaded.add_argument("--size", type=_count(1), default=64)
    shaded.add_argument("--split", choices=("train", "test"), default="train")
    shaded.add_argument("--seed", type=int, default=0)
    shaded.add_argument("--quiet", action="store_true", help="no progress bar")
    shaded.set_defaults(func=_shaded)

    train = sub.add_parser("train", help="train a model (a registered task)",
                           description="Train a registered task. Extra arguments key=value override the config.")
    train.add_argument("task", help="task name, e.g. ucar")
    train.add_argument("--config", default=None, help="YAML config file")
    train.add_argument("--run-dir", default=None,
                       help="output directory (default: the config's run_dir, else runs/<task>/<time>)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda")
    train.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --run-dir")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (dotted keys, YAML values)")
    train.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="evaluate a trained run (writes metrics.json)")
    ev.add_argument("run_dir", help="run directory written by 'invrender train'")
    ev.add_argument("--checkpoint", default=None, help="checkpoint file (default: the newest in the run)")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--out", default=None, help="output directory (default: <run-dir>/eval)")
    ev.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    ev.set_defaults(func=_eval)

    demo = sub.add_parser("demo", help="the main job: learn 3D shapes from single views of the synthetic data "
                                       "(a few minutes on a CPU) and write an HTML results page",
                          description="Train Ucar et al.'s mu-VAE with the azimuth latent and texturizer on the "
                                      "embedded synthetic data, evaluate it on the test split and write a results "
                                      "folder (index.html, turntables, meshes, metrics.json).")
    demo.add_argument("--model", choices=("ucar", "unicorn"), default="ucar",
                      help="ucar: Ucar et al.'s voxel autoencoder (default); unicorn: UNICORN's textured meshes")
    demo.add_argument("--out", default="invrender-demo", help="results folder (default: ./invrender-demo)")
    demo.add_argument("--steps", type=_count(1), default=None, help="training steps (default: the demo config's)")
    demo.add_argument("--device", default="auto", help="auto, cpu or cuda")
    demo.add_argument("--categories", nargs="+", default=None, help="synthetic categories (default: car)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (as for train)")
    demo.set_defaults(func=_demo)

    from .data.shaded import VIEWPOINTS
    from .synthetic import CATEGORIES

    fid = sub.add_parser("fid", help="FID of IG-GAN samples (a render classifier trained here, cached)").add_subparsers(
        dest="fid_command", required=True)
    fid_train = fid.add_parser("train", help="train and cache the FID classifier (~1.5 min at 64px on one CPU thread)",
                               description="Train the render classifier whose features FID uses, on grey renders "
                                           "of the synthetic categories; print its held-out test accuracy and "
                                           "cache it ($INVRENDER_CACHE or ~/.cache/invrender, in fid/).")
    fid_train.add_argument("--size", type=_count(16), default=64, help="image size (default 64)")
    fid_train.add_argument("--steps", type=_count(1), default=None, help="Adam steps (default 200)")
    fid_train.add_argument("--objects", type=_count(1), default=None, help="training objects (default 600)")
    fid_train.add_argument("--batch-size", type=_count(1), default=None, help="images per step (default 64)")
    fid_train.add_argument("--force", action="store_true", help="retrain even if a usable classifier is cached")
    fid_train.add_argument("--quiet", action="store_true", help="no progress bar")
    fid_train.set_defaults(func=_fid_train)
    fid_score = fid.add_parser("score", help="FID of samples against a category's held-out renders",
                               description="Print the FID of grey samples against held-out renders of a category, "
                                           "with the cached classifier (trained first if missing).")
    fid_score.add_argument("--samples", required=True,
                           help="a .pt file with an (N, 1, S, S) or (N, S, S) tensor in [0, 1] (or a dict with "
                                "'images'), or a folder of .png files")
    fid_score.add_argument("--category", required=True, choices=CATEGORIES)
    fid_score.add_argument("--size", type=_count(16), default=64, help="classifier image size (default 64)")
    fid_score.add_argument("--viewpoints", choices=sorted(VIEWPOINTS), default="default",
                           help="viewpoints of the reference renders (default: IG-GAN's 'default')")
    fid_score.add_argument("--reference-images", type=_count(2), default=2000, help="reference renders (default 2000)")
    fid_score.add_argument("--quiet", action="store_true", help="no progress bar")
    fid_score.set_defaults(func=_fid_score)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # parse_known_args: key=value overrides may come after options (argparse would reject them there).
    args, extra = parser.parse_known_args(argv)
    if extra:
        bad = [a for a in extra if "=" not in a or a.startswith("-")]
        if bad or not hasattr(args, "overrides"):
            parser.error("unrecognized arguments: " + " ".join(bad or extra))
        args.overrides = list(args.overrides) + extra
    if args.command in ("train", "eval", "demo", "fid"):
        from .allocator import retain_for_cli

        retain_for_cli()  # freed CPU blocks stay in the heap: no page faults every step (invrender.allocator)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"{parser.prog}: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
