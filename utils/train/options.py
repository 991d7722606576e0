"""train.py's flags, group by group (its parse_args adds them, then applies --recipe and checks them).

A flag whose default comes from the recipe (train.RECIPE_FLAGS) defaults to None here; its help names the
recipe's value for each train type (utils/recipes.recipe_help), so --help shows what a run will use.
"""
from __future__ import annotations

import argparse

from utils.augment import SUPERVISED_PAD_MODES
from utils.cli import (BY_TYPE, degrees, finite_float, fraction, image_size, jitter_strength, momentum,
                       non_negative_float, non_negative_int, positive_float, positive_int, probability, str2bool)
from utils.recipes import DEFAULT_RECIPE, RECIPE_NAMES, recipe_help
from utils.schedule import SCHEDULE_KINDS


def add_train_flags(p: argparse.ArgumentParser, datasets: list[str], methods: list[str],
                    self_supervised: tuple[str, ...]) -> None:
    """Every group of train.py's own flags (the common, reproducibility and method flags come as parents).
    The dataset and method names come from the caller (utils/data and utils/methods sit beside this package)."""
    _add_what_to_train(p, BY_TYPE, datasets, methods, self_supervised)
    for add in (_add_augmentation, _add_optimisation, _add_speed, _add_outputs):
        add(p, BY_TYPE)


def _add_what_to_train(p: argparse.ArgumentParser, by_type: str, datasets, methods, self_supervised) -> None:
    """Flags: what to train (train type, data, stem, recipe, projection head)."""
    g = p.add_argument_group("what to train")
    g.add_argument("--train_type", default="simclr", choices=[*methods, "selfsupervised"],
                   help="simclr (alias selfsupervised), supervised, or a method beside SimCLR (utils/methods/)")
    g.add_argument("--dataset", default="cifar10", choices=datasets,
                   help="pretraining data; imagenet = Tiny-ImageNet data (or ImageNet weights with --pretrained true)")
    g.add_argument("--train_split", default="auto", choices=["auto", "train", "train+unlabeled", "unlabeled"],
                   help="split to pretrain on; auto: the dataset's pretraining split for self-supervised methods (stl10: "
                        "train+unlabeled), train for supervised (unlabelled images never reach a supervised loss)")
    g.add_argument("--pretrained", type=str2bool, default=False,
                   help="start from torchvision's ImageNet ResNet-18 weights (ImageNet stem, 224 px)")
    g.add_argument("--data_scale", type=float, default=1.0,
                   help="fraction of the training set, a seeded class-stratified subset (nested across scales)")
    g.add_argument("--label_fraction", type=fraction, default=1.0,
                   help="train on the labelled subset that test.py --label_fraction F --val_split V --seed S uses "
                        "(utils/data/labels.py; V = --label_val_split): the study's `scratch` baseline")
    g.add_argument("--label_val_split", type=finite_float, default=0.0,
                   help="the probe's --val_split (test.py --val_split V --seed S) whose images are never trained on: "
                        "drawn first, then the --label_fraction or --data_scale subset of the rest (0: none)")
    g.add_argument("--image_size", type=image_size, default=None,
                   help="training resolution [the dataset's default: its native size, 16 for digits (docs/datasets.md); "
                        "224 with --pretrained true]" + by_type)
    g.add_argument("--stem", default="auto", choices=["auto", "cifar", "imagenet"],
                   help="auto: CIFAR stem (3x3 conv, no max-pool) up to 64 px, ImageNet stem above or when pretrained")
    g.add_argument("--recipe", default=DEFAULT_RECIPE, choices=RECIPE_NAMES,
                   help="named values for everything below that is not given (utils/recipes.py, docs/recipes.md): "
                        "tuned = published ResNet-18 CIFAR recipes, original = the course project's, bugs fixed")
    g.add_argument("--proj_hidden_dim", type=positive_int, default=None,
                   help="projection MLP hidden width (self-supervised methods)"
                   + recipe_help("proj_hidden_dim", self_supervised) + by_type)
    g.add_argument("--proj_dim", type=positive_int, default=None,
                   help="projection output width (z)" + recipe_help("proj_dim", self_supervised) + by_type)
    g.add_argument("--proj_bn", type=str2bool, default=None,
                   help="BatchNorm in the projection MLP" + recipe_help("proj_bn", ("simclr",)) + by_type)
    g.add_argument("--temperature", type=positive_float, default=None,
                   help="NT-Xent (SimCLR) / InfoNCE (MoCo v2) temperature"
                   + recipe_help("temperature", ("simclr", "mocov2")) + by_type)


