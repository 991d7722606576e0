"""The two terms of the Barlow Twins loss, at init and after pretraining: which one a flat loss hides.

A Barlow Twins run whose loss does not fall may still be learning: the invariance term sum_i (1 - C_ii)^2 can
fall while the redundancy term lambda sum_{i != j} C_ij^2 rises by as much. This script measures both on
--images training images, in batches of the run's own size, with the run's own views (its config's crop,
flip, jitter, grayscale and blur), the network in train mode as in pretraining (BatchNorm on batch
statistics), without gradients. "init" is a fresh network of the same architecture (torch seeded with the run's seed).

    python benchmarks/barlow_terms.py sweeps/fashion_mnist/runs/barlow_twins_ds0.1_bs64_lrauto_steps937_seed0/final.pth

It prints, per network: the invariance term, lambda x the redundancy term, their sum x the run's scale
(the loss), and the mean diagonal correlation C_ii (1 = the two views' embeddings agree dimension by
dimension). C is (D, D) from N = batch images whose columns are centred, so its rank is at most N - 1: with
N - 1 < D even two identical views leave a redundancy term of at least lambda (D^2 / (N - 1) - D).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.resnet import build_backbone  # noqa: E402
from train import view_spec  # noqa: E402
from utils.augment import simclr_view_transform  # noqa: E402
from utils.checkpoint import load_checkpoint  # noqa: E402
from utils.data.datasets import load_split  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.methods import build_method, method_spec  # noqa: E402
from utils.methods.barlow_twins import cross_correlation  # noqa: E402


def barlow_terms(z1: torch.Tensor, z2: torch.Tensor, lambd: float) -> dict[str, float]:
    """{"invariance": sum_i (1 - C_ii)^2, "redundancy": lambd sum_{i != j} C_ij^2, "mean_cii"} of one batch;
    scale x (invariance + redundancy) is utils/methods/barlow_twins.py's loss."""
    c = cross_correlation(z1.float(), z2.float())
    diag = torch.diagonal(c)
    return {"invariance": float((diag - 1).pow(2).sum()),
            "redundancy": lambd * float(c.pow(2).sum() - diag.pow(2).sum()),
            "mean_cii": float(diag.mean())}


def redundancy_floor(d: int, n: int, lambd: float) -> float:
    """The least lambda sum_{i != j} C_ij^2 of identical views (C_ii = 1) from n images when n - 1 < d:
    C = Z^T Z / n has trace d and rank <= n - 1, so ||C||_F^2 >= d^2 / (n - 1); 0 when n - 1 >= d."""
    return lambd * max(d * d / (n - 1) - d, 0.0)


def measure(method, images: np.ndarray, transform, batch_size: int, seed: int) -> dict[str, float]:
    """The terms averaged over the full batches of `images`, two fresh views of each image (seeded)."""
    torch.manual_seed(seed)
    method.train()
    rows = []
    with torch.no_grad():
        for start in range(0, len(images) - batch_size + 1, batch_size):
            batch = images[start:start + batch_size]
            x1, x2 = (torch.stack([transform(img) for img in batch]) for _ in range(2))
            z1, z2 = (method.head["projector"](method.backbone(x)) for x in (x1, x2))
            rows.append(barlow_terms(z1, z2, method.lambd))
    return {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a Barlow Twins run's final.pth (or last.pth)")
    p.add_argument("--images", type=int, default=1024, help="training images to measure on")
    p.add_argument("--data_dir", default="data")
    p.add_argument("--seed", type=int, default=0, help="seed of the views")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ck = load_checkpoint(args.checkpoint)
    config = ck.get("config") or {}
    if ck.get("model", {}).get("train_type") != "barlow_twins":
        raise UserError(f"{args.checkpoint} is not a Barlow Twins checkpoint (train_type "
                        f"{ck.get('model', {}).get('train_type')!r})")
    data = ck["data"]
    images = load_split(data["dataset"], "train", args.data_dir, download=False, image_size=data["image_size"]).images
    images = images[:args.images]
    transform = simclr_view_transform(data["image_size"], data["mean"], data["std"],
                                      view_spec(argparse.Namespace(**config)))
    batch_size = int(config["batch_size"])
    spec = method_spec("barlow_twins", argparse.Namespace(**config))
    print(f"{args.checkpoint}: step {ck['step']}, {len(images)} images in batches of {batch_size}, "
          f"D = {spec['proj_dim']}, lambda {spec['barlow_lambda']}, scale {spec['scale_loss']}; floor of the redundancy "
          f"term at this batch: {redundancy_floor(spec['proj_dim'], batch_size, spec['barlow_lambda']):.1f}")
    print("| network | invariance sum (1 - C_ii)^2 | lambda x redundancy | loss (x scale) | mean C_ii |")
    print("|---|---|---|---|---|")
    for name in ("init", "trained"):
        torch.manual_seed(int(config.get("seed", 0)))
        method = build_method("barlow_twins", build_backbone(ck["model"].get("stem", "cifar")), spec)
        if name == "trained":
            method.backbone.load_state_dict(ck["backbone"])
            method.head.load_state_dict(ck["head"])
        t = measure(method, images, transform, batch_size, args.seed)
        print(f"| {name} | {t['invariance']:.1f} | {t['redundancy']:.1f} | "
              f"{spec['scale_loss'] * (t['invariance'] + t['redundancy']):.1f} | {t['mean_cii']:.3f} |")


if __name__ == "__main__":
    run_cli(main)
