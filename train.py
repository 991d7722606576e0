"""Pretrain ResNet-18 by SimCLR, BYOL, MoCo v2, SimSiam, Barlow Twins, VICReg or supervised learning.

    python train.py                                              # SimCLR on CIFAR-10 (the tuned recipe)
    python train.py --train_type byol                            # or mocov2, simsiam, barlow_twins, vicreg
    python train.py --recipe original                            # the course project's values, bugs fixed
    python train.py --train_type supervised --dataset cifar100 --epochs 100 --pretrained false
    python train.py --train_type supervised --dataset imagenet --epochs 0 --pretrained true   # ImageNet weights
    python train.py --dataset synthetic --data_scale 0.25 --epochs 3 --batch_size 100 --device cpu   # offline
    torchrun --standalone --nproc_per_node 4 train.py ...        # DistributedDataParallel, --batch_size is global

The run directory (--run_dir, default checkpoints/<train_type>-<dataset>-<UTC time>) receives
config.json (its `env` records the CPU threads, --threads, and determinism the run used), metrics.csv,
curves.png, train.log, last.pth (every epoch) and final.pth, each written atomically. Runs survive interruptions:
- Ctrl-C / SIGTERM save last.pth at the end of the current step and exit 130 / 143; a SIGKILL
  loses at most the current epoch. The same command with the same --run_dir resumes exactly
  (model, optimizer, schedule, RNG and data order: bitwise the same weights as an uninterrupted
  run on CPU with --deterministic). Flags that change what is computed cannot change on resume
  (refused, naming them); --overwrite starts over.
- A NaN/inf loss stops the run (exit 3) and keeps the last good last.pth (--nan_policy skip).
- A bad flag or input exits 2 with one line before any work; --debug (or SIMCLR_DEBUG=1) shows
  the traceback.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from itertools import islice
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from models.resnet import build_backbone, imagenet_classifier
from utils.checkpoint import FORMAT, load_state_strict, plain, save_checkpoint
from utils.cli import ArgumentParser, HelpFormatter, common_parser, reproducibility_parser
from utils.data.constants import IMAGENET_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD
from utils.data.registry import DATASET_CHOICES, DATASETS, canonical_dataset
from utils.data.datasets import data_sha256, indices_sha256, load_split
from utils.data.loaders import DeviceBatches, LoaderBatches
from utils.data.weights import load_imagenet_state_dict
from utils.distributed import (all_reduce_sum, barrier, broadcast_object, cleanup_distributed, init_distributed,
                               per_rank_batch_size)
from utils.errors import NonFiniteLossError, UserError, run_cli
from utils.io import atomic_write_csv, atomic_write_json
from utils.plotting import plot_panels
from utils.runtime import (LOG, choose_precision, cpu_bf16_native, mixed_precision, resolve_device, rng_state, run_settings,
                           seed_everything, set_rng_state, setup_logging)
from utils.augment import (SIMCLR_BLUR_P, BatchSimCLRAugment, BatchSupervisedAugment, SimCLRViewSpec,
                           SupervisedAugSpec, TwoViews, simclr_view_transform, supervised_train_transform)
from utils.train.guards import (TEST_SIGNAL_ENV, Interrupted, StopFlag, check_finite,  # noqa: F401
                                finite_on_every_rank, last_good, test_signal_hook)
from utils.lars import LARS, LARS_DEFAULTS
from utils.methods import (METHOD_FLAGS, METHODS, SELF_SUPERVISED, build_method, collapse_measure, collapse_panel,
                           method_parser, method_spec)
from utils.recipes import recipe, run_lr
from utils.train.options import add_train_flags
from utils.train.rundir import (clear_run_dir, data_differences, environment_info, prepare_run_dir,
                                remove_unused_run_dir, run_dir_exists, unlock_run_dir)
from utils.schedule import lr_schedule, make_scheduler, milestone_steps, warmup_steps
from utils.data.splits import split_size
from utils.data.subsets import training_subset  # noqa: F401 (train.training_subset: the study counts with it)

# Flags whose default comes from the recipe's part for --train_type (utils/recipes.py): flag -> recipe key.
# A flag given on the command line overrides the recipe; the lr is scaled to the batch unless given.
RECIPE_FLAGS = {
    "epochs": "epochs", "batch_size": "batch_size", "optimizer": "optimizer", "momentum": "momentum",
    "weight_decay": "weight_decay", "schedule": "schedule", "min_lr": "min_lr", "warmup_epochs": "warmup_epochs",
    "lr_milestones": "milestones", "lr_gamma": "gamma", "temperature": "temperature",
    "proj_hidden_dim": "proj_hidden_dim", "proj_dim": "proj_dim", "proj_bn": "proj_bn",
    "crop_min_scale": "crop_min_scale", "hflip_prob": "hflip_prob", "jitter": "jitter", "jitter_prob": "jitter_prob",
    "gray_prob": "gray_prob", "blur_prob": "blur_prob", "normalize": "normalize",
    "crop_padding": "crop_padding", "pad_mode": "pad_mode", "rotation": "rotation", "lr_1d_scale": "lr_1d_scale",
    **{flag: flag for flag in METHOD_FLAGS},  # utils/methods/__init__.py's flags, named as their recipe keys
}
# step: the cumulative training steps at the end of the epoch row (the lr schedule's position; skipped_steps
# of them were skipped by --nan_policy skip), so runs given the same --steps can be checked to end level.
# contrastive_acc (SimCLR): % of the epoch's 2N-view anchors whose positive ranked first (docs/measures.md);
# knn10_acc / knn200_acc: --knn_every's two kNN settings (utils/eval/knn.py; knn200_acc was knn_acc).
# z_std / z_std_ref (self-supervised methods): the collapse measure and 1/sqrt(d) (utils.methods.collapse_measure).
# lr_first / lr_last: the lr the epoch's first and last steps trained at (the schedule is a pure function of the
# step, so a resumed epoch reports the same values).
METRIC_FIELDS = ["epoch", "step", "loss", "train_acc", "contrastive_acc", "knn10_acc", "knn200_acc", "lr_first",
                 "lr_last", "images_per_s", "seconds", "skipped_steps", "z_std", "z_std_ref"]
RENAMED_METRICS = {"knn_acc": "knn200_acc"}  # history rows in checkpoints written before the rename


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                       parents=[common_parser(), reproducibility_parser(), method_parser()])
    add_train_flags(p, DATASET_CHOICES, list(METHODS), SELF_SUPERVISED)
    args = p.parse_args(argv)

    args.train_type = "simclr" if args.train_type == "selfsupervised" else args.train_type
    args.dataset = canonical_dataset(args.dataset)
    if args.steps is not None and args.epochs is not None:
        raise UserError("give --epochs or --steps, not both (with --steps the epochs follow from the data)")
    check_schedule_flags(args)
    apply_recipe(args)
    if args.steps is not None:
        args.epochs = None  # derived from the subset size once the data is loaded (see run_length)
    check_args(args)
    return args


# Flags read by one schedule only: given with the other schedule they would be ignored, so they are refused.
SCHEDULE_ONLY_FLAGS = {"cosine": ("min_lr", "lr_period_epochs"), "multistep": ("lr_milestones", "lr_gamma")}


def check_schedule_flags(args: argparse.Namespace) -> None:
    """Refuse schedule flags given on the command line that the run's schedule would not read."""
    schedule = args.schedule or recipe(args.recipe, args.train_type)["schedule"]
    for owner, flags in SCHEDULE_ONLY_FLAGS.items():
        given = [f"--{flag}" for flag in flags if getattr(args, flag) is not None]
        if owner != schedule and given:
            many = len(given) > 1
            raise UserError(f"{' / '.join(given)} only appl{'y' if many else 'ies'} to --schedule {owner}, and this "
                            f"run's schedule is {schedule}: drop {'them' if many else 'it'} or give --schedule {owner}")


