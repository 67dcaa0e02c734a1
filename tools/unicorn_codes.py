"""How much a trained UNICORN run's codes vary across images: are shape and texture codes used, or does one
prototype explain everything?

    python tools/unicorn_codes.py runs/unicorn [--views 48]

Prints, over ``--views`` training views spread over the objects (every 7th view): the encoder features' mean
magnitude and spread, each code's mean magnitude and spread over the batch, the norm of each head's last layer
(zero at initialisation), the scale head's spread, the vertex spread of the predicted meshes, and how the
most likely pose candidate is distributed.
"""

import argparse
import warnings

import torch

from invrender import training
from invrender.models import unicorn as U


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--views", type=int, default=48)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    cfg = training.load_config(f"{args.run_dir}/config.yaml")
    task = U.UnicornTask()
    model, _ = task.build(cfg, torch.device("cpu"))
    model.load_state_dict(training.load_checkpoint(training.latest_checkpoint(args.run_dir))["model"])
    model.eval()
    data = task.dataset(cfg, "train")
    images = torch.stack([data[i]["image"] for i in list(range(0, len(data), 7))[:args.views]])
    with torch.no_grad():
        features = model.encode(images)["shape"]
        p = model.predict(images)
    print(f"epoch {model.current_epoch}, {len(images)} training views")
    print(f"encoder features: mean |f| {features.abs().mean():.4f}, std over the batch {features.std(0).mean():.4f}")
    for name, head in (("shape_code", model.shape_head), ("texture_code", model.texture_head)):
        code = p[name]
        print(f"{name}: mean |z| {code.abs().mean():.4f}, std over the batch {code.std(0).mean():.4f}, "
              f"head's last layer norm {head[-1].weight.norm():.4f}")
    print(f"scale: mean {[round(x, 3) for x in p['scale'].mean(0).tolist()]}, "
          f"std {[round(x, 3) for x in p['scale'].std(0).tolist()]}")
    print(f"vertices (scaled): std over the batch {p['verts'].std(0).mean():.4f}")
    probs = p["candidates"].probabilities
    print(f"pose: mean max probability {probs.max(1).values.mean():.3f}, most likely candidate counts "
          f"{torch.bincount(probs.argmax(1), minlength=probs.shape[1]).tolist()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
