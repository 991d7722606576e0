"""Linear Classification Protocol for a checkpoint written by train.py (or fine-tuning, kept apart).

    python test.py --model_path R/final.pth                               # linear probe on CIFAR-100
    python test.py --model_path R/final.pth --dataset synthetic --device cpu --test_num_epochs 30
    python test.py --train_type supervised --dataset cifar100 --test_num_epochs 100 --train_dataset cifar10 --model_path X.pth
    python test.py --model_path R/final.pth --finetune                   # fine-tuning: a different protocol

Linear protocol: the checkpoint's projection head / classifier is dropped; the ResNet-18 backbone
is frozen (no gradients and eval mode, so BatchNorm statistics stay put); a new head
(--head_layers 1: one linear layer, the standard protocol; 2: two stacked linear layers, as the
original README describes) is trained on the train split of --dataset and the test split is
evaluated every epoch for reporting only (nothing is chosen by it; --val_split holds out part of
train for choosing epochs or hyperparameters). The preprocessing comes from the checkpoint:
images are resized to its image size and normalised with its mean/std. Features are computed
once and the head trains on them in memory (--augment: recomputed each epoch with crop + flip).
Before the head, features are standardised per dimension with fixed train-split statistics
(--feature_norm standardize: a BatchNorm without affine parameters, frozen; the classifier stays
linear) so one lr suits every checkpoint. Afterwards the backbone is checked bit-identical to the
checkpoint; the run fails otherwise.

Defaults come from --recipe's probe (utils/recipes.py), the same for every checkpoint type:
  tuned (and original): Adam lr 1e-3, batch 1000, 500 epochs, cosine to 0 stepped per
  iteration, weight decay 5e-6, standardised features, head initialised at zero.
--probe_optimizer sgd, --schedule two-stage, --batch_size, --test_learning_rate, --test_final_lr
reproduce the original's probes (docs/recipes.md); each flag overrides the recipe.

--solver lbfgs (opt-in) replaces the minibatch schedule by a convex probe with no lr: multinomial
logistic regression on the cached features, mean cross-entropy + l2 * ||W||^2 minimised by
L-BFGS (to convergence or --lbfgs_max_iter); l2 is chosen among --l2 values on a validation
split (--val_split, 0.1 unless given; never the test split), then the head is refit on train +
val. Under a label budget (below) l2 is chosen by stratified cross-validation inside the labelled
subset instead, and the head is refit on that subset alone. One linear layer.

--finetune trains the whole network on augmented images (what the original actually measured).
Its outputs are named fine-tune everywhere (finetune.json, finetune_curves.png, a default run
folder finetune-<dataset>) and are never linear results.

Few labels (docs/label-efficiency.md): --label_fraction F or --labels_per_class N trains the probe
(--finetune, --solver lbfgs too) on a class-balanced, seeded subset of the train split, drawn after the
--val_split and never from it, nested across fractions for one seed; the test split is unchanged.
A label budget is a budget: below every label, nothing reads a label outside the subset (the
--val_split images stay out of it, unlabelled: no validation curve, no choice, no fit uses them), and
eval.json's `labels_used` (distinct train-split images whose labels were read) equals `num_labelled`.
With --finetune it selects the SimCLR paper's semi-supervised fine-tune (utils/recipes.py "finetune":
Nesterov SGD 0.05 x B/256, batch 256, no weight decay, 60 epochs up to 1 % of the labels, 30 above,
random resized crop + flip). --feature_cache DIR keeps the backbone's features of the whole train
and test splits there, so another fraction of the same checkpoint reuses them (no network pass).

--eval_views K also scores the probe on K seeded SimCLR views of every test image, and --knn reports
kNN accuracy (k=10 uniform, k=200 weighted) beside the probe (docs/measures.md).

Outputs in --run_dir (default: eval-<dataset> beside the checkpoint): eval.json, eval_curves.png,
eval.log; the last printed line is `test loss 1.2345, test accuracy 67.89%`. eval.json's `runtime` records the
CPU threads (--threads) and determinism (--deterministic) it ran with (docs/reproducibility.md).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import build_backbone, build_probe_head
from models.resnet import FEATURE_DIM
from utils.checkpoint import check_finite_weights, load_checkpoint, load_state_strict, strip_prefixes
from utils.cli import (BY_TYPE, ArgumentParser, HelpFormatter, common_parser, finite_float, fraction,
                       non_negative_float, positive_float, positive_int, reproducibility_parser)
from utils.data.registry import DATASET_CHOICES, canonical_dataset
from utils.data.datasets import indices_sha256
from utils.data.labels import describe_labels, label_counts
from utils.errors import UserError, run_cli
from utils.augment import BatchSimCLRAugment, SimCLRViewSpec
from utils.eval.feature_cache import cached_features
from utils.eval.features import FEATURE_PRECISIONS
from utils.eval.neighbours import plot_neighbours
from utils.eval.lbfgs_probe import DEFAULT_L2_GRID, DEFAULT_MAX_ITER, DEFAULT_VAL_SPLIT
from utils.eval.measures import check_measure_args, evaluate_measures, measure_lines, measures_parser
from utils.eval.probe import (FEATURE_NORMS, FINETUNE, LINEAR, OPTIMIZERS, SCHEDULES, Preprocess, ProbeConfig,
                              freeze_backbone, is_label_budget, load_probe_data, log_epoch, make_config, run_finetune,
                              run_linear_probe)
from utils.io import atomic_write_json
from utils.methods import METHODS
from utils.plotting import plot_panels
from utils.runtime import LOG, resolve_device, run_settings, runtime_info, seed_everything, setup_logging
from utils.recipes import DEFAULT_RECIPE, RECIPE_NAMES, finetune_epochs, recipe, recipe_help, scaled_lr
from utils.train.rundir import run_dir_exists

EVAL_DATASETS = DATASET_CHOICES  # every dataset has labelled train and test splits
TRAIN_TYPE_ALIASES = {"selfsupervised": "simclr"}
PROBE = ("probe",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__, formatter_class=HelpFormatter,
                       parents=[common_parser(), measures_parser(), reproducibility_parser()])
    by_type = BY_TYPE
    g = p.add_argument_group("evaluation")
    g.add_argument("--model_path", required=True, help="checkpoint written by train.py (final.pth, last.pth, ...)")
    g.add_argument("--dataset", default="cifar100", choices=EVAL_DATASETS,
                   help="evaluation data (imagenet = Tiny-ImageNet)")
    g.add_argument("--recipe", default=DEFAULT_RECIPE, choices=RECIPE_NAMES,
                   help="named probe values for every flag below that is not given (utils/recipes.py)")
    g.add_argument("--test_num_epochs", type=positive_int, default=None,
                   help="epochs of head training" + recipe_help("epochs", PROBE) + by_type)
    g.add_argument("--batch_size", type=positive_int, default=None,
                   help="head training batch size" + recipe_help("batch_size", PROBE) + by_type)
    g.add_argument("--test_learning_rate", "--learning_rate", dest="test_learning_rate", type=positive_float,
                   default=None,
                   help="initial lr (with --schedule two-stage: stage 1, stage 2 a tenth)"
                   + recipe_help("lr", PROBE) + by_type)
    g.add_argument("--test_final_lr", type=non_negative_float, default=None,
                   help="--schedule cosine: the lr at the last step" + recipe_help("final_lr", PROBE) + by_type)
    g.add_argument("--probe_optimizer", default=None, choices=list(OPTIMIZERS),
                   help="the head's optimizer (SGD with momentum 0.9)" + recipe_help("optimizer", PROBE) + by_type)
    g.add_argument("--schedule", default=None, choices=list(SCHEDULES),
                   help="cosine over all epochs, or the original's two SGD stages (lr, then lr/10)"
                   + recipe_help("schedule", PROBE) + by_type)
    g.add_argument("--weight_decay", type=non_negative_float, default=None,
                   help="weight decay on the head" + recipe_help("weight_decay", PROBE) + by_type)
    g.add_argument("--head_layers", type=int, default=1, choices=[1, 2],
                   help="1: one linear layer (standard); 2: two stacked linear layers (the original README)")
    g.add_argument("--feature_norm", default=None, choices=list(FEATURE_NORMS),
                   help="standardize: fixed per-dimension (h - mean) / std from the train features in front of the "
                        "head (no trainable parameters; still linear); none: raw features"
                   + recipe_help("feature_norm", PROBE) + by_type)
    g.add_argument("--feature_precision", default="fp32", choices=list(FEATURE_PRECISIONS),
                   help="precision of the backbone's feature pass: fp32 (autocast and TF32 off, so GPU and CPU "
                        "probes see the same features) or bf16 (autocast on a GPU with native bf16 only; faster, "
                        "rounded features); recorded in eval.json")
    g.add_argument("--augment", action="store_true",
                   help="recompute train features every epoch with random crop + flip (slower)")
    g.add_argument("--val_split", type=finite_float, default=None,
                   help="fraction of the train split held out as validation [0: none; 0.1 with --solver lbfgs]"
                   + by_type)
    g.add_argument("--solver", default="sgd", choices=["sgd", "lbfgs"],
                   help="sgd: minibatch training of the head (stochastic gradients, by --probe_optimizer: the "
                        "recipe's Adam, or SGD); lbfgs: convex logistic-regression probe, no lr, "
                        "l2 chosen on the val split, refit on train + val (under a label budget: by cross-validation inside the "
                        "labelled subset, refit on it alone) (--test_num_epochs, --batch_size, "
                        "--test_learning_rate, --schedule do not apply)")
    g.add_argument("--l2", type=finite_float, nargs="+", default=list(DEFAULT_L2_GRID),
                   help="--solver lbfgs: l2 penalty values on the head's weight to choose among (on the val split; under a label "
                        "budget by cross-validation inside the labelled subset)")
    g.add_argument("--lbfgs_max_iter", type=positive_int, default=DEFAULT_MAX_ITER,
                   help="--solver lbfgs: most L-BFGS iterations per fit (each fit stops earlier at convergence)")
    g.add_argument("--finetune", action="store_true",
                   help="train the WHOLE network instead (fine-tuning, not linear evaluation; outputs say so)")
    add_label_flags(g, by_type)
    g.add_argument("--train_type", default=None, choices=[*METHODS, "selfsupervised"],
                   help="optional: the checkpoint says what it is; a disagreement is only warned about")
    g.add_argument("--train_dataset", default=None, choices=DATASET_CHOICES,
                   help="optional: pretraining dataset, checked against the checkpoint (warning only)")
    g.add_argument("--run_dir", default=None,
                   help="output folder [eval-<dataset> beside the checkpoint; finetune-<dataset> with --finetune]"
                   + by_type)
    g.add_argument("--quiet", action="store_true", help="no per-epoch lines (the final line is still printed)")
    args = p.parse_args(argv)
    resolve_args(args)
    return args


def resolve_args(args: argparse.Namespace) -> None:
    """Fill what the recipe and the solver decide; refuse flags that contradict each other (one line each)."""
    args.dataset = canonical_dataset(args.dataset)
    args.probe = recipe(args.recipe, "probe")
    if args.feature_norm is None:
        args.feature_norm = args.probe["feature_norm"]
    if args.train_type is not None:
        args.train_type = TRAIN_TYPE_ALIASES.get(args.train_type, args.train_type)
    if args.val_split is None:
        args.val_split = DEFAULT_VAL_SPLIT if args.solver == "lbfgs" else 0.0
    if not 0 <= args.val_split < 1:
        raise UserError(f"--val_split must be in [0, 1), got {args.val_split}")
    if args.test_final_lr is not None and (args.schedule or args.probe["schedule"]) != "cosine":
        raise UserError("--test_final_lr is the cosine schedule's floor; --schedule two-stage runs each stage "
                        "to 0: drop it or give --schedule cosine")
    if args.solver == "lbfgs":
        for flag, bad in (("--finetune", args.finetune), ("--augment", args.augment),
                          ("--head_layers 2", args.head_layers != 1)):
            if bad:
                raise UserError(f"--solver lbfgs is a linear probe on cached features with one linear layer; "
                                f"it does not combine with {flag}")
        if any(v < 0 for v in args.l2):
            raise UserError(f"--l2 values must be >= 0, got {args.l2}")
        if args.val_split == 0 and len(args.l2) > 1 and not is_label_budget(label_subset_request(args)):
            raise UserError(f"--solver lbfgs chooses among {len(args.l2)} --l2 values on a validation split: give "
                            "--val_split > 0 or a single --l2 (the test split is never used to choose)")


def add_label_flags(g, by_type: str) -> None:
    """The few-label axis (docs/label-efficiency.md): which labelled subset, and the feature cache."""
    outer, g = g, g.add_mutually_exclusive_group()  # one line, exit 2: "not allowed with argument ..."
    g.add_argument("--label_fraction", type=fraction, default=None,
                   help="train on this fraction of the train split's labels: a class-balanced, seeded subset (the "
                        "same count per class, at least one), drawn after --val_split; nested across fractions "
                        "[1: every label]" + by_type)
    g.add_argument("--labels_per_class", type=positive_int, default=None,
                   help="train on this many labels per class instead (the same subset rule; not with "
                        "--label_fraction)")
    outer.add_argument("--feature_cache", default=None,
                   help="folder for the backbone's features of the whole train and test splits, keyed by the "
                        "checkpoint's sha256 and the preprocessing: a second call (another fraction) reuses them "
                        "[none: no cache]" + by_type)


def label_subset_request(args: argparse.Namespace) -> dict | None:
    """{"fraction": F} or {"per_class": N} for load_probe_data; None: every label."""
    if args.label_fraction is not None:
        return {"fraction": args.label_fraction}
    return {"per_class": args.labels_per_class} if args.labels_per_class is not None else None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def describe_checkpoint(ckpt: dict, path: Path) -> dict:
    """What test.py needs from a checkpoint, checked for presence (one-line UserError otherwise)."""
    try:
        model, data = ckpt["model"], ckpt["data"]
        info = {"train_type": model["train_type"], "stem": model["stem"], "pretrained": bool(model.get("pretrained")),
                "feature_dim": int(model.get("feature_dim") or FEATURE_DIM), "train_dataset": data["dataset"],
                "image_size": int(data["image_size"]), "mean": [float(v) for v in data["mean"]],
                "std": [float(v) for v in data["std"]], "epoch": ckpt.get("epoch"),
                "finished": ckpt.get("finished"), "data_scale": data.get("data_scale")}
        if not isinstance(ckpt.get("backbone"), dict):
            raise KeyError("backbone")
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path} lacks what linear evaluation needs ({type(exc).__name__}: {exc})") from None
    if info["finished"] is False and _last_of_a_finished_run(ckpt):
        info["finished"] = True
    # torchvision's ImageNet weights saved as they are (train.py --epochs 0 --pretrained true).
    info["imagenet_weights"] = info["pretrained"] and (
        info["epoch"] == 0 or str(info["train_dataset"]).startswith("imagenet"))
    return info


def _last_of_a_finished_run(ckpt: dict) -> bool:
    """train.py writes every last.pth with finished=False, the one after the final epoch too: that one
    is complete (all of --epochs done, no partial epoch) and holds the same weights as final.pth."""
    config, state = ckpt.get("config"), ckpt.get("train_state")
    if not isinstance(config, dict) or not isinstance(state, dict):
        return False
    epochs = config.get("epochs")
    return (isinstance(epochs, int) and epochs > 0 and ckpt.get("epoch") == epochs
            and state.get("epoch") == epochs and not state.get("step_in_epoch") and not state.get("partial"))


def warn_flag_mismatches(args: argparse.Namespace, info: dict) -> None:
    """--train_type / --train_dataset are optional; the checkpoint wins, with a warning naming its value."""
    if args.train_type is not None and args.train_type != info["train_type"]:
        LOG.warning("warning: --train_type %s disagrees with the checkpoint, which is a %s checkpoint; using %s",
                    args.train_type, info["train_type"], info["train_type"])
    if args.train_dataset is not None:
        said, has = args.train_dataset, info["train_dataset"]
        same = canonical_dataset(said) == canonical_dataset(has) or (
            said == "imagenet" and (has.startswith("imagenet") or info["imagenet_weights"]))
        if not same:
            LOG.warning("warning: --train_dataset %s disagrees with the checkpoint, which was pretrained on %s; "
                        "using the checkpoint's preprocessing", said, has)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_measure_args(args)
    t_start = time.perf_counter()
    protocol = FINETUNE if args.finetune else LINEAR
    stem_name = "finetune" if args.finetune else "eval"
    model_path = Path(args.model_path)
    ckpt = load_checkpoint(model_path)  # one-line UserError for missing/empty/corrupt/unsafe files
    sha = file_sha256(model_path)
    info = describe_checkpoint(ckpt, model_path)
    check_finite_weights(ckpt, model_path, parts=("backbone",))  # the head is dropped
    run_dir = Path(args.run_dir) if args.run_dir else model_path.resolve().parent / f"{stem_name}-{args.dataset}"
    new_dir = not run_dir_exists(run_dir)  # a name over the file system's limit: one line
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create run directory {run_dir}: {exc.strerror or exc}") from exc
    setup_logging(run_dir / f"{stem_name}.log", quiet=args.quiet)
    try:
        with run_settings(args.threads, args.deterministic):
            return _evaluate(args, protocol, stem_name, model_path, ckpt, sha, info, run_dir, t_start, argv)
    except UserError:
        # Stopped on bad input (missing data, no GPU ...) before any result: leave no empty folder behind.
        if new_dir and not (run_dir / f"{stem_name}.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        for handler in list(LOG.handlers):  # close eval.log: main may run many times in one process
            handler.flush()
            if isinstance(handler, logging.FileHandler):
                LOG.removeHandler(handler)
                handler.close()


def _evaluate(args, protocol, stem_name, model_path, ckpt, sha, info, run_dir, t_start, argv) -> dict:
    warn_flag_mismatches(args, info)
    if info["finished"] is False:
        LOG.warning("warning: %s is from an unfinished run (epoch %s)", model_path, info["epoch"])

    device = resolve_device(args.device)
    seed_everything(args.seed)
    backbone = build_backbone(info["stem"])  # the checkpoint's head (projection or classifier) is dropped
    reference = strip_prefixes(ckpt["backbone"])
    load_state_strict(backbone, reference, "backbone")
    backbone = backbone.to(device, memory_format=torch.channels_last)

    preprocess = Preprocess(info["image_size"], tuple(info["mean"]), tuple(info["std"]))
    data = load_probe_data(args.dataset, args.data_dir, info["image_size"], args.val_split, args.seed,
                           label_subset_request(args))
    config = probe_config(args, data)
    head = build_probe_head(info["feature_dim"], data.num_classes, layers=args.head_layers)
    label = "fine-tune" if args.finetune else "linear probe"
    lbfgs = {"l2_grid": args.l2, "max_iter": args.lbfgs_max_iter} if args.solver == "lbfgs" else None
    how = (f"L-BFGS, l2 among {args.l2}" if lbfgs else f"{config.schedule} schedule, batch {config.batch_size}")
    LOG.info("%s of %s (%s, %s stem) on %s: %d train / %d val / %d test images, %d classes, %s px, %s, device %s",
             label, model_path, info["train_type"], info["stem"], args.dataset, len(data.train_labels),
             data.sizes()["num_val"], len(data.test_labels), data.num_classes, info["image_size"], how, device)
    on_epoch = log_lbfgs_round if lbfgs else log_epoch(config.epochs, label)
    LOG.info("labels: %s", describe_labels(args.label_fraction, args.labels_per_class,
                                           label_counts(data.train_labels, data.num_classes)))
    if args.finetune:
        result = run_finetune(backbone, head, data, config, preprocess, device, seed=args.seed, on_epoch=on_epoch,
                              augmenter=semi_supervised_finetune(args, head, preprocess),
                              feature_precision=args.feature_precision)
    else:
        cached = None
        if args.feature_cache and not args.augment:
            freeze_backbone(backbone)
            cached = cached_features(backbone, data, preprocess, device, sha, args.feature_cache, args.dataset,
                                     precision=args.feature_precision)
            LOG.info("features %s %s (%.2f s)", "read from" if cached["hit"] else "computed and stored in",
                     cached["path"], cached["seconds"])
        result = run_linear_probe(backbone, head, data, config, preprocess, device, augment=args.augment,
                                  seed=args.seed, reference_state=reference, feature_norm=args.feature_norm,
                                  on_epoch=on_epoch, lbfgs=lbfgs, precomputed=cached, knn10=args.knn,
                                  feature_precision=args.feature_precision)
        if cached is not None:
            result.extra["feature_cache"] = {"path": cached["path"], "hit": cached["hit"]}

    report = build_report(args, protocol, model_path, sha, info, data, config, result, device,
                          time.perf_counter() - t_start, argv)
    report.update(evaluate_measures(args, ckpt, backbone, reference, result, data, preprocess, device))
    if "neighbours" in report:
        draw_neighbours(run_dir / "neighbours.png", report, data, model_path)
    atomic_write_json(run_dir / f"{stem_name}.json", report)
    plot_curves(run_dir / f"{stem_name}_curves.png", report, model_path)
    prefix = "fine-tune " if args.finetune else ""
    LOG.info("wrote %s", run_dir / f"{stem_name}.json")
    for handler in LOG.handlers:
        handler.flush()  # log lines first: the result must be the last line printed
    for line in measure_lines(report):
        print(line, flush=True)
    print(f"{prefix}test loss {report['test_loss']:.4f}, test accuracy {report['test_accuracy']:.2f}%", flush=True)
    return report


def probe_config(args: argparse.Namespace, data) -> ProbeConfig:
    """The head's (or, with --finetune, the network's) schedule: the recipe's probe, or with --finetune and a
    label subset the semi-supervised fine-tune (epochs by label fraction, lr scaled to the batch); flags win."""
    values = dict(args.probe)
    if args.finetune and label_subset_request(args):
        values = recipe(args.recipe, "finetune")
        share = args.label_fraction
        if share is None:  # labels per class: the share of the candidates (train split less the held-out images)
            held_out = data.sizes()["num_val"] + data.sizes()["num_held_out"]
            share = len(data.train_labels) / (len(data.all_train_labels) - held_out)
        values["epochs"] = finetune_epochs(values, share)
        values["lr"] = scaled_lr(values, args.batch_size or values["batch_size"])
    if args.test_final_lr is not None:
        values["final_lr"] = args.test_final_lr
    return make_config(values, args.test_num_epochs, args.batch_size, args.test_learning_rate, args.schedule,
                       args.weight_decay, args.probe_optimizer)


def semi_supervised_finetune(args: argparse.Namespace, head, preprocess):
    """With --finetune and a label subset: the recipe's train augmentation (random resized crop + flip, no
    colour) and its head init (zeros); None (run_finetune's padded crop + flip) otherwise."""
    if not (args.finetune and label_subset_request(args)):
        return None
    values = recipe(args.recipe, "finetune")
    if values["head_init"] == "zeros" and isinstance(head, torch.nn.Linear):  # two layers at zero would not learn
        for p in head.parameters():
            torch.nn.init.zeros_(p)
    spec = SimCLRViewSpec(crop_min_scale=values["crop_min_scale"], hflip_prob=values["hflip_prob"], jitter_prob=0.0,
                          gray_prob=0.0, blur_prob=0.0)
    return BatchSimCLRAugment(preprocess.image_size, preprocess.mean, preprocess.std, spec)


def log_lbfgs_round(row: dict) -> None:
    LOG.info("L-BFGS probe, iteration %d | train loss %.4f acc %.2f%% | test loss %.4f acc %.2f%%",
             row["iterations"], row["train_loss"], row["train_acc"], row["test_loss"], row["test_acc"])


def lbfgs_selection(lbfgs: dict) -> dict:
    """eval.json's `selection` sentence for the L-BFGS probe, and the chosen l2's score: on the validation split
    (val_loss / val_accuracy) or, under a label budget, by cross-validation inside it (cv_loss / cv_accuracy)."""
    never = "; the test split is never used to choose anything"
    if lbfgs["selection"]:
        out = {"selection": f"l2 = {lbfgs['l2']:g} chosen by {lbfgs['chosen_by']} among {lbfgs['l2_grid']}, "
                            f"then refit on {lbfgs['fit_on']} ({lbfgs['fit_size']:,} labels){never}"}
    elif "default_reason" in lbfgs:
        out = {"selection": f"l2 = {lbfgs['l2']:g} by default: {lbfgs['default_reason']}{never}"}
    else:
        out = {"selection": "none: a single l2; the test split is never used to choose"}
    chosen = next((row for row in lbfgs["selection"] if row["l2"] == lbfgs["l2"]), None)
    if chosen is not None and "val_acc" in chosen:  # the chosen l2's fit on train alone, scored on val
        out.update(val_loss=chosen["val_loss"], val_accuracy=chosen["val_acc"])
    elif chosen is not None:  # its cross-validation score on the labelled subset (not a validation split)
        out.update(cv_loss=chosen["cv_loss"], cv_accuracy=chosen["cv_acc"])
    return out


def label_report(args: argparse.Namespace, data) -> dict:
    """The few-label fields of eval.json: the subset, and `labels_used`, the distinct train-split images whose labels
    were read for choosing and fitting together (= num_labelled under a label budget)."""
    counts = label_counts(data.train_labels, data.num_classes)
    read = data.labels_read_index()
    return {"label_fraction": 1.0 if args.label_fraction is None else args.label_fraction,
            "labels_per_class": args.labels_per_class, "label_counts": counts, "num_labelled": sum(counts),
            "labels_used": int(len(read)), "labels_used_sha256": indices_sha256(read), "label_budget": bool(data.budget),
            "labels_read": ("the labelled subset only: choosing, stopping and fitting read no other label; the "
                            f"{data.sizes()['num_held_out']:,} --val_split images stay out of it, unlabelled"
                            if data.budget else "the probe's train split and its validation split (every label)"),
            "labelled_subset_sha256": indices_sha256(data.train_index),
            "labels": describe_labels(args.label_fraction, args.labels_per_class, counts)}


def build_report(args, protocol, model_path, sha, info, data, config, result, device, seconds_total, argv) -> dict:
    """The eval.json / finetune.json content."""
    hist = result.history
    last = hist[-1]
    extra = dict(result.extra)
    col = {k: [row.get(k) for row in hist] for k in hist[0]}
    report = {
        "protocol": protocol,
        "what": ("linear evaluation: frozen backbone (no gradients, eval mode), new head trained on its features"
                 if protocol == LINEAR else "fine-tuning: the WHOLE network trained; not a linear-probe result"),
        "test_loss": last["test_loss"], "test_accuracy": last["test_acc"], "test_images_evaluated": last["test_count"],
        "reported_epoch": last["epoch"],
        "selection": "none: the final epoch is reported; the test split is never used to choose anything",
    }
    lbfgs = extra.pop("lbfgs", None)
    if lbfgs is not None:
        report.update(lbfgs_selection(lbfgs))
    if "val_loss" in last:
        best = max(hist, key=lambda r: r["val_acc"])
        report.update(val_loss=last["val_loss"], val_accuracy=last["val_acc"], best_val_epoch=best["epoch"],
                      best_val_accuracy=best["val_acc"])
    report["history"] = {
        "epoch": col["epoch"], "stage": col["stage"], "lr_first": col["lr_first"], "lr_last": col["lr_last"],
        "train_loss": col["train_loss"], "train_accuracy": col["train_acc"],
        "test_loss": col["test_loss"], "test_accuracy": col["test_acc"],
        **({"val_loss": col["val_loss"], "val_accuracy": col["val_acc"]} if "val_loss" in last else {}),
        **({"iterations": col["iterations"]} if "iterations" in last else {}),
    }
    solver = ({"optimizer": "L-BFGS (strong-Wolfe line search), full batch, from zeros",
               "objective": "mean cross-entropy + l2 * ||W||^2 (bias not penalised)", "lbfgs": lbfgs}
              if lbfgs is not None else config.to_dict())  # no SGD and no schedule with L-BFGS
    semi = args.finetune and label_subset_request(args) is not None  # the semi-supervised fine-tune recipe
    report["hyperparameters"] = {
        **solver, "head": f"{args.head_layers} linear layer(s)", "head_layers": args.head_layers,
        "trained": "head only" if protocol == LINEAR else "backbone and head",
        "train_features": ("recomputed every epoch with random crop + flip" if protocol == FINETUNE or args.augment
                           else "computed once (evaluation transform) and cached"),
        "augment": bool(args.augment or protocol == FINETUNE), "seed": args.seed, "val_split": args.val_split,
        "loss": "cross-entropy", "feature_norm": extra.pop("feature_norm", "none"), "solver": args.solver,
        "feature_precision": extra.pop("feature_precision", "fp32"),
        "recipe": args.recipe + (" (finetune: semi-supervised)" if semi else ""),
        "recipe_source": recipe(args.recipe, "finetune")["source"] if semi else args.probe["source"],
        "head_init": "zeros" if args.head_layers == 1 and (protocol == LINEAR or label_subset_request(args)) else "torch default",
    }
    size, native = info["image_size"], data.native_size
    resize = f"resize {native} -> {size} px (bilinear, antialias), " if native != size else ""
    report["preprocessing"] = {
        "source": "checkpoint", "image_size": info["image_size"], "mean": info["mean"], "std": info["std"],
        "stem": info["stem"], "native_image_size": data.native_size,
        "policy": f"{resize}scale to [0, 1], normalise with the checkpoint's mean/std",
    }
    report["checkpoint"] = {"path": str(model_path.resolve()), "sha256": sha, **{k: info[k] for k in (
        "train_type", "train_dataset", "stem", "pretrained", "imagenet_weights", "epoch", "finished", "data_scale")}}
    report["dataset"] = {"name": args.dataset, **data.sizes()}
    report.update(label_report(args, data))
    report["seconds"] = {"features": result.seconds_features, "training": result.seconds_training,
                         "total": seconds_total}
    if protocol == FINETUNE:
        report["seconds"]["features_note"] = "upload of the images to the device; features are recomputed each epoch"
    report["device"] = str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    report.update(extra)
    report["command"] = ["test.py", *(sys.argv[1:] if argv is None else argv)]
    report["torch"] = torch.__version__
    report["runtime"] = runtime_info()  # threads, determinism: the evaluation's numbers depend on them
    return report


def draw_neighbours(path: Path, report: dict, data, model_path: Path) -> None:
    """neighbours.png (--knn): the fixed test queries and their nearest train images by the backbone's features."""
    found = report["neighbours"]
    queries, rows = found["queries"], np.asarray(found["train_rows"])
    plot_neighbours(path, data.test_images[queries], data.train_images[rows], data.test_labels[queries],
                    data.train_labels[rows], data.classes,
                    f"{backbone_name(report['checkpoint'])} ({model_path.name}): nearest {report['dataset']['name']} "
                    f"train images by cosine of its features (green: same label as the query)")
    found["picture"] = path.name


def backbone_name(checkpoint: dict) -> str:
    """'random init', 'ImageNet weights' or '<train type> backbone, epoch N': what a picture's title calls it."""
    if not checkpoint.get("epoch"):
        return "ImageNet weights" if checkpoint.get("imagenet_weights") else "random init"
    return f"{checkpoint['train_type']} backbone, epoch {checkpoint['epoch']}"


def plot_curves(path: Path, report: dict, model_path: Path) -> None:
    """The four curves the original looked at: train loss / accuracy, test loss / accuracy (val if any)."""
    h = report["history"]
    name = "fine-tune" if report["protocol"] == FINETUNE else "probe"
    test_series = lambda key: {"test": h[f"test_{key}"], **({"val": h[f"val_{key}"]} if f"val_{key}" in h else {})}
    panels = [(f"{name} train loss", {"train": h["train_loss"]}),
              (f"{name} train accuracy (%)", {"train": h["train_accuracy"]}),
              ("test loss" + (" (and val)" if "val_loss" in h else ""), test_series("loss")),
              ("test accuracy (%)" + (" (and val)" if "val_loss" in h else ""), test_series("accuracy"))]
    what = ("Fine-tune (whole network, NOT linear)" if report["protocol"] == FINETUNE
            else f"Linear probe (frozen backbone, {report['hyperparameters']['head_layers']}-layer head)")
    if "iterations" in h:
        what += f", L-BFGS, l2 {report['hyperparameters']['lbfgs']['l2']:g}"
    x, xlabel = (h["iterations"], "L-BFGS iteration") if "iterations" in h else (h["epoch"], "epoch")
    plot_panels(path, x, panels, xlabel=xlabel,
                title=f"{what}: {model_path.name} on {report['dataset']['name']}, {report['labels']}")


if __name__ == "__main__":
    run_cli(main)