def apply_recipe(args: argparse.Namespace) -> None:
    """Fill every flag not given from the recipe's part for the train type; record how the lr was set."""
    values = recipe(args.recipe, args.train_type)
    if args.jitter_strength is not None:
        s = args.jitter_strength
        args.jitter = [0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s]
    else:
        args.jitter = None
    if args.blur and args.blur_prob is None:
        args.blur_prob = SIMCLR_BLUR_P
    warmup_given = args.warmup_epochs
    for flag, key in RECIPE_FLAGS.items():
        if getattr(args, flag, None) is None and key in values:
            setattr(args, flag, values[key])
    for flag, value in LARS_DEFAULTS.items():  # --optimizer lars in a recipe without it (simclr, supervised); None
        if args.optimizer == "lars" and getattr(args, flag) is None:  # otherwise, so older runs still resume
            setattr(args, flag, value)
    # a warmup from the recipe (not --warmup_epochs) capped at this share of the run's steps (make_lr_fn)
    args.warmup_cap = values.get("warmup_max_fraction") if warmup_given is None else None
    if args.schedule == "cosine" and args.min_lr is None:
        args.min_lr = 0.0  # a recipe with a multistep schedule (tuned supervised) has no cosine floor
    if args.learning_rate is None:
        batch = args.batch_size if args.batch_size and args.batch_size > 0 else 0
        args.learning_rate, args.lr_rule = run_lr(values, batch, run_epochs(args))
    else:
        args.lr_rule = "given by --learning_rate"
    args.recipe_source = values["source"]


def run_epochs(args: argparse.Namespace) -> float | None:
    """How many epochs of the full training split the run amounts to (what the recipe's lr rule reads):
    --epochs, or --steps x batch / the size of the split it trains on (training_split: STL-10 SimCLR reads
    train+unlabeled, 105,000 images, not the 5,000 of train); None when that size is unknown (folders)."""
    if args.steps is None:
        return args.epochs
    size = split_size(args.dataset, training_split(args))
    return args.steps * args.batch_size / size if size and args.batch_size else None


