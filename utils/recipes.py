"""Named recipes: every value a pretraining run or a probe sets, beside the source it comes from.

    from utils.recipes import resolve
    values = resolve("tuned", "simclr")           # a plain dict; lr already scaled to the batch
    python train.py --recipe original              # the course project's values, bugs fixed

A recipe is data: for each of `simclr`, `supervised`, `probe` and `finetune` (the semi-supervised
fine-tune of test.py --finetune with --label_fraction / --labels_per_class) a plain dict of values plus
`source` (repository and commit, or paper and table, and the figure it reported) and `notes`
(every place where this project departs from the source, and why). `train.py`, `test.py` and
`simclr_train.py` take `--recipe NAME`; a flag given on the command line overrides the recipe's
value; `config.json` / `eval.json` record the recipe name and every resolved value.
`tests/test_recipes.py` checks each value against a literal table written from the sources.

The learning rate of a recipe is given at a reference batch (`lr_batch`) and scaled linearly
with the global batch (Goyal et al. 2017): lr = lr_at_ref x batch / lr_batch; `lr_batch: None`
means the lr does not scale. `--learning_rate` sets the absolute lr (no scaling).
"""
from __future__ import annotations

import copy

DEFAULT_RECIPE = "tuned"
PARTS = ("simclr", "supervised", "probe", "finetune", "byol", "mocov2", "simsiam", "barlow_twins", "vicreg")
METHOD_PARTS = ("byol", "mocov2", "simsiam", "barlow_twins", "vicreg")  # the methods beside SimCLR (utils/methods/)

DKOBAK = ("dkobak/simclr-cifar10 @ 44b2500 (simclr-cifar10.py and README): ResNet-18, CIFAR-10, 1000 epochs, "
          "batch 512: kNN (k=10, cosine) 91.4 %, linear on frozen precomputed features 91.7 %; 100 epochs at lr "
          "0.06 x B/256: kNN 83.2 %, linear 85.6 %")
DKOBAK_SHORT = ("dkobak/simclr-cifar10 @ 44b2500, README 'Training ResNet18 for 100 epochs': base lr 0.06 instead of "
                "0.03 (x B/256) is better at 100 epochs, not at 1000 (kNN 83.2 %, linear 85.6 %). lightly-ai/lightly @ "
                "050f5264 (docs/source/getting_started/benchmarks/cifar10_benchmark.py) trains its 200-epoch CIFAR-10 "
                "SimCLR at 0.06 x B/128, twice as high (kNN 84.8 % at batch 512); 500 epochs, where the source "
                "reaches 90 % kNN with its 1000-epoch rule, is where this recipe switches back")
WEIAICUNZAI = ("weiaicunzai/pytorch-cifar100 @ 11d8418 (train.py, utils.py, conf/global_settings.py, README): "
               "ResNet-18, CIFAR-100 from scratch, 200 epochs: top-1 error 24.39 %, i.e. 75.61 % accuracy")
DKOBAK_PROBE = ("dkobak/simclr-cifar10 @ 44b2500, 'linear evaluation on precomputed representations' "
                "(simclr-cifar10.py): the 91.7 % above")
ORIGINAL = ("the course project (its README in ../shared/seed/, summarised in ../shared/ORIGINAL.md): SimCLR "
            "68.96 %, ImageNet weights 80.26 %, supervised from scratch 68.48 % on CIFAR-100, all fine-tuning "
            "numbers (its backbone was never frozen)")
# Both training loaders (utils/data/loaders.py) drop the last partial batch of every epoch; the sources'
# DataLoaders (no drop_last) keep it.
DROP_LAST_SIMCLR = ("the last partial batch of every epoch is dropped: 97 steps an epoch at batch 512 on CIFAR-10, "
                    "where the source runs 98 (its DataLoader keeps the 336-image remainder); every step then has "
                    "the full batch of negatives its lr was scaled for, and a 1-image remainder (no negatives, "
                    "BatchNorm on one sample) cannot occur")
DROP_LAST_SUPERVISED = ("the last partial batch of every epoch is dropped: 390 steps an epoch at batch 128 on "
                        "CIFAR-100, where the source runs 391 (its DataLoader keeps the 80-image remainder); a "
                        "1-image remainder would fail in BatchNorm")
DROP_LAST_ORIGINAL = ("the last partial batch of every epoch is dropped, as in the tuned recipe "
                      "(utils/data/loaders.py); the original README does not say whether its loader kept it")