def _add_augmentation(p: argparse.ArgumentParser, by_type: str) -> None:
    """Flags: the augmentation (SimCLR views, supervised crops)."""
    a = p.add_argument_group("augmentation (SimCLR views | supervised crops; both paths, --aug gpu and cpu)")
    a.add_argument("--crop_min_scale", type=fraction, default=None,
                   help="SimCLR: RandomResizedCrop scale (s, 1)" + recipe_help("crop_min_scale", ("simclr",)) + by_type)
    a.add_argument("--hflip_prob", type=probability, default=None,
                   help="horizontal flip probability (turn it off for digits, text ...)" + recipe_help("hflip_prob")
                   + by_type)
    a.add_argument("--jitter_strength", type=jitter_strength, default=None,
                   help="SimCLR colour jitter strength s: brightness, contrast, saturation 0.8 s, hue 0.2 s "
                        "(0.5 = 0.4/0.4/0.4/0.1)" + recipe_help("jitter", ("simclr",)) + by_type)
    a.add_argument("--jitter_prob", type=probability, default=None,
                   help="SimCLR: probability of the colour jitter" + recipe_help("jitter_prob", ("simclr",)) + by_type)
    a.add_argument("--gray_prob", type=probability, default=None,
                   help="SimCLR: probability of grayscale" + recipe_help("gray_prob", ("simclr",)) + by_type)
    a.add_argument("--blur_prob", type=probability, default=None,
                   help="SimCLR: probability of Gaussian blur (sigma 0.1-2)" + recipe_help("blur_prob", ("simclr",))
                   + by_type)
    a.add_argument("--blur", action="store_true", help="SimCLR's Gaussian blur with p 0.5 (= --blur_prob 0.5)")
    a.add_argument("--normalize", type=str2bool, default=None,
                   help="normalise inputs with the dataset's mean/std (false: [0, 1] pixels; stored in the "
                        "checkpoint, so test.py does the same)" + recipe_help("normalize") + by_type)
    a.add_argument("--crop_padding", type=non_negative_int, default=None,
                   help="supervised: random-crop padding in px at 32 px" + recipe_help("crop_padding", ("supervised",))
                   + by_type)
    a.add_argument("--pad_mode", default=None, choices=list(SUPERVISED_PAD_MODES),
                   help="supervised: crop padding mode" + recipe_help("pad_mode", ("supervised",)) + by_type)
    a.add_argument("--rotation", type=degrees, default=None,
                   help="supervised: random rotation in degrees, uniform in [-r, r]"
                   + recipe_help("rotation", ("supervised",)) + by_type)