def check_args(args: argparse.Namespace) -> None:
    """Catch bad values before any work starts (one-line UserError each).

    Finiteness and single-flag ranges are the argparse types' job (utils/cli.py); what is left
    here is written NaN-safe (`not 0 < x <= 1` is True for NaN) or compares flags with each other.
    """
    if not 0 < args.data_scale <= 1:
        raise UserError(f"--data_scale must be in (0, 1], got {args.data_scale}")
    if not 0 <= args.label_val_split < 1:
        raise UserError(f"--label_val_split must be in [0, 1), got {args.label_val_split}")
    if args.data_scale < 1 and args.label_fraction < 1:
        raise UserError("--data_scale and --label_fraction pick the training images two ways; give one")
    if args.batch_size <= 0:
        raise UserError(f"--batch_size must be > 0, got {args.batch_size}")
    if args.train_type in SELF_SUPERVISED and args.batch_size < 2 and (args.steps is not None or args.epochs > 0):
        # NT-Xent's negatives are the batch's other images; the others' projectors hold BatchNorm over the batch
        why = ("the other images of a batch are its negatives" if args.train_type == "simclr"
               else "its projector's BatchNorm needs batch statistics")
        raise UserError(f"{'SimCLR' if args.train_type == 'simclr' else args.train_type} needs --batch_size >= 2 "
                        f"({why}), got {args.batch_size}")
    if args.train_type == "mocov2" and args.queue_size < args.batch_size:
        raise UserError(f"--queue_size {args.queue_size} must hold a global batch of keys (--batch_size {args.batch_size})")
    if not args.learning_rate > 0:
        raise UserError(f"--learning_rate must be > 0, got {args.learning_rate}")
    if args.train_type in ("simclr", "mocov2") and not args.temperature > 0:
        raise UserError(f"--temperature must be > 0, got {args.temperature}")
    if args.schedule == "cosine" and not 0 <= args.min_lr <= args.learning_rate:
        raise UserError(f"--min_lr must be in [0, --learning_rate], got {args.min_lr}")
    if args.schedule == "multistep":
        if args.lr_milestones is None or args.lr_gamma is None:
            raise UserError(f"--schedule multistep needs --lr_milestones and --lr_gamma (the {args.recipe} "
                            f"{args.train_type} recipe has none)")
        if not args.lr_milestones or any(not 0 < m <= 1 for m in args.lr_milestones) or \
                list(args.lr_milestones) != sorted(args.lr_milestones):
            raise UserError(f"--lr_milestones must be increasing fractions of the run in (0, 1], got {args.lr_milestones}")
        if not 0 < args.lr_gamma <= 1:
            raise UserError(f"--lr_gamma must be in (0, 1], got {args.lr_gamma}")
    if args.image_size is not None and args.image_size < 8:
        raise UserError(f"--image_size must be >= 8, got {args.image_size}")
    if args.train_split != "auto" and args.train_split not in DATASETS[args.dataset].splits:
        raise UserError(f"--train_split {args.train_split}: {args.dataset} has the splits {list(DATASETS[args.dataset].splits)}")
    if args.train_type == "supervised" and "unlabeled" in args.train_split:
        raise UserError(f"--train_split {args.train_split} holds unlabelled images: --train_type supervised needs train")
    if args.pretrained and args.stem == "cifar":
        raise UserError("--pretrained true loads ImageNet weights, which need --stem imagenet (or auto)")
    if args.pretrained and args.normalize is False:
        raise UserError("--pretrained true: ImageNet weights expect ImageNet-normalised inputs; drop --normalize false")
    if args.resume and args.overwrite:
        raise UserError("--resume and --overwrite contradict each other; give one of them")
    if not args.warmup_epochs >= 0:
        raise UserError(f"--warmup_epochs must be >= 0, got {args.warmup_epochs}")
    try:
        view_spec(args)
    except ValueError as exc:
        raise UserError(f"augmentation: {exc}") from None


def view_spec(args: argparse.Namespace) -> SimCLRViewSpec | SupervisedAugSpec:
    """The augmentation of --train_type from the resolved flags (ValueError names a bad value)."""
    if args.train_type != "supervised":  # every self-supervised method takes two SimCLR-style views
        return SimCLRViewSpec(crop_min_scale=args.crop_min_scale, hflip_prob=args.hflip_prob,
                              jitter=tuple(args.jitter), jitter_prob=args.jitter_prob, gray_prob=args.gray_prob,
                              blur_prob=args.blur_prob)
    return SupervisedAugSpec(padding=args.crop_padding, pad_mode=args.pad_mode, hflip_prob=args.hflip_prob,
                             rotation=args.rotation)


def run_length(args: argparse.Namespace, steps_per_epoch: int) -> tuple[int, int]:
    """(epochs, total steps): --epochs full epochs, or --steps steps over ceil(steps / steps_per_epoch) epochs."""
    if args.steps is None:
        return args.epochs, args.epochs * steps_per_epoch
    return -(-args.steps // steps_per_epoch), args.steps


def describe_data(args: argparse.Namespace) -> dict:
    """Resolution, stem and normalisation decided once; stored in the checkpoint for test.py."""
    info = DATASETS[args.dataset]
    if args.pretrained:
        image_size = args.image_size or IMAGENET_IMAGE_SIZE
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    else:
        image_size = args.image_size or info.default_image_size or 64
        # --normalize false: the network sees [0, 1] pixels; stored as mean 0 / std 1, so test.py does the same.
        mean, std = (info.mean, info.std) if args.normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    stem = args.stem if args.stem != "auto" else ("imagenet" if args.pretrained or image_size > 64 else "cifar")
    split = training_split(args)
    return {"dataset": "imagenet" if args.pretrained and args.epochs == 0 else args.dataset,
            "image_size": image_size, "mean": list(mean), "std": list(std), "stem": stem,
            "split": f"{split} ({info.split_rule})" if info.split_rule else split}


def training_split(args: argparse.Namespace) -> str:
    """The split pretraining reads: --train_split, or (auto) the dataset's pretrain_split for the self-supervised
    methods (stl10: train+unlabeled) and train for supervised."""
    if args.train_split != "auto":
        return args.train_split
    return DATASETS[args.dataset].pretrain_split if args.train_type != "supervised" else "train"


def build_batches(args, arrays, indices, data, env, device, local_bs):
    """The training batches for --aug: device-resident + batched aug, or PIL in DataLoader workers."""
    n_views = METHODS[args.train_type].n_views
    size, mean, std = data["image_size"], data["mean"], data["std"]
    spec = view_spec(args)
    # auto = the batched path on every device: on a 2-core CPU it measured 27.7 vs 26.3 images/s
    # for the PIL-worker path at batch 128, and its augmentation 11x PIL's rate per core.
    if args.aug in ("auto", "gpu"):
        augment = (BatchSimCLRAugment(size, mean, std, spec) if n_views == 2
                   else BatchSupervisedAugment(size, mean, std, spec))
        return DeviceBatches(arrays, indices, augment, n_views, args.batch_size, args.seed, env, device,
                             args.channels_last)
    if n_views == 2:
        transform = TwoViews(simclr_view_transform(size, mean, std, spec))
    else:
        transform = supervised_train_transform(size, mean, std, native_size=arrays.image_size, spec=spec)
    return LoaderBatches(arrays, indices, transform, local_bs, args.seed, env, device, args.workers, args.channels_last)


def one_d_lr_groups(groups: list[dict], scale: float) -> list[dict]:
    """Each parameter group split in two: its tensors of two or more dimensions, and its one-dimensional ones (biases,
    BatchNorm weights) with `lr_scale` x `scale`, which utils.schedule.make_scheduler applies to the group's lr."""
    out = []
    for group in groups:
        rest = {k: v for k, v in group.items() if k != "params"}
        many = [p for p in group["params"] if p.ndim > 1]
        one = [p for p in group["params"] if p.ndim <= 1]
        out += [{**rest, "params": many}] if many else []
        out += [{**rest, "params": one, "lr_scale": rest.get("lr_scale", 1.0) * scale}] if one else []
    return out


def make_optimizer(args, model, device):
    raw = model.module if isinstance(model, DistributedDataParallel) else model
    params = raw.param_groups()  # trainable parameters only (never an EMA target's); SimSiam: a fixed-lr group
    if getattr(args, "lr_1d_scale", None) not in (None, 1.0):
        params = one_d_lr_groups(params, args.lr_1d_scale)
    if args.optimizer == "lars":
        return LARS(params, lr=args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay,
                    eta=args.lars_eta, clip_lr=args.lars_clip_lr)
    # Fused kernels on CUDA, multi-tensor (foreach) elsewhere: one launch per group, not per tensor.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.learning_rate, momentum=args.momentum,
                               weight_decay=args.weight_decay, **fast)
    cls = torch.optim.Adam if args.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=args.learning_rate, weight_decay=args.weight_decay, **fast)