SIMCLR_SEMI = ("SimCLR (Chen et al. 2020, arXiv:2002.05709), appendix B.5 'Semi-supervised learning via "
               "fine-tuning': Nesterov momentum 0.9, batch 4096, lr 0.8 = 0.05 x B/256, no warmup, no weight "
               "decay, random crop (resized) + left-right flip only, 60 epochs on 1 % of ImageNet's labels and 30 "
               "on 10 %; google-research/simclr @ 383d4143fd8cf7879ae10f1046a9baeb753ff438: model_util.py "
               "(momentum = MomentumOptimizer(use_nesterov=True); lr cosine_decay to 0 over all steps after "
               "warmup), data.py (color_distort only when pretraining), run.py (ft_proj_selector 0: the "
               "projection head is thrown away; zero_init_logits_layer), README 'Semi-supervised learning and "
               "fine-tuning the whole network' (v2: LARS, 60 epochs, weight decay 0, warmup 0): SimCLR ResNet-50 "
               "top-1 48.3 % (1 %) and 65.6 % (10 %) on ImageNet")
# The semi-supervised fine-tune (test.py --finetune with a label fraction): the same in every recipe.
SEMI_FINETUNE = {
    "optimizer": "nesterov", "lr": 0.05, "lr_batch": 256, "momentum": 0.9, "weight_decay": 0.0,
    "schedule": "cosine", "final_lr": 0.0, "warmup_epochs": 0.0,
    "epochs": 60, "epochs_by_label_fraction": [[0.01, 60], [0.1, 30]], "batch_size": 256,
    "crop_min_scale": 0.08, "hflip_prob": 0.5, "color_jitter": False, "head_init": "zeros",
    "proj_layers_kept": 0,
    "source": SIMCLR_SEMI,
    "notes": [
        "batch 256 instead of 4096 (1 % of CIFAR-100 is 450 images after the validation split), the lr scaled "
        "by the paper's own rule 0.05 x B/256",
        "SGD with Nesterov momentum as the paper's B.5 (the repository's v2 README command uses LARS, which "
        "torch does not ship; with Nesterov SGD no LARS trust ratio is needed at batch 256)",
        "epochs: 60 up to 1 % of the labels, 30 above (the paper's two settings; 30 is kept up to 100 %); "
        "with --labels_per_class the fraction is labels / candidate train images",
        "random resized crop (scale 0.08-1, the SimCLR crop) + flip at the checkpoint's image size; no colour "
        "distortion, no blur; one device, so BatchNorm is per device (the source's global BN is moot)",
        "the projection head is dropped (v1: ft_proj_selector 0) and a new linear layer starts at zero "
        "(zero_init_logits_layer)",
    ],
}

# --- The methods beside SimCLR: solo-learn's CIFAR recipes, value by value -------------------------------
# Every value below is read from vturrisi/solo-learn at commit 9187ea39c2c3f43c455ab06664d2b019a9802954:
#   <method>.yaml = scripts/pretrain/cifar/<method>.yaml (byol, mocov2plus, simsiam, barlow, vicreg);
#   base.py = solo/methods/base.py (add_and_assert_specific_cfg defaults), pretrain.py = solo/args/pretrain.py,
#   augmentations/<name>.yaml = scripts/pretrain/cifar/augmentations/<name>.yaml (the yaml's `defaults`).
SOLO = "vturrisi/solo-learn @ 9187ea39"
SOLO_RESULTS = (f"{SOLO}, README 'Results' (ResNet-18, CIFAR stem, 1000 epochs, online linear top-1 on "
                "CIFAR-10 / CIFAR-100): BYOL 92.58 / 70.46, MoCo V2+ 92.94 / 69.89, SimSiam 90.51 / 66.04, Barlow "
                "Twins 92.10 / 70.90, VICReg 92.07 / 68.54")
