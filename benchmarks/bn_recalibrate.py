"""A checkpoint whose BatchNorm running statistics are recomputed on clean training images, for the probe.

test.py reads the backbone in eval mode, so every BatchNorm layer normalises with the running statistics
gathered during pretraining. After SimCLR those are statistics of augmented views (crops scaled up, jittered),
not of the clean images the probe sees; a random-init network has none of that mismatch (its statistics are
the identity). This chase check rewrites only those statistics: the backbone runs in train mode, without
gradients, over --images clean training images (the evaluation transform: resize and normalise, as test.py),
with cumulative averaging (momentum None), and the result is saved as a new checkpoint that test.py probes
like any other. Weights are untouched (checked).

    python benchmarks/bn_recalibrate.py RUN/final.pth RUN/final-bn-clean.pth --images 10000
    python test.py --model_path RUN/final-bn-clean.pth --dataset fashion_mnist --label_fraction 0.01 --solver lbfgs
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import load_backbone  # noqa: E402
from utils.augment import batch_eval_transform  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.data.datasets import load_split  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("out")
    p.add_argument("--images", type=int, default=10_000, help="clean training images to gather statistics on")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--batch_size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    data = ckpt["data"]
    backbone, _ = load_backbone(args.checkpoint, device="cpu")
    arrays = load_split(data["dataset"], "train", args.data_dir, download=False, image_size=int(data["image_size"]))
    pick = np.sort(np.random.default_rng(args.seed).permutation(len(arrays.labels))[:args.images])
    bns = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch below
    weights = {k: v.clone() for k, v in backbone.state_dict().items() if "running" not in k and "num_batches" not in k}
    backbone.train()
    with torch.no_grad():
        for start in range(0, len(pick), args.batch_size):
            x = torch.from_numpy(np.array(arrays.images[pick[start:start + args.batch_size]])).permute(0, 3, 1, 2)
            backbone(batch_eval_transform(x, int(data["image_size"]), data["mean"], data["std"]))
    state = backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items()), "only BatchNorm statistics may change"
    ckpt["backbone"] = {k: v.detach().clone() for k, v in state.items()}
    ckpt["bn_recalibrated"] = {"images": len(pick), "split": "train", "transform": "evaluation (resize, normalise)",
                               "seed": args.seed, "source": str(args.checkpoint)}
    save_checkpoint(Path(args.out), ckpt)
    print(f"{args.out}: BatchNorm statistics of {len(bns)} layers from {len(pick)} clean training images")


if __name__ == "__main__":
    main()