def make_lr_fn(args: argparse.Namespace, total_steps: int, steps_per_epoch: int):
    """step -> lr of the run: the recipe's schedule over its whole length (utils/schedule.py; warmup_steps caps
    a recipe's warmup at its warmup_max_fraction of the run)."""
    warmup = warmup_steps(args.warmup_epochs, steps_per_epoch, total_steps, getattr(args, "warmup_cap", None))
    if args.schedule == "multistep":
        return lr_schedule("multistep", args.learning_rate, total_steps, warmup_steps=warmup, gamma=args.lr_gamma,
                           milestones=milestone_steps(args.lr_milestones, total_steps, warmup))
    period = args.lr_period_epochs * steps_per_epoch if args.lr_period_epochs else None
    return lr_schedule("cosine", args.learning_rate, total_steps, final_lr=args.min_lr, warmup_steps=warmup,
                       period_steps=period)


def make_checkpoint(args, model, data, spec, subset, epoch, step, finished, extra=None) -> dict:
    raw = model.module if isinstance(model, DistributedDataParallel) else model
    raw = getattr(raw, "_orig_mod", raw)
    ckpt = {
        "format": FORMAT,
        "model": spec,
        "data": {"dataset": data["dataset"], "image_size": data["image_size"], "mean": data["mean"],
                 "std": data["std"], "classes": data.get("classes"), "data_scale": args.data_scale,
                 "subset_sha256": subset.get("sha256"), "num_train": subset.get("num_train"),
                 "data_sha256": subset.get("data_sha256"), "split": data.get("split")},
        "backbone": {k: v.detach().cpu() for k, v in raw.backbone.state_dict().items()},
        "head": {k: v.detach().cpu() for k, v in raw.head.state_dict().items()},
        "epoch": epoch, "step": step, "finished": finished, "config": plain(vars(args)),
    }
    if extra:
        ckpt["train_state"] = extra
    return ckpt


def write_metrics(run_dir: Path, history: list[dict], args) -> None:
    atomic_write_csv(run_dir / "metrics.csv", history, METRIC_FIELDS)
    epochs = [row["epoch"] for row in history]
    panels = [("pretraining loss", {"train loss": [row["loss"] for row in history]}),
              ("learning rate", {"first step": [row.get("lr_first") for row in history],
                                 "last step": [row.get("lr_last") for row in history]})]
    if args.train_type == "supervised":
        panels.insert(1, ("train accuracy (%)", {"train": [row.get("train_acc") for row in history]}))
    if any(row.get("knn200_acc") is not None for row in history):
        panels.insert(1, ("kNN accuracy on the test split (%)", {
            "k=10 uniform": [row.get("knn10_acc") for row in history],
            "k=200 weighted": [row.get("knn200_acc") for row in history]}))
    if any(row.get("z_std") is not None for row in history):
        panels.insert(1, collapse_panel(history))
    if args.train_type == "simclr":
        panels.insert(1, ("contrastive accuracy (%)", {"positive ranked first": [row.get("contrastive_acc")
                                                                                for row in history]}))
    if epochs:
        plot_panels(run_dir / "curves.png", epochs, panels,
                    title=f"{args.train_type} pretraining on {args.dataset} (data_scale {args.data_scale})")


def knn_monitor(model, arrays_train, indices, arrays_test, data, device) -> dict[str, float]:
    """kNN accuracies (%) of the backbone's features, train subset as memory, test split as queries:
    {"knn10": uniform k=10, "knn200": weighted k=200} (utils/eval/knn.py)."""
    from utils.eval.features import extract_features
    from utils.eval.knn import knn_accuracies

    raw = model.module if isinstance(model, DistributedDataParallel) else model
    raw = getattr(raw, "_orig_mod", raw)
    size, mean, std = data["image_size"], data["mean"], data["std"]
    indices = indices[arrays_train.labels[indices] >= 0]  # unlabelled images (label -1, stl10) have no vote
    train_h = extract_features(raw.backbone, arrays_train.images[indices], size, mean, std, device)
    test_h = extract_features(raw.backbone, arrays_test.images, size, mean, std, device)
    train_y = torch.as_tensor(arrays_train.labels[indices], device=device)
    test_y = torch.as_tensor(arrays_test.labels, device=device)
    return knn_accuracies(train_h, train_y, test_h, test_y, arrays_train.num_classes)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = resolve_device(args.device)
    env = init_distributed(device.type)
    try:
        with run_settings(args.threads, args.deterministic):
            return _train(args, device, env)
    finally:
        if args.run_dir:
            unlock_run_dir(Path(args.run_dir))
        cleanup_distributed()