SOLO_COMMON = {
    "epochs": 1000,               # <method>.yaml max_epochs: 1000
    "batch_size": 256,            # <method>.yaml optimizer.batch_size: 256 (one device: devices [0])
    "lr_batch": 256,              # pretrain.py: lr x batch_size x devices x nodes / 256
    "momentum": 0.9,              # pretrain.py: optimizer.kwargs.momentum default 0.9 (sgd and lars)
    "schedule": "cosine",         # <method>.yaml scheduler.name: warmup_cosine, stepped per step (base.py interval)
    "warmup_epochs": 10.0,        # base.py: scheduler.warmup_epochs default 10
    # 10 of the source's 1000 epochs; a shorter run warms up over at most this share of its steps (train.py
    # make_lr_fn), as the SimCLR paper's 10-epoch warmup of its 100-epoch runs (Chen et al. 2020, appendix B.9),
    # so that a CPU-budget run's lr reaches its peak and decays instead of rising for the whole run
    "warmup_max_fraction": 0.1,
    "min_lr": 0.0,                # base.py: scheduler.min_lr default 0.0
    "hflip_prob": 0.5,            # augmentations/*.yaml horizontal_flip.prob: 0.5
    "jitter_prob": 0.8,           # augmentations/*.yaml color_jitter.prob: 0.8
    "gray_prob": 0.2,             # augmentations/*.yaml grayscale.prob: 0.2
    "normalize": True,            # solo/data/pretrain_dataloader.py: Normalize with the CIFAR mean/std
    "lars_eta": 0.02,             # <method>.yaml optimizer.kwargs.eta: 0.02 (where the optimizer is lars)
    "lars_clip_lr": True,         # <method>.yaml optimizer.kwargs.clip_lr: True; exclude_bias_n_norm: True
}
SOLO_NOTES = [
    "the warmup rises linearly from lr / steps (utils/schedule.py); solo-learn's warmup_cosine starts at "
    "warmup_start_lr 3e-5 (base.py)",
    "no solarization (utils/augment.py has none): BYOL and Barlow Twins use it with p 0.2 on their second view "
    "(augmentations/asymmetric.yaml), VICReg with p 0.1 on both (vicreg.yaml); both views here share one spec",
    "the online linear classifier solo-learn trains beside the method (classifier_lr) is not trained: the "
    "study probes the frozen backbone afterwards (test.py)",
    "one device: no SyncBatchNorm on a CPU (solo-learn sync_batchnorm: True, which only matters with several "
    "devices); BatchNorm statistics are each view's, as in solo-learn (each crop its own forward pass)",
    "mixed precision (solo-learn precision 16-mixed) only where --precision chooses it (fp32 on a CPU)",
]


def _solo(values: dict, notes: list[str]) -> dict:
    return {**SOLO_COMMON, **values, "source": SOLO_RESULTS, "notes": SOLO_NOTES + notes}


