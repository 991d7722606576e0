"""A straightforward SimCLR written from the paper, on scikit-learn's digits or Fashion-MNIST: the yardstick for
the project's own.

Independent of the project's training code on purpose (it imports nothing from train.py, models/ or utils/):
torchvision's per-image transforms, torchvision's ResNet-18 with the CIFAR stem, NT-Xent written anchor by
anchor from eq. (1) of Chen et al. (2020), plain SGD with a per-step cosine, then scikit-learn's logistic
regression on frozen, standardised features (clean train images), scored on the clean test images and on K
augmented views of each test image. If the project's `simclr_train.py --preset digits` and this script disagree
by much at the same settings, one of them is wrong.

    python benchmarks/reference_simclr.py --epochs 5 --lr 0.5 --seeds 0 1
    python benchmarks/reference_simclr.py --epochs 0 --seeds 0 1          # the same networks at random init

On Fashion-MNIST (the idx files of Debian's dataset-fashion-mnist, read here with gzip and numpy) it runs a step
count with the settings of benchmarks/fashion_crossover.py (the tuned recipe's views and head, batch 64, lr 0.125)
and fits the logistic regression on 1 % and 10 % of the training labels (C chosen on a held-out 10 % of the
training images, as the project's L-BFGS probe chooses its l2), plus kNN (k=10, cosine) on every label:

    python benchmarks/reference_simclr.py --dataset fashion_mnist --steps 1000
    python benchmarks/reference_simclr.py --dataset fashion_mnist --steps 0   # the same network at random init

Beside other work, run it at one thread (OMP_NUM_THREADS=1): on the shared 2-core machine its 1,000 Fashion-MNIST
steps took 7,234 s at torch's default two threads and 2,279 s at one, each beside other runs (2026-12-07).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn
from torchvision.transforms import v2


def digits(size: int, seed: int = 0):
    """Digits as float RGB tensors (N, 3, size, size) in [0, 1], an 80/20 stratified split (its own, not the project's)."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False).clamp(0, 1)
    x = x.expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(d.target)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.2, stratify=d.target, random_state=seed)
    return x[tr], y[tr], x[te], y[te]


FASHION_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist puts the four files
# Fashion-MNIST's settings in benchmarks/fashion_crossover.py: the project's tuned recipe (config.json of its runs)
FASHION_DEFAULTS = {"batch": 64, "lr": 0.125, "crop_min": 0.2, "jitter": 0.5, "gray": 0.1, "flip": 0.5,
                    "head_hidden": 1024, "head_bn": False}


def read_idx(path: str) -> np.ndarray:
    """An idx file (LeCun's format: magic, dims as big-endian int32, then uint8 data), gzipped or not."""
    raw = open(path, "rb").read()
    raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
    ndim = raw[3]
    dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">i4")
    return np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8).reshape(dims)


def fashion_mnist(size: int, folder: str = FASHION_DIR):
    """Fashion-MNIST as float RGB tensors (N, 3, size, size) in [0, 1], resized once (bilinear, antialiased)."""
    def load(prefix):
        x = torch.tensor(read_idx(f"{folder}/{prefix}-images-idx3-ubyte.gz"), dtype=torch.float32)[:, None] / 255.0
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
        return x.expand(-1, 3, -1, -1).contiguous(), torch.tensor(read_idx(f"{folder}/{prefix}-labels-idx1-ubyte.gz"),
                                                                   dtype=torch.long)
    xtr, ytr = load("train")
    xte, yte = load("t10k")
    return xtr, ytr, xte, yte


def view_transform(size: int, crop_min: float, strength: float, gray: float, flip: float) -> v2.Compose:
    """The SimCLR view (paper, appendix A): random resized crop, flip, colour jitter (p 0.8), grayscale."""
    s = strength
    return v2.Compose([
        v2.RandomResizedCrop(size, scale=(crop_min, 1.0), antialias=True),
        v2.RandomHorizontalFlip(flip),
        v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
        v2.RandomGrayscale(gray),
    ])