def _train(args, device, env) -> dict:
    if env.is_distributed and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    local_bs = per_rank_batch_size(args.batch_size, env.world_size)
    precision = choose_precision(args.precision, device)
    if precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs CUDA (its GradScaler is CUDA's)")
    if precision == "bf16" and device.type != "cuda" and not (device.type == "cpu" and cpu_bf16_native()):
        raise UserError("--precision bf16 needs CUDA or a CPU with native bf16 (avx512_bf16 or amx_bf16 in "
                        "/proc/cpuinfo): emulated, it was measured 17x slower than fp32")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.run_dir or f"checkpoints/{args.train_type}-{args.dataset}-{stamp}")
    args.run_dir = str(run_dir)
    config = plain(vars(args))
    resume_ckpt = None
    new_dir = False
    if env.is_main:
        new_dir = not run_dir_exists(run_dir)
        resume_ckpt = prepare_run_dir(run_dir, config, args.resume, args.overwrite)
    try:
        return _run(args, device, env, run_dir, config, resume_ckpt, local_bs, precision)
    except BaseException:
        # A run that stopped (bad input, a bug, a NaN loss, Ctrl-C) before its first checkpoint or
        # metrics leaves no folder behind: only .lock, train.log and config.json would be in it.
        if env.is_main and new_dir:
            remove_unused_run_dir(run_dir)
        raise


@dataclass
class Run:
    """What the epoch loop reads and updates, assembled by _run's setup steps below."""

    args: argparse.Namespace
    env: object                 # utils.distributed's process-group view (rank, world size, is_main)
    device: torch.device
    run_dir: Path
    data: dict                  # describe_data(), plus the class names once the data is loaded
    subset: dict                # the training subset's identity: sha256, num_train, data_sha256
    arrays: object = None       # the train split (None when nothing is trained)
    indices: object = None      # the --data_scale subset of it
    arrays_test: object = None  # the test split, for --knn_every
    spec: dict = field(default_factory=dict)  # the model spec stored in every checkpoint
    model: torch.nn.Module | None = None      # DistributedDataParallel-wrapped when distributed
    train_model: torch.nn.Module | None = None  # model, or its torch.compile
    batches: object = None
    optimizer: torch.optim.Optimizer | None = None
    scheduler: object = None
    lr_fn: object = None        # step -> the lr that step trains at (utils/schedule.py)
    scaler: object = None
    amp: object = nullcontext   # () -> the autocast context of --precision
    check_every: int = 1
    epochs: int = 0
    total_steps: int = 0
    history: list = field(default_factory=list)
    global_step: int = 0
    nan_run: int = 0            # non-finite losses in a row (--nan_policy skip), across epochs
    writer: object = None
    test_signal: tuple | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.batches.steps_per_epoch

    def checkpoint(self, epoch: int, finished: bool, extra: dict | None = None) -> dict:
        return make_checkpoint(self.args, self.model, self.data, self.spec, self.subset, epoch, self.global_step,
                               finished, extra)

    @property
    def method(self):
        """The method itself, without its DDP wrapper."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    def train_state(self, epoch: int, step_in_epoch: int, partial: dict | None) -> dict:
        """What resuming needs beyond the weights: optimizer, schedule, scaler, RNG, history, position, and
        the method's own state (an EMA target, a queue)."""
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(), "rng": rng_state(), "history": self.history,
                "epoch": epoch, "step_in_epoch": step_in_epoch, "partial": partial,
                "method": self.method.extra_state()}


def _run(args, device, env, run_dir: Path, config: dict, resume_ckpt, local_bs: int, precision: str) -> dict:
    barrier()
    setup_logging(run_dir / "train.log" if env.is_main else None, quiet=args.quiet or not env.is_main)
    run = Run(args, env, device, run_dir, data=describe_data(args), subset={})
    imagenet_baseline = args.pretrained and args.epochs == 0  # torchvision's weights as they are: no data needed
    load_training_data(run, resume_ckpt, imagenet_baseline)
    run.model, run.spec = build_training_model(args, run.data, device, imagenet_baseline)
    if args.overwrite and env.is_main:  # every input is checked by now: the old run may go
        clear_run_dir(run_dir)
        setup_logging(run_dir / "train.log", quiet=args.quiet)
    if args.epochs == 0:
        return save_initial_model(run, config)

    prepare_optimisation(run, local_bs, precision)
    if env.is_distributed:
        resume_ckpt = broadcast_object(resume_ckpt)
    start_epoch, start_step, carry = resume(run, resume_ckpt) if resume_ckpt is not None else (0, 0, None)
    announce(run, config, precision, local_bs)
    run.writer = _tensorboard(args, run_dir) if env.is_main else None
    run.test_signal = test_signal_hook()
    with StopFlag() as stop:
        for epoch in range(start_epoch, run.epochs):
            resumed = epoch == start_epoch
            tally = train_epoch(run, epoch, start_step if resumed else 0, carry if resumed else None, stop)
            end_epoch(run, epoch, tally)
            barrier()

    final = run_dir / "final.pth"
    if env.is_main:
        _save(final, run.checkpoint(run.epochs, True))
        if run.writer is not None:
            run.writer.close()
        LOG.info("done: %s", final)
    barrier()
    return {"run_dir": str(run_dir), "final": str(final), "history": run.history}


# --- setup: data, model, optimisation, resume ------------------------------------------------