METHOD_RECIPES = {
    "byol": _solo({
        "optimizer": "lars", "lr": 1.0,                        # byol.yaml optimizer.name lars, lr 1.0
        "weight_decay": 1e-5,                                  # byol.yaml optimizer.weight_decay 1e-5
        "proj_hidden_dim": 4096, "proj_dim": 256,              # byol.yaml method_kwargs proj_hidden_dim / proj_output_dim
        "pred_hidden_dim": 4096,                               # byol.yaml method_kwargs.pred_hidden_dim
        "tau_base": 0.99, "tau_final": 1.0,                    # byol.yaml momentum.base_tau / final_tau
        "crop_min_scale": 0.08,                                # augmentations/asymmetric.yaml rrc.crop_min_scale
        "jitter": [0.4, 0.4, 0.2, 0.1],                        # asymmetric.yaml brightness, contrast, saturation, hue
        "blur_prob": 0.0,                                      # asymmetric.yaml gaussian_blur.prob 0.0 (both views)
    }, []),
    "mocov2": _solo({
        "optimizer": "sgd", "lr": 0.3,                         # mocov2plus.yaml optimizer.name sgd, lr 0.3
        "weight_decay": 1e-4,                                  # mocov2plus.yaml optimizer.weight_decay 1e-4
        "proj_hidden_dim": 2048, "proj_dim": 256,              # mocov2plus.yaml method_kwargs
        "queue_size": 32768, "temperature": 0.2,               # mocov2plus.yaml method_kwargs.queue_size / temperature
        "tau_base": 0.99, "tau_final": 0.999,                  # mocov2plus.yaml momentum.base_tau / final_tau
        "crop_min_scale": 0.08,                                # augmentations/symmetric_weak.yaml rrc.crop_min_scale
        "jitter": [0.4, 0.4, 0.4, 0.1],                        # symmetric_weak.yaml color_jitter
        "blur_prob": 0.5,                                      # symmetric_weak.yaml gaussian_blur.prob 0.5
    }, ["MoCo V2+ (solo-learn mocov2plus): the loss symmetrised over the two views with one queue per view; "
        "facebookresearch/moco's v2 is one-directional with shuffled BatchNorm"]),
    "simsiam": _solo({
        "optimizer": "sgd", "lr": 0.5,                         # simsiam.yaml optimizer.name sgd, lr 0.5
        "weight_decay": 1e-5,                                  # simsiam.yaml optimizer.weight_decay 1e-5
        "proj_hidden_dim": 2048, "proj_dim": 2048,             # simsiam.yaml method_kwargs
        "pred_hidden_dim": 512,                                # simsiam.yaml method_kwargs.pred_hidden_dim
        "crop_min_scale": 0.08,                                # augmentations/symmetric_weak.yaml
        "jitter": [0.4, 0.4, 0.4, 0.1],                        # symmetric_weak.yaml color_jitter
        "blur_prob": 0.5,                                      # symmetric_weak.yaml gaussian_blur.prob 0.5
    }, ["the predictor's lr stays at the peak lr (no warmup, no decay), as solo-learn's simsiam.py static_lr and "
        "the SimSiam paper's section 4.1"]),
    "barlow_twins": _solo({
        "optimizer": "lars", "lr": 0.3,                        # barlow.yaml optimizer.name lars, lr 0.3
        "weight_decay": 1e-4,                                  # barlow.yaml optimizer.weight_decay 1e-4
        "proj_hidden_dim": 2048, "proj_dim": 2048,             # barlow.yaml method_kwargs
        "barlow_lambda": 0.0051,                               # solo/methods/barlow_twins.py default lamb 0.0051
        "scale_loss": 0.1,                                     # barlow.yaml method_kwargs.scale_loss 0.1
        "crop_min_scale": 0.08,                                # augmentations/asymmetric.yaml
        "jitter": [0.4, 0.4, 0.2, 0.1],                        # asymmetric.yaml color_jitter
        "blur_prob": 0.0,                                      # asymmetric.yaml gaussian_blur.prob 0.0
    }, ["the cross-correlation is computed from embeddings gathered with their gradients, so DDP's gradient is "
        "the global loss's; solo-learn's all_reduce of C scales it by 1 / world size (same value at one device)"]),
    "vicreg": _solo({
        "optimizer": "lars", "lr": 0.3,                        # vicreg.yaml optimizer.name lars, lr 0.3
        "weight_decay": 1e-4,                                  # vicreg.yaml optimizer.weight_decay 1e-4
        "proj_hidden_dim": 2048, "proj_dim": 2048,             # vicreg.yaml method_kwargs
        "vicreg_weights": [25.0, 25.0, 1.0],                   # vicreg.yaml sim / var / cov_loss_weight
        "crop_min_scale": 0.2,                                 # vicreg.yaml augmentations rrc.crop_min_scale 0.2
        "jitter": [0.4, 0.4, 0.2, 0.1],                        # vicreg.yaml color_jitter
        "blur_prob": 0.0,                                      # vicreg.yaml gaussian_blur.prob 0.0
    }, ["the variance term is averaged over the two views (/2) as facebookresearch/vicreg main_vicreg.py; "
        "solo-learn's solo/losses/vicreg.py sums them (its runs had twice this weight on it)"]),
}

