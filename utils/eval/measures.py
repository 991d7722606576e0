"""test.py's measures beside the probe: --eval_views (the probe on augmented test views) and --knn.

Its flags come as an argparse parent (`measures_parser`), its results as extra eval.json keys
(`evaluate_measures`) and printed lines (`measure_lines`), so test.py only hooks them in.
With neither flag nothing is computed and eval.json is as before. Definitions: docs/measures.md.

    python test.py --model_path R/final.pth --dataset synthetic --eval_views 2 --knn
"""
from __future__ import annotations

import argparse
import time

import torch

from utils.cli import jitter_strength, non_negative_int, probability, fraction, seed
from utils.errors import UserError
from utils.eval.probe import Preprocess, verify_backbone_unchanged
from utils.eval.views import EVAL_VIEW_SEED, resolve_view_spec, score_augmented_views
from utils.recipes import recipe


def measures_parser() -> argparse.ArgumentParser:
    """The flags, as a parent parser (add_help=False) for test.py."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("measures beside the probe (docs/measures.md)")
    g.add_argument("--eval_views", type=non_negative_int, default=0,
                   help="also score the probe (fit on clean train features as always) on K seeded SimCLR views of "
                        "every test image: eval.json augmented_test_accuracy / augmented_test_loss (0: off)")
    g.add_argument("--eval_view_seed", type=seed, default=EVAL_VIEW_SEED,
                   help="seed of the augmented test views (not --seed: the views stay the same across runs); "
                        "view k of image i depends only on this seed, k and i")
    views = "--eval_views: the views' %s [the checkpoint's SimCLR value, else --recipe's]%s"
    g.add_argument("--eval_crop_min_scale", type=fraction, default=None,
                   help=views % ("RandomResizedCrop scale (s, 1)", "%(default).0s"))
    g.add_argument("--eval_hflip_prob", type=probability, default=None,
                   help=views % ("horizontal flip probability", "%(default).0s"))
    g.add_argument("--eval_jitter_strength", type=jitter_strength, default=None,
                   help=views % ("colour jitter strength s (0.8 s, 0.8 s, 0.8 s, 0.2 s)", "%(default).0s"))
    g.add_argument("--eval_jitter_prob", type=probability, default=None,
                   help=views % ("colour jitter probability", "%(default).0s"))
    g.add_argument("--eval_gray_prob", type=probability, default=None,
                   help=views % ("grayscale probability", "%(default).0s"))
    g.add_argument("--eval_blur_prob", type=probability, default=None,
                   help=views % ("Gaussian blur probability", "%(default).0s"))
    g.add_argument("--knn", action="store_true",
                   help="also report kNN accuracy on the probe's train -> test features, k=10 uniform votes "
                        "(knn10_accuracy, dkobak/simclr-cifar10's setting) and k=200 weighted t=0.1 "
                        "(knn200_accuracy); the probe runs as always")
    return p


def check_measure_args(args: argparse.Namespace) -> None:
    """Flag combinations these measures cannot serve: one-line UserError."""
    for flag, asked in (("--eval_views", args.eval_views > 0), ("--knn", args.knn)):
        if asked and args.finetune:
            raise UserError(f"{flag} scores the linear probe's features; it does not combine with --finetune")
    if args.knn and args.augment:
        raise UserError("--knn needs the cached clean train features, which --augment does not keep; drop one")


def view_overrides(args: argparse.Namespace) -> dict:
    """The --eval_* flags given, as SimCLRViewSpec fields (None: not given)."""
    s = args.eval_jitter_strength
    return {"crop_min_scale": args.eval_crop_min_scale, "hflip_prob": args.eval_hflip_prob,
            "jitter": None if s is None else [0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s],
            "jitter_prob": args.eval_jitter_prob, "gray_prob": args.eval_gray_prob, "blur_prob": args.eval_blur_prob}


def evaluate_measures(args: argparse.Namespace, ckpt: dict, backbone: torch.nn.Module, reference: dict,
                      result, data, preprocess: Preprocess, device: torch.device) -> dict:
    """The extra eval.json keys: augmented_test_* (--eval_views K > 0) and knn*_accuracy (--knn); {} without."""
    out: dict = {}
    if args.knn:
        knn200, knn10 = result.extra["knn"], result.extra["knn10"]
        out.update(knn10_accuracy=knn10["test_acc"], knn200_accuracy=knn200["test_acc"])
    if args.eval_views > 0:
        try:
            spec, source = resolve_view_spec(ckpt.get("config"), recipe(args.recipe, "simclr"), view_overrides(args))
        except ValueError as exc:
            raise UserError(f"--eval_views: {exc}") from None
        t0 = time.perf_counter()
        scores = score_augmented_views(backbone, result.head, data.test_images, data.test_labels, preprocess, spec,
                                       args.eval_views, args.eval_view_seed, device)
        verify_backbone_unchanged(backbone, reference)  # inference only; checked all the same
        out.update(augmented_test_accuracy=scores["acc"], augmented_test_loss=scores["loss"])
        out["augmented_test"] = {
            "views_per_image": args.eval_views, "views_scored": scores["count"], "seed": args.eval_view_seed,
            "per_view_accuracy": scores["per_view_acc"],
            "spec": {name: getattr(spec, name) for name in ("crop_min_scale", "crop_ratio", "hflip_prob", "jitter",
                                                            "jitter_prob", "gray_prob", "blur_prob", "blur_sigma")},
            "spec_source": source, "seconds": time.perf_counter() - t0,
            "what": "the probe fit on clean train features, scored on seeded SimCLR views of every test image "
                    "(view k of image i seeded by (seed, k, i): the same views for every checkpoint of this spec)"}
    return out


def measure_lines(report: dict) -> list[str]:
    """The printed lines of the measures present in `report` (before test.py's final line)."""
    lines = []
    if "knn10_accuracy" in report:
        lines.append(f"kNN accuracy: k=10 uniform {report['knn10_accuracy']:.2f}%, "
                     f"k=200 weighted {report['knn200_accuracy']:.2f}%")
    if "augmented_test_accuracy" in report:
        lines.append(f"augmented test views ({report['augmented_test']['views_per_image']} per image): loss "
                     f"{report['augmented_test_loss']:.4f}, accuracy {report['augmented_test_accuracy']:.2f}%")
    return lines