def load_training_data(run: Run, resume_ckpt: dict | None, imagenet_baseline: bool) -> None:
    """Load the train split and its --data_scale subset (and the test split for --knn_every) into `run`.

    Rank 0 fetches/prepares first, the others then read what it left on disk. Refuses to resume
    on other data and a batch larger than the subset.
    """
    args, env, data = run.args, run.env, run.data
    classes_unknown = args.train_type == "supervised" and DATASETS[args.dataset].num_classes is None
    trains = args.steps is not None or args.epochs > 0
    if not (trains or classes_unknown) or imagenet_baseline:
        return
    if env.is_main:
        run.arrays = load_split(args.dataset, training_split(args), args.data_dir, image_size=args.image_size)
    barrier()
    if not env.is_main:
        run.arrays = load_split(args.dataset, training_split(args), args.data_dir, download=False,
                                image_size=args.image_size)
    run.indices = training_subset(run.arrays.labels, args.data_scale, args.seed, args.label_fraction,
                                  args.label_val_split, run.arrays.classes)
    run.subset = {"sha256": indices_sha256(run.indices), "num_train": int(len(run.indices)),
                  "data_sha256": data_sha256(run.arrays.images, run.arrays.labels),
                  "labels_used": labels_used(args, run.arrays.labels, run.indices)}
    data["classes"] = run.arrays.classes
    if args.train_type == "supervised" and len(run.arrays) and run.arrays.labels.min() < 0:  # never in a loss
        raise UserError(f"{args.dataset} split {training_split(args)!r} holds unlabelled images: supervised needs 'train'")
    if resume_ckpt is not None:  # the same config on other data would mix two datasets in one run
        check_same_data(resume_ckpt, data, run.subset, args, run.run_dir)
    if trains and args.batch_size > len(run.indices):
        raise UserError(f"--batch_size {args.batch_size} is larger than the training set "
                        f"({len(run.indices)} images at --data_scale {args.data_scale})")
    if args.knn_every:
        run.arrays_test = load_split(args.dataset, "test", args.data_dir, download=False, image_size=args.image_size)


def labels_used(args, labels, indices) -> int:
    """Distinct train-split images whose labels the run reads: every image of a supervised run's subset (its
    loss; the scratch baseline's --label_fraction subset), and for a self-supervised run only those the
    --knn_every monitor uses as its memory (0 without it): the few-label axis counts them against its budget."""
    if args.train_type == "supervised" or args.knn_every:
        return int((np.asarray(labels)[indices] >= 0).sum())
    return 0


def check_same_data(resume_ckpt: dict, data: dict, subset: dict, args, run_dir: Path) -> None:
    """UserError naming what differs when last.pth was trained on other data than the data found now."""
    changed = data_differences(resume_ckpt.get("data", {}), {
        "dataset": data["dataset"], "classes": data["classes"], "num_train": subset["num_train"],
        "subset_sha256": subset["sha256"], "data_sha256": subset["data_sha256"], "split": data["split"]})
    if changed:
        old_dir = resume_ckpt.get("config", {}).get("data_dir")
        moved = f"; data_dir: {old_dir!r} -> {args.data_dir!r}" if old_dir not in (None, args.data_dir) else ""
        raise UserError(f"{run_dir / 'last.pth'} was trained on other data ({'; '.join(changed)}{moved}); "
                        "resuming would mix two datasets in one run: restore that data, or use a new "
                        "--run_dir or --overwrite")


def build_training_model(args, data: dict, device: torch.device, imagenet_baseline: bool):
    """(the method on the device, its spec): built identically on every rank from the seed (utils/methods/)."""
    seed_everything(args.seed)
    num_classes = len(data["classes"]) if data.get("classes") else DATASETS[args.dataset].num_classes
    keep_imagenet_head = imagenet_baseline and args.train_type == "supervised"
    if keep_imagenet_head:
        num_classes = 1000  # torchvision's ImageNet classifier is kept as the head
    spec = {"train_type": args.train_type, "stem": data["stem"], "num_classes": num_classes,
            "proj_hidden_dim": args.proj_hidden_dim, "proj_dim": args.proj_dim, "proj_bn": args.proj_bn,
            "feature_dim": 512, "pretrained": bool(args.pretrained), **method_spec(args.train_type, args)}
    weights = load_imagenet_state_dict() if args.pretrained else None  # fetched on the data side
    backbone = build_backbone(spec["stem"], weights=weights)
    model = build_method(args.train_type, backbone, spec, head=imagenet_classifier(weights) if keep_imagenet_head
                         else None)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, spec


def save_initial_model(run: Run, config: dict) -> dict:
    """--epochs 0: the initial model (ImageNet weights or random init) becomes final.pth."""
    final = run.run_dir / "final.pth"
    if run.env.is_main:
        atomic_write_json(run.run_dir / "config.json", {"args": config, "env": environment_info()})
        _save(final, run.checkpoint(0, True))
        LOG.info("--epochs 0: saved the initial model (%s) to %s",
                 "ImageNet weights" if run.args.pretrained else "random init", final)
    return {"run_dir": str(run.run_dir), "final": str(final), "history": []}


def prepare_optimisation(run: Run, local_bs: int, precision: str) -> None:
    """Batches, run length, DDP (and SyncBatchNorm), optimizer, lr schedule, mixed precision."""
    args, env, device = run.args, run.env, run.device
    run.batches = build_batches(args, run.arrays, run.indices, run.data, env, device, local_bs)
    run.epochs, run.total_steps = run_length(args, run.steps_per_epoch)
    sync_bn = args.sync_bn if args.sync_bn is not None else (env.is_distributed and args.train_type != "supervised")
    if env.is_distributed:
        if sync_bn and device.type == "cuda":
            run.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
        elif sync_bn and env.is_main:
            LOG.warning("SyncBatchNorm needs CUDA (NCCL); on %s each process keeps its own BatchNorm statistics",
                        device.type)
        # EMA targets and queues are kept equal on every rank by the method (gathered keys), not by DDP
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(run.model, run.model.ddp_ignored())
        run.model = DistributedDataParallel(run.model, device_ids=[device.index] if device.type == "cuda" else None)
    run.optimizer = make_optimizer(args, run.model, device)
    run.lr_fn = make_lr_fn(args, run.total_steps, run.steps_per_epoch)
    run.scheduler = make_scheduler(run.optimizer, run.lr_fn, args.learning_rate)
    if args.schedule == "cosine" and args.lr_period_epochs and args.lr_period_epochs < run.epochs and env.is_main:
        LOG.warning("warning: --lr_period_epochs %d < %d epochs: the lr holds at --min_lr %g for the last %d epochs",
                    args.lr_period_epochs, run.epochs, args.min_lr, run.epochs - args.lr_period_epochs)
    run.scaler, run.amp = mixed_precision(precision, device)
    run.check_every = 1 if device.type == "cpu" else args.log_every  # a host sync is free on CPU, costly on GPU
    run.train_model = torch.compile(run.model) if args.compile else run.model