RECIPES: dict[str, dict[str, dict]] = {
    "tuned": {
        "simclr": {
            "optimizer": "sgd", "lr": 0.06, "lr_batch": 512, "momentum": 0.9,
            "weight_decay": 5e-4, "weight_decay_on": "all parameters",
            "schedule": "cosine", "min_lr": 0.0, "warmup_epochs": 0.0,
            "epochs": 1000, "batch_size": 512, "temperature": 0.5,
            "proj_hidden_dim": 1024, "proj_dim": 128, "proj_bn": False,
            "crop_min_scale": 0.2, "hflip_prob": 0.5, "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_prob": 0.8,
            "gray_prob": 0.1, "blur_prob": 0.0, "normalize": False,
            "short_run": {"below_epochs": 500, "lr": 0.12, "lr_batch": 512, "source": DKOBAK_SHORT},
            "source": DKOBAK,
            "notes": [
                "lr 0.03 x B/256 is written here as 0.06 at the reference batch 512 (the same rule); runs shorter "
                "than 500 epochs take the source's 100-epoch value, 0.06 x B/256 (0.12 at 512; `short_run`); a "
                "--steps run counts its epochs as steps x batch / the full training set",
                "cosine stepped per iteration (the source steps CosineAnnealingLR per epoch); it reaches 0 one "
                "step after the last, so no step runs at lr 0",
                "the two views go through one forward pass (BatchNorm sees 2N images); the source runs two",
                DROP_LAST_SIMCLR,
            ],
        },
        "supervised": {
            "optimizer": "sgd", "lr": 0.1, "lr_batch": 128, "momentum": 0.9,
            "weight_decay": 5e-4, "weight_decay_on": "all parameters",
            "schedule": "multistep", "milestones": [0.3, 0.6, 0.8], "gamma": 0.2, "warmup_epochs": 1.0,
            "epochs": 200, "batch_size": 128,
            "crop_padding": 4, "pad_mode": "constant", "hflip_prob": 0.5, "rotation": 15.0, "normalize": True,
            "source": WEIAICUNZAI,
            "notes": [
                "milestones 60/120/160 of 200 epochs written as fractions of the run's steps (0.3/0.6/0.8) so "
                "that shorter runs keep the shape; the lower lrs start with epochs 61/121/161 (the source's "
                "MultiStepLR.step(epoch) starts them one epoch earlier)",
                "linear warmup over the first epoch from lr/steps (the source's first step runs at lr 0)",
                "normalisation with the training set's own mean/std (the source hard-codes CIFAR-100's)",
                "crop padding 4 px at 32 px, scaled with the image size",
                DROP_LAST_SUPERVISED,
            ],
        },
        "probe": {
            "optimizer": "adam", "lr": 1e-3, "batch_size": 1000, "epochs": 500, "schedule": "cosine",
            "final_lr": 0.0, "weight_decay": 5e-6, "feature_norm": "standardize", "head_init": "zeros",
            "source": DKOBAK_PROBE,
            "notes": [
                "the same probe for every checkpoint type (SimCLR, supervised, ImageNet weights, random init)",
                "departs from the source in three values, each because the source's value did not converge on "
                "this project's checkpoints (README, Recipes): lr 1e-3 (the source's 0.01 gave epoch losses above "
                "ln C and a final train loss of 1.4-1.6 on 10 classes); features standardised with fixed train "
                "statistics (the source uses raw features: Adam's first steps then move logits by lr x |h|_1, "
                "which depends on the backbone); the head starts at zero (its first loss is exactly ln C)",
                "cosine stepped per iteration, reaching 0 one step after the last (the source steps per "
                "epoch); the last, smaller batch of an epoch is kept (the source's view(-1, 1000) needs N "
                "divisible by 1000)",
            ],
        },
        "finetune": SEMI_FINETUNE,
        **METHOD_RECIPES,
    },
    "original": {
        "simclr": {
            "optimizer": "sgd", "lr": 0.6, "lr_batch": 512, "momentum": 0.9,
            "weight_decay": 1e-6, "weight_decay_on": "all parameters",
            "schedule": "cosine", "min_lr": 1e-3, "warmup_epochs": 0.0,
            "epochs": 1000, "batch_size": 512, "temperature": 0.5,
            "proj_hidden_dim": 512, "proj_dim": 128, "proj_bn": True,
            "crop_min_scale": 0.08, "hflip_prob": 0.5, "jitter": [0.4, 0.4, 0.4, 0.1], "jitter_prob": 0.8,
            "gray_prob": 0.2, "blur_prob": 0.0, "normalize": True,
            "source": ORIGINAL,
            "notes": [
                "batch 512, lr 0.6, SGD, cosine LambdaLR down to 1e-3: the original README; the LambdaLR now "
                "returns a multiplier, so the peak really is 0.6 (the original's was 0.36)",
                "lr 0.6 at batch 512 scales as 0.3 x B/256 (the original's sweep used bs 256 with lr 0.3)",
                "momentum 0.9, weight decay 1e-6, the views and the head are the SimCLR paper's defaults, which "
                "the original README does not state; blur is off at 32 px as in the paper's CIFAR runs",
                DROP_LAST_ORIGINAL,
            ],
        },
        "supervised": {
            "optimizer": "adam", "lr": 1e-3, "lr_batch": None, "momentum": 0.9,
            "weight_decay": 1e-4, "weight_decay_on": "all parameters",
            "schedule": "cosine", "min_lr": 0.0, "warmup_epochs": 0.0,
            "epochs": 100, "batch_size": 128,
            "crop_padding": 4, "pad_mode": "reflect", "hflip_prob": 0.5, "rotation": 0.0, "normalize": True,
            "source": ORIGINAL,
            "notes": [
                "the original's 'cosine with a period of 50' (torch's CosineAnnealingLR, T_max=50) reaches 0 at "
                "epoch 50 and climbs back; here the cosine spans the whole run (for 100 epochs its half-period "
                "is 100), so no step runs at lr 0 (it reaches 0 one step after the last)",
                "Adam and weight decay 1e-4 are what this project ran before the recipes (the original README "
                "states only batch 128 and lr 0.001)",
                DROP_LAST_ORIGINAL,
            ],
        },
        "probe": {
            "optimizer": "adam", "lr": 1e-3, "batch_size": 1000, "epochs": 500, "schedule": "cosine",
            "final_lr": 0.0, "weight_decay": 5e-6, "feature_norm": "standardize", "head_init": "zeros",
            "source": DKOBAK_PROBE,
            "notes": [
                "the tuned probe, not the original's: its SimCLR probe (SGD lr 0.075, batch 32) diverged before "
                "it learned and its supervised probe (two SGD stages) was another protocol, so SimCLR and "
                "supervised were judged by different probes. `test.py --probe_optimizer sgd --schedule cosine "
                "--batch_size 32 --test_learning_rate 0.075 --test_final_lr 1e-3` runs the original's SimCLR "
                "probe, `--probe_optimizer sgd --schedule two-stage --batch_size 128 --test_learning_rate 0.01` "
                "its supervised one",
            ],
        },
        "finetune": SEMI_FINETUNE,
        **METHOD_RECIPES,  # the course project had none: the tuned ones
    },
}
RECIPE_NAMES = tuple(RECIPES)