def resnet18_cifar() -> nn.Module:
    """torchvision's ResNet-18 with the CIFAR stem the paper uses for CIFAR-10 (3x3 conv, stride 1, no max-pool)."""
    net = torchvision.models.resnet18(num_classes=10)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def nt_xent_naive(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """Eq. (1), anchor by anchor: l(i, j) = -log exp(s_ij / t) / sum_{k != i} exp(s_ik / t), averaged over 2N anchors."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    n = n2 // 2
    total = z.new_zeros(())
    for i in range(n2):
        j = i + n if i < n else i - n
        s = z[i] @ z.t() / t
        others = torch.cat([s[:i], s[i + 1:]])
        total = total - (s[j] - torch.logsumexp(others, dim=0))
    return total / n2


def features(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x[i:i + 512]) for i in range(0, len(x), 512)]).numpy()


def run(args, seed: int) -> dict:
    torch.manual_seed(seed)
    xtr, ytr, xte, yte = digits(args.size) if args.dataset == "digits" else fashion_mnist(args.size, args.fashion_dir)
    net = resnet18_cifar()
    hidden = args.head_hidden
    head = (nn.Sequential(nn.Linear(512, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, 128))
            if args.head_bn else nn.Sequential(nn.Linear(512, hidden), nn.ReLU(), nn.Linear(hidden, 128)))
    params = list(net.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.wd)
    aug = view_transform(args.size, args.crop_min, args.jitter, args.gray, args.flip)
    steps_per_epoch = len(xtr) // args.batch
    total = args.epochs * steps_per_epoch if args.steps is None else args.steps
    losses, t0, step = [], time.time(), 0
    for epoch in range(math.ceil(total / steps_per_epoch)):
        net.train(), head.train()
        order = torch.randperm(len(xtr))
        epoch_loss = []
        for b in range(min(steps_per_epoch, total - step)):
            batch = xtr[order[b * args.batch:(b + 1) * args.batch]]
            x1 = torch.stack([aug(img) for img in batch])
            x2 = torch.stack([aug(img) for img in batch])
            for g in opt.param_groups:  # cosine over the run, per step, the floor reached after the last step
                g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = nt_xent_naive(head(net(x1)), head(net(x2)), args.temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            epoch_loss.append(loss.item())
            step += 1
            if step % 100 == 0 and step < total:  # an epoch of Fashion-MNIST is 937 steps: show progress within it
                print(f"seed {seed} step {step}/{total} loss {np.mean(epoch_loss[-100:]):.4f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
        losses.append(float(np.mean(epoch_loss)))
        print(f"seed {seed} epoch {epoch + 1} step {step}/{total} loss {losses[-1]:.4f} ({time.time() - t0:.0f} s)", flush=True)
    if args.dataset == "fashion_mnist":
        return {"seed": seed, "steps": total, "lr": args.lr, "loss_per_epoch": losses,
                **few_label_probe(features(net, xtr), ytr.numpy(), features(net, xte), yte.numpy(), seed),
                "seconds": round(time.time() - t0, 1)}
    scaler = StandardScaler().fit(features(net, xtr))
    clf = LogisticRegression(C=args.C, max_iter=5000, tol=1e-6)
    clf.fit(scaler.transform(features(net, xtr)), ytr.numpy())
    clean = clf.score(scaler.transform(features(net, xte)), yte.numpy())
    torch.manual_seed(10_000 + seed)
    views = torch.cat([torch.stack([aug(img) for img in xte]) for _ in range(args.eval_views)])
    augmented = clf.score(scaler.transform(features(net, views)), yte.repeat(args.eval_views).numpy())
    return {"seed": seed, "epochs": args.epochs if args.steps is None else None, "steps": total, "lr": args.lr,
            "loss_per_epoch": losses,
            "test_accuracy": 100 * clean, "augmented_test_accuracy": 100 * augmented,
            "solver_iterations": int(clf.n_iter_.max()), "seconds": round(time.time() - t0, 1)}


def few_label_probe(htr: np.ndarray, ytr: np.ndarray, hte: np.ndarray, yte: np.ndarray, seed: int) -> dict:
    """Logistic regression on 1 % and 10 % of the training labels (stratified, drawn from the 90 % a held-out
    10 % validation split leaves; C from {0.01, 0.1, 1, 10} by validation accuracy, then refit on the same labels),
    and kNN (k=10, cosine, one vote each) with every training label. Accuracies in %."""
    rest, val = train_test_split(np.arange(len(ytr)), test_size=0.1, stratify=ytr, random_state=seed)
    out = {}
    for frac in (0.01, 0.1):
        lab, _ = train_test_split(rest, train_size=frac / 0.9, stratify=ytr[rest], random_state=seed)
        scaler = StandardScaler().fit(htr[lab])
        fits = {c: LogisticRegression(C=c, max_iter=5000, tol=1e-6).fit(scaler.transform(htr[lab]), ytr[lab])
                for c in (0.01, 0.1, 1.0, 10.0)}
        best = max(fits, key=lambda c: fits[c].score(scaler.transform(htr[val]), ytr[val]))
        out[f"test_accuracy_{frac:g}"] = round(100 * fits[best].score(scaler.transform(hte), yte), 2)
        out[f"C_{frac:g}"] = best
        out[f"labels_{frac:g}"] = len(lab)
    bank = F.normalize(torch.tensor(htr), dim=1)
    query = F.normalize(torch.tensor(hte), dim=1)
    votes = torch.cat([torch.tensor(ytr)[(q @ bank.t()).topk(10, dim=1).indices] for q in query.split(1000)])
    pred = torch.stack([torch.bincount(v, minlength=10).argmax() for v in votes])
    out["knn10_accuracy"] = round(100 * (pred.numpy() == yte).mean(), 2)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=["digits", "fashion_mnist"], default="digits",
                   help="fashion_mnist: the settings of FASHION_DEFAULTS unless given")
    p.add_argument("--fashion_dir", default=FASHION_DIR)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (replaces --epochs)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.5)
    p.add_argument("--head_hidden", type=int, default=512)
    p.add_argument("--head_bn", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--crop_min", type=float, default=0.3)
    p.add_argument("--jitter", type=float, default=0.5)
    p.add_argument("--gray", type=float, default=0.2)
    p.add_argument("--flip", type=float, default=0.0)
    p.add_argument("--eval_views", type=int, default=5)
    p.add_argument("--C", type=float, default=1.0, help="inverse l2 strength of the logistic regression")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--json", default=None)
    typed = {arg.split("=")[0] for arg in sys.argv[1:]}
    given = {a.dest for a in p._actions if typed & set(a.option_strings)}
    args = p.parse_args()
    if args.dataset == "fashion_mnist":
        for key, value in FASHION_DEFAULTS.items():
            if key not in given:
                setattr(args, key, value)
    results = [run(args, s) for s in args.seeds]
    for r in results:
        print(json.dumps(r))
    keys = (("test_accuracy", "augmented_test_accuracy") if args.dataset == "digits"
            else ("test_accuracy_0.01", "test_accuracy_0.1", "knn10_accuracy"))
    for key in keys:
        v = [r[key] for r in results]
        print(f"{key}: {np.mean(v):.2f} +- {np.std(v, ddof=1) if len(v) > 1 else 0:.2f} over seeds {args.seeds}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