def resume(run: Run, resume_ckpt: dict) -> tuple[int, int, dict | None]:
    """Restore model, optimizer, scheduler, scaler, RNG and history; (start epoch, start step, partial tally)."""
    state = resume_ckpt["train_state"]
    raw = run.model.module if isinstance(run.model, DistributedDataParallel) else run.model
    load_state_strict(raw.backbone, resume_ckpt["backbone"], "resume backbone")
    load_state_strict(raw.head, resume_ckpt["head"], "resume head")
    raw.load_extra_state(state.get("method"))  # the EMA target and MoCo's queue (utils/methods/)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    run.history = [{RENAMED_METRICS.get(k, k): v for k, v in row.items()} for row in state["history"]]
    run.global_step = resume_ckpt["step"]
    LOG.info("resuming from %s: epoch %d, %d of %d steps done", run.run_dir / "last.pth", state["epoch"] + 1,
             state["step_in_epoch"], run.steps_per_epoch)
    return state["epoch"], state["step_in_epoch"], state.get("partial")


def announce(run: Run, config: dict, precision: str, local_bs: int) -> None:
    """config.json (with the resolved run length) and the run's opening log lines."""
    args, env = run.args, run.env
    if env.is_main:
        atomic_write_json(run.run_dir / "config.json", {"args": config, "env": environment_info(),
                                                        "world_size": env.world_size, "precision": precision,
                                                        "steps_per_epoch": run.steps_per_epoch,
                                                        "epochs": run.epochs, "total_steps": run.total_steps,
                                                        "data": run.data | {"classes": None},
                                                        "labels_used": run.subset["labels_used"]})
    LOG.info("run directory %s (to resume after a crash: the same command with --run_dir %s)", run.run_dir, run.run_dir)
    LOG.info("%s on %s: %d images, %d steps/epoch, global batch %d (%d per rank x %d), lr %g, %s, %s, aug %s",
             args.train_type, args.dataset, run.subset["num_train"], run.steps_per_epoch, args.batch_size, local_bs,
             env.world_size, args.learning_rate, run.device, precision, type(run.batches).__name__)


# --- the epoch loop ----------------------------------------------------------------------------

def train_epoch(run: Run, epoch: int, first: int, carry: dict | None, stop: StopFlag) -> dict:
    """Steps first.. of one epoch (carry: the tally of the steps before `first`, from last.pth).

    Returns the epoch's tally: loss_sum and correct (device tensors), seen, skipped, seconds,
    steps. A stop signal saves last.pth after the current step and raises Interrupted.
    """
    args, device, optimizer, scheduler, scaler = run.args, run.device, run.optimizer, run.scheduler, run.scaler
    run.train_model.train()
    t0 = time.perf_counter()
    tally = {"loss_sum": torch.zeros((), device=device), "correct": torch.zeros((), device=device, dtype=torch.long),
             "z_std_sum": torch.zeros((), device=device), "seen": 0, "skipped": 0, "seconds": 0.0}
    if carry is not None:
        tally["loss_sum"] += carry["loss_sum"].to(device)
        tally["correct"] += carry["correct"].to(device)
        tally["z_std_sum"] += carry.get("z_std_sum", torch.zeros(())).to(device)
        tally.update(seen=carry["seen"], skipped=carry["skipped"], seconds=carry["seconds"])
    seconds_before = tally["seconds"]
    epoch_steps = min(run.steps_per_epoch, run.total_steps - epoch * run.steps_per_epoch)  # --steps: last partial
    recent: list[torch.Tensor] = []  # losses since the last finiteness check
    bar = tqdm(islice(run.batches.epoch(epoch, first), epoch_steps - first), total=epoch_steps, initial=first,
               leave=False, disable=args.quiet or not run.env.is_main, desc=f"epoch {epoch + 1}/{run.epochs}")
    for step, (views, labels) in enumerate(bar, start=first):
        with run.amp():
            loss, stats = run.train_model(views, labels)  # the method's batch -> loss (utils/methods/)
        if args.nan_policy == "skip" and not finite_on_every_rank(loss):
            skip_step(run, tally, epoch, step)
            continue
        run.nan_run = 0
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        run.method.after_step(run.global_step, run.total_steps)  # EMA target, queue
        run.global_step += 1
        tally["loss_sum"] += loss.detach().float() * labels.shape[0]  # no host sync inside the step
        recent.append(loss.detach())
        if "correct" in stats:
            tally["correct"] += stats["correct"]
        if "z_std" in stats:
            tally["z_std_sum"] += stats["z_std"] * labels.shape[0]
        tally["seen"] += labels.shape[0]
        if (step + 1) % run.check_every == 0 or step + 1 == epoch_steps:
            check_finite(recent, epoch, step, run.run_dir)  # the loop's only sync, every check_every steps
            recent = []
        if run.test_signal and run.global_step == run.test_signal[0]:
            os.kill(os.getpid(), run.test_signal[1])
        if (step + 1) % args.log_every == 0 or step + 1 == epoch_steps:
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{optimizer.param_groups[0]['lr']:.3g}",
                            img_s=f"{tally['seen'] * run.env.world_size / (time.perf_counter() - t0 + 1e-9):.0f}")
        if _stop_requested(stop, run.env, step, args, device):
            check_finite(recent, epoch, step, run.run_dir)
            tally["seconds"] = seconds_before + time.perf_counter() - t0
            bar.close()
            save_and_stop(run, tally, epoch, step, stop)
    bar.close()
    tally.update(seconds=seconds_before + time.perf_counter() - t0, steps=epoch_steps)
    return tally