def recipe(name: str, part: str) -> dict:
    """A deep copy of one part of recipe `name` ("simclr", "supervised", "probe", "finetune", or a method of
    METHOD_PARTS)."""
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPE_NAMES)}")
    if part not in PARTS:
        raise KeyError(f"a recipe has parts {PARTS}, not {part!r}")
    return copy.deepcopy(RECIPES[name][part])


def finetune_epochs(values: dict, label_fraction: float) -> int:
    """The semi-supervised fine-tune's epochs at this label fraction: those of the first
    epochs_by_label_fraction entry whose fraction is at least it (the last entry's above them all)."""
    table = values["epochs_by_label_fraction"]
    return int(next((epochs for upto, epochs in table if label_fraction <= upto), table[-1][1]))


def run_lr(values: dict, batch_size: int, epochs: float | None) -> tuple[float, str]:
    """(lr, rule) of a recipe part for a run of `epochs` (None: unknown, the full-length rule) at this batch:
    the part's `short_run` lr when it has one and the run is shorter than its `below_epochs`."""
    short = values.get("short_run")
    if short and epochs is not None and epochs < short["below_epochs"]:
        return (float(short["lr"]) * batch_size / short["lr_batch"],
                f"{short['lr']:g} x batch / {short['lr_batch']} (runs under {short['below_epochs']} epochs)")
    rule = (f"{values['lr']:g} x batch / {values['lr_batch']}" if values.get("lr_batch")
            else f"{values['lr']:g} (not scaled)")
    return scaled_lr(values, batch_size), rule


def scaled_lr(values: dict, batch_size: int) -> float:
    """The recipe's lr at this global batch: lr x batch / lr_batch (or lr when it does not scale)."""
    if values.get("lr_batch") is None:
        return float(values["lr"])
    return float(values["lr"]) * batch_size / values["lr_batch"]


def _show(values: dict, key: str) -> str:
    if key == "lr" and values.get("lr_batch"):
        return f"{values['lr']:g} x B/{values['lr_batch']}"
    value = values.get(key)
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "/".join(f"{v:g}" for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_help(key: str, parts: tuple[str, ...] = ("simclr", "supervised")) -> str:
    """'[tuned: simclr 0.06 x B/512 | supervised 0.1 x B/128; original: ...]' for --help texts."""
    out = []
    for name in RECIPE_NAMES:
        shown = [f"{part} {_show(RECIPES[name][part], key)}" if len(parts) > 1 else _show(RECIPES[name][part], key)
                 for part in parts if key in RECIPES[name][part]]
        if shown:
            out.append(f"{name}: {' | '.join(shown)}")
    return " [" + "; ".join(out) + "]" if out else ""