def _add_optimisation(p: argparse.ArgumentParser, by_type: str) -> None:
    """Flags: optimisation (defaults from --recipe), precision, NaN policy."""
    o = p.add_argument_group("optimisation (defaults from --recipe, by --train_type: simclr | supervised)")
    o.add_argument("--epochs", type=non_negative_int, default=None,
                   help="0 saves the initial model as final.pth (how the ImageNet baseline is made)"
                   + recipe_help("epochs") + by_type)
    o.add_argument("--batch_size", type=int, default=None, help="global batch" + recipe_help("batch_size") + by_type)
    o.add_argument("--learning_rate", "--lr", type=finite_float, default=None,
                   help="peak lr, absolute; by default the recipe's, scaled linearly with the batch (tuned SimCLR "
                        "runs under 500 epochs: 0.12 x B/512, the source's 100-epoch value)"
                   + recipe_help("lr") + by_type)
    o.add_argument("--steps", type=positive_int, default=None,
                   help="train for exactly this many steps instead of --epochs (the schedule's horizon): the "
                        "epochs follow from the subset size, ceil(steps / steps per epoch), the last one partial "
                        "(an equal-compute budget across data scales)")
    o.add_argument("--optimizer", default=None, choices=["sgd", "adam", "adamw", "lars"],
                   help="SGD with momentum, Adam, AdamW, or LARS (utils/lars.py: --lars_eta, --lars_clip_lr)"
                   + recipe_help("optimizer") + by_type)
    o.add_argument("--momentum", type=momentum, default=None, help="SGD momentum" + recipe_help("momentum") + by_type)
    o.add_argument("--lr_1d_scale", type=positive_float, default=None,
                   help="lr of the one-dimensional parameters (biases, BatchNorm weights) as a multiple of the lr, "
                        "in its own parameter group under the same schedule [1: every recipe; facebookresearch/"
                        "barlowtwins @ 8e8d284 main.py gives them 0.0048 / 0.2 = 0.024 of the weights' lr]")
    o.add_argument("--weight_decay", type=non_negative_float, default=None,
                   help="weight decay on all parameters" + recipe_help("weight_decay") + by_type)
    o.add_argument("--schedule", default=None, choices=list(SCHEDULE_KINDS),
                   help="cosine to --min_lr over the run (reached after its last step), or multistep "
                        "(x --lr_gamma at --lr_milestones); a flag of the other schedule is refused"
                   + recipe_help("schedule") + by_type)
    o.add_argument("--min_lr", type=non_negative_float, default=None,
                   help="cosine only: the floor, absolute [0 where the recipe has none]" + recipe_help("min_lr")
                   + by_type)
    o.add_argument("--lr_milestones", type=fraction, nargs="+", default=None,
                   help="multistep only: fractions of the run at which the lr is multiplied by --lr_gamma (when "
                        "the warmup covers one, fractions of the steps after the warmup)"
                   + recipe_help("milestones") + by_type)
    o.add_argument("--lr_gamma", type=fraction, default=None,
                   help="multistep only: decay factor" + recipe_help("gamma") + by_type)
    o.add_argument("--lr_period_epochs", type=positive_int, default=None,
                   help="cosine only: half-period in epochs, then hold at --min_lr [whole run]" + by_type)
    o.add_argument("--warmup_epochs", type=non_negative_float, default=None,
                   help="linear warmup length in epochs" + recipe_help("warmup_epochs") + by_type)
    o.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp16", "fp32"],
                   help="auto: bf16 autocast on a GPU with native bf16 (Ampere and later), fp16 + GradScaler on older "
                        "GPUs (V100, T4: bf16 there is emulated), fp32 on CPU; bf16 also runs on a CPU with native "
                        "bf16 (avx512_bf16 / amx_bf16; docs/speed.md)")
    o.add_argument("--nan_policy", default="stop", choices=["stop", "skip"],
                   help="on a NaN/inf loss: stop (keep the last good last.pth) or skip the step")
    o.add_argument("--max_nan_skips", type=positive_int, default=10, help="with skip: stop after this many in a row")


def _add_speed(p: argparse.ArgumentParser, by_type: str) -> None:
    """Flags: speed (augmentation device, compile, memory format, SyncBatchNorm)."""
    s = p.add_argument_group("speed")
    s.add_argument("--aug", default="auto", choices=["auto", "gpu", "cpu"],
                   help="gpu: data resident on the training device (GPU or CPU), batched augmentation there; "
                        "cpu: per-image PIL transforms in DataLoader workers (the reference pipeline); auto: gpu, "
                        "which measured faster on CUDA and on this 2-core CPU alike (docs/speed.md)")
    s.add_argument("--compile", type=str2bool, default=False, help="torch.compile the model; off by default: 1.04x on a 2-core CPU after 5-26 s of compilation, "
                   "not yet measured on a GPU (benchmarks/throughput.py --compile prints the break-even)")
    s.add_argument("--channels_last", type=str2bool, default=True, help="NHWC memory format (faster on CPU and GPU)")
    s.add_argument("--sync_bn", type=str2bool, default=None,
                   help="SyncBatchNorm across GPUs [on for multi-GPU self-supervised runs; never on CPU]" + by_type)


def _add_outputs(p: argparse.ArgumentParser, by_type: str) -> None:
    """Flags: outputs and resuming (run folder, extra checkpoints, kNN monitor, logging)."""
    r = p.add_argument_group("outputs and resuming")
    r.add_argument("--run_dir", default=None, help="output folder [checkpoints/<train_type>-<dataset>-<UTC time>]" + by_type)
    r.add_argument("--resume", action="store_true", help="resume from --run_dir/last.pth (automatic when configs match)")
    r.add_argument("--overwrite", action="store_true", help="discard what --run_dir holds and start again")
    r.add_argument("--save_every", type=non_negative_int, default=0, help="also keep epoch_NNNN.pth every N epochs (0: off)")
    r.add_argument("--save_at", type=positive_int, nargs="*", default=[], help="also keep epoch_NNNN.pth at these epochs")
    r.add_argument("--knn_every", type=non_negative_int, default=0,
                   help="kNN accuracies on the test split every N epochs (0: off): k=10 uniform votes "
                        "(knn10_acc, as dkobak/simclr-cifar10 reports) and k=200 weighted t=0.1 (knn200_acc)")
    r.add_argument("--log_every", type=positive_int, default=20, help="steps between progress updates")
    r.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (if installed)")
    r.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")