def skip_step(run: Run, tally: dict, epoch: int, step: int) -> None:
    """--nan_policy skip: drop this step's update (the schedule still moves); stop after --max_nan_skips in a row."""
    tally["skipped"] += 1
    run.nan_run += 1
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    if run.nan_run >= run.args.max_nan_skips:
        raise NonFiniteLossError(f"{run.nan_run} non-finite losses in a row (--max_nan_skips) at epoch "
                                 f"{epoch + 1}, step {step + 1}; {last_good(run.run_dir)}")


def save_and_stop(run: Run, tally: dict, epoch: int, step: int, stop: StopFlag) -> None:
    """After a stop signal: last.pth with the position inside the epoch and its tally so far, then Interrupted."""
    partial = {"loss_sum": tally["loss_sum"].cpu(), "correct": tally["correct"].cpu(),
               "z_std_sum": tally["z_std_sum"].cpu(), "seen": tally["seen"],
               "skipped": tally["skipped"], "seconds": tally["seconds"]}
    if run.env.is_main:
        _save(run.run_dir / "last.pth", run.checkpoint(epoch, False, run.train_state(epoch, step + 1, partial)))
    raise Interrupted(f"stopped by {signal.Signals(stop.signum).name} at epoch {epoch + 1}, step "
                      f"{step + 1}/{run.steps_per_epoch}; saved {run.run_dir / 'last.pth'}. To resume, run "
                      f"the same command with --run_dir {run.run_dir}", stop.signum)


def end_epoch(run: Run, epoch: int, tally: dict) -> None:
    """The metrics row (the only place the loop waits for the device), kNN, checkpoints, metrics.csv, log line."""
    args, device = run.args, run.device
    totals = all_reduce_sum(torch.stack([tally["loss_sum"], tally["correct"].float(),
                                         torch.tensor(float(tally["seen"]), device=device), tally["z_std_sum"]]))
    seconds = tally["seconds"]
    n_seen = max(1.0, totals[2].item())
    row = {"epoch": epoch + 1, "step": epoch * run.steps_per_epoch + tally["steps"],
           "loss": round(totals[0].item() / n_seen, 6),
           "train_acc": round(100 * totals[1].item() / n_seen, 4) if args.train_type == "supervised" else None,
           # SimCLR's correct counts views: 2 per pair seen
           "contrastive_acc": round(50 * totals[1].item() / n_seen, 4) if args.train_type == "simclr" else None,
           "lr_first": run.lr_fn(epoch * run.steps_per_epoch),
           "lr_last": run.lr_fn(epoch * run.steps_per_epoch + tally["steps"] - 1),
           "images_per_s": round(n_seen / max(seconds, 1e-9), 2), "seconds": round(seconds, 3),
           "skipped_steps": tally["skipped"],
           **collapse_measure(run.method.embedding_dim, totals[3].item() / n_seen, args.train_type, epoch + 1)}
    if args.knn_every and ((epoch + 1) % args.knn_every == 0 or epoch + 1 == run.epochs) and run.env.is_main:
        accs = knn_monitor(run.model, run.arrays, run.indices, run.arrays_test, run.data, device)
        row.update({f"{name}_acc": round(acc, 4) for name, acc in accs.items()})
    run.history.append(row)
    if run.env.is_main:
        _save(run.run_dir / "last.pth", run.checkpoint(epoch + 1, False, run.train_state(epoch + 1, 0, None)))
        if (args.save_every and (epoch + 1) % args.save_every == 0) or (epoch + 1) in args.save_at:
            _save(run.run_dir / f"epoch_{epoch + 1:04d}.pth", run.checkpoint(epoch + 1, False))
        write_metrics(run.run_dir, run.history, args)
        if run.writer is not None:
            for key in ("loss", "train_acc", "contrastive_acc", "knn10_acc", "knn200_acc", "lr_first", "lr_last",
                        "images_per_s"):
                if row.get(key) is not None:
                    run.writer.add_scalar(f"pretrain/{key}", row[key], epoch + 1)
    LOG.info("epoch %d/%d  loss %.4f%s%s%s  lr %.4g -> %.4g  %.1f img/s  %.1f s", epoch + 1, run.epochs, row["loss"],
             f"  train acc {row['train_acc']:.2f}%" if row["train_acc"] is not None else "",
             f"  contrastive acc {row['contrastive_acc']:.2f}%" if row["contrastive_acc"] is not None else "",
             f"  kNN acc k=10 {row['knn10_acc']:.2f}% k=200 {row['knn200_acc']:.2f}%" if "knn10_acc" in row else "",
             row["lr_first"], row["lr_last"], row["images_per_s"], row["seconds"])


def _save(path: Path, ckpt: dict) -> None:
    """save_checkpoint; a full disk or a vanished folder becomes one line (the previous file stays whole)."""
    try:
        save_checkpoint(path, ckpt)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}; the previous {path.name}, if any, "
                        "is unchanged") from None


def _stop_requested(stop: StopFlag, env, step: int, args, device: torch.device) -> bool:
    """Single process: the flag itself. Distributed: agreed by all ranks every log_every steps."""
    if not env.is_distributed:
        return bool(stop.signum)
    if (step + 1) % args.log_every:
        return False
    return all_reduce_sum(torch.tensor([float(bool(stop.signum))], device=device)).item() > 0


def _tensorboard(args, run_dir: Path):
    if not args.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        LOG.warning("--tensorboard: tensorboard is not installed (pip install tensorboard); continuing without it")
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def cli(argv: list[str] | None = None) -> None:
    """Command-line entry: after SIGINT/SIGTERM (last.pth saved) exit 128 + signum, i.e. 130 or 143."""
    try:
        main(argv)
    except Interrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(128 + exc.signum) from None


if __name__ == "__main__":
    run_cli(cli)
