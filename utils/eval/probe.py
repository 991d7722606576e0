"""Linear evaluation (frozen backbone, cached features) and fine-tuning, kept apart.

The Linear Classification Protocol: the pretrained backbone is frozen (no gradients *and* eval
mode, so BatchNorm statistics do not move), a new head is trained on its features h, and the
test split is evaluated for reporting only. Frozen features never change, so they are computed
once and the head trains on the cached (N, 512) matrix on the device; each probe epoch then
costs a small fraction of the feature pass. After probing, the backbone's parameters and
buffers are compared bit for bit with the checkpoint's (`verify_backbone_unchanged`), and every
optimizer is checked to hold the head's parameters only (`check_optimizer_params`). By default
the features are standardised per dimension with fixed train-split statistics before the head
(`Standardize`, no trainable parameters), so one lr suits backbones whose features differ in scale.

Fine-tuning (`run_finetune`) trains the whole network on augmented images; it is a different
protocol with its own outputs and is never reported as a linear result.

Hyperparameters come from a recipe's "probe" part (utils/recipes.py), the same for every
checkpoint type so that SimCLR and supervised backbones are judged by one protocol. The tuned
probe: Adam lr 1e-3, batch 1000, 500 epochs, cosine to 0 stepped per iteration, weight decay 5e-6,
standardised features, head initialised at zero (so its first loss is exactly ln C). Two
schedules can be asked for by name:
- "cosine": one stage, a cosine from the lr to `final_lr` over all epochs;
- "two-stage" (the original project's supervised probe): stage 1 at lr, stage 2 at lr / 10 (a
  fresh optimizer each), each a cosine to 0 over its own half of the epochs (the original's
  50-epoch period, which ran past short stages, now spans the stage it belongs to).

    from utils.eval.probe import make_config, run_linear_probe
    from utils.recipes import recipe
    config = make_config(recipe("tuned", "probe"), epochs=100)
    result = run_linear_probe(backbone, head, data, config, preprocess, device)

Run its tests with `python -m pytest tests/test_probe.py -q`.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from utils.data.datasets import load_split, stratified_split
from utils.data.labels import labelled_subset
from utils.errors import NonFiniteLossError, UserError
from utils.eval.features import extract_features, feature_precision_used
from utils.eval.knn import KNN_K, KNN_SETTINGS, KNN_TEMPERATURE, describe_knn, knn_accuracy
from utils.eval.neighbours import nearest_neighbours, query_indices
from utils.eval.lbfgs_probe import DEFAULT_L2_REASON, choose_l2, fit_lbfgs, fold_count, stratified_folds
from utils.runtime import LOG, autocast_context
from utils.augment import BatchSupervisedAugment
from utils.schedule import cosine_lr, cosine_scheduler

LINEAR, FINETUNE = "linear", "fine-tune"
COSINE, TWO_STAGE = "cosine", "two-stage"
SCHEDULES = (COSINE, TWO_STAGE)

TWO_STAGE_DECAY = 0.1  # the original's stage 2 lr: 0.01 -> 0.001
MOMENTUM = 0.9  # SGD momentum of the original's probes (used when the optimizer is SGD)
OPTIMIZERS = ("adam", "sgd", "nesterov")  # nesterov: SGD with Nesterov momentum (the SimCLR fine-tune's)
EVAL_BATCH_SIZE = 4096  # rows of cached features per evaluation matmul
# Head steps on cached features are tiny (32 x 512 @ 512 x C); on a CPU shared with other work,
# torch's thread pool made them 10x slower (30 epochs of 2,000 features: 1.1 s with 1 thread,
# 11.1 s with 2, on 2 loaded cores), so the probe's steps run single-threaded on CPU.
PROBE_CPU_THREADS = 1


# ---------------------------------------------------------------------------------------------
# Configuration: which schedule, which hyperparameters
# ---------------------------------------------------------------------------------------------

@dataclass
class Stage:
    """One optimizer's run: `epochs` epochs, a cosine from `lr` to `final_lr` over the stage."""

    epochs: int
    lr: float
    final_lr: float


@dataclass
class ProbeConfig:
    """Hyperparameters of a probe (or fine-tune) run; `stages` run one after the other."""

    schedule: str
    batch_size: int
    stages: list[Stage]
    optimizer: str = "adam"
    momentum: float = MOMENTUM
    weight_decay: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def epochs(self) -> int:
        return sum(s.epochs for s in self.stages)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["epochs"] = self.epochs
        if self.optimizer not in ("sgd", "nesterov"):
            d.pop("momentum")
        return d

    def make_optimizer(self, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=lr, momentum=self.momentum, weight_decay=self.weight_decay,
                               nesterov=self.optimizer == "nesterov")


def split_epochs(epochs: int) -> tuple[int, int]:
    """Epochs of the two stages: half and half, stage 1 taking the odd one (ceil, floor)."""
    first = (epochs + 1) // 2
    return first, epochs - first


def make_config(
    values: dict,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    schedule: str | None = None,
    weight_decay: float | None = None,
    optimizer: str | None = None,
    momentum: float = MOMENTUM,
) -> ProbeConfig:
    """A probe config from a recipe's "probe" values (utils.recipes), any given argument overriding them.

    With two stages, `lr` sets stage 1 and stage 2 runs at lr / 10.
    """
    epochs = values["epochs"] if epochs is None else epochs
    schedule = schedule or values["schedule"]
    lr = values["lr"] if lr is None else lr
    bs = values["batch_size"] if batch_size is None else batch_size
    wd = values["weight_decay"] if weight_decay is None else weight_decay
    optimizer = optimizer or values["optimizer"]
    if epochs <= 0:
        raise UserError(f"--test_num_epochs must be > 0, got {epochs}")
    if schedule not in SCHEDULES:
        raise UserError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if optimizer not in OPTIMIZERS:
        raise UserError(f"the probe's optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise UserError(f"--test_learning_rate must be > 0, got {lr}")
    if bs <= 0:
        raise UserError(f"--batch_size must be > 0, got {bs}")
    if not (math.isfinite(wd) and wd >= 0):
        raise UserError(f"--weight_decay must be >= 0, got {wd}")
    if schedule == COSINE:
        final = min(values.get("final_lr", 0.0), lr)
        stages = [Stage(epochs, lr, final)]
        notes = [f"one cosine from lr {lr:g} to {final:g} over all {epochs} epochs, stepped per iteration"]
    else:
        e1, e2 = split_epochs(epochs)
        stages = [Stage(e1, lr, 0.0)] + ([Stage(e2, lr * TWO_STAGE_DECAY, 0.0)] if e2 else [])
        notes = [f"epochs split half/half between the stages (stage 1 takes the odd one): {e1} + {e2}",
                 "each stage: a fresh optimizer, a cosine from its lr to 0 over the stage"]
    return ProbeConfig(schedule, bs, stages, optimizer, momentum, wd, notes)


def scheduled_lr(config: ProbeConfig, step: int, steps_per_epoch: int) -> float:
    """The lr the probe uses at global iteration `step` (0-based): a pure function for tests and docs."""
    for stage in config.stages:
        stage_steps = stage.epochs * steps_per_epoch
        if step < stage_steps:
            return cosine_lr(step, stage.lr, stage.final_lr, stage_steps)
        step -= stage_steps
    raise ValueError("step is past the end of the schedule")


class Standardize(nn.Module):
    """Fixed per-dimension standardisation (h - mean) / sqrt(var + eps): (B, D) -> (B, D).

    BatchNorm1d without affine parameters, frozen at statistics of the probe's training
    features (as MAE's linear probe does). It has no trainable parameters, and composed with a
    linear layer it is still a linear classifier of h; it makes one lr work whatever the scale
    of a backbone's features (a random-init backbone in eval mode gives features ~10x larger
    than a trained one, and SGD at lr 0.075 diverges on them).
    """

    EPS = 1e-5  # BatchNorm1d's default eps

    def __init__(self, mean: torch.Tensor, var: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean.detach().float().clone())
        self.register_buffer("scale", (var.detach().float() + self.EPS).rsqrt())

    @classmethod
    def fit(cls, h: torch.Tensor) -> "Standardize":
        """Statistics of features h (N, D) (population variance, as BatchNorm uses)."""
        return cls(h.mean(dim=0), h.var(dim=0, unbiased=False))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (h - self.mean) * self.scale


FEATURE_NORMS = ("standardize", "none")


# ---------------------------------------------------------------------------------------------
# Freezing and the guard
# ---------------------------------------------------------------------------------------------

class FrozenBackboneError(RuntimeError):
    """The frozen backbone changed, or an optimizer held more than the head: a bug, never user error."""


def freeze_backbone(backbone: nn.Module) -> None:
    """No gradients for any parameter *and* eval mode (BatchNorm uses and keeps its running statistics)."""
    backbone.requires_grad_(False)
    backbone.eval()


def verify_backbone_unchanged(backbone: nn.Module, reference: dict[str, torch.Tensor]) -> int:
    """Raise FrozenBackboneError unless every parameter and buffer equals `reference` bit for bit.

    `reference` is the state dict the backbone was loaded from. Returns the number of tensors checked.
    """
    state = backbone.state_dict()
    if set(state) != set(reference):
        raise FrozenBackboneError(f"backbone tensors differ from the checkpoint's: "
                                  f"{sorted(set(state) ^ set(reference))[:6]}")
    changed = [k for k, v in state.items()
               if v.shape != reference[k].shape or not torch.equal(v.detach().cpu(), reference[k].cpu())]
    if changed:
        raise FrozenBackboneError(
            f"linear evaluation changed the frozen backbone ({len(changed)} of {len(state)} tensors, e.g. "
            f"{', '.join(changed[:4])}): its numbers would not be linear-probe results; nothing was written")
    return len(state)


def optimizer_parameters(backbone: nn.Module, head: nn.Module) -> list[nn.Parameter]:
    """What the linear probe's optimizer gets: the head's parameters, never the backbone's."""
    return list(head.parameters())


def check_optimizer_params(optimizer: torch.optim.Optimizer, allowed: Sequence[nn.Parameter], what: str) -> None:
    """Raise FrozenBackboneError unless the optimizer holds exactly the `allowed` parameters."""
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    want = {id(p) for p in allowed}
    if held != want:
        raise FrozenBackboneError(f"the optimizer holds {len(held - want)} parameters outside the {what} "
                                  f"and misses {len(want - held)} of it")


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

@dataclass
class Preprocess:
    """The checkpoint's preprocessing: images resized to image_size, normalised with mean/std."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass
class ProbeData:
    """The evaluation dataset in memory: uint8 images (N, H, W, 3) and int64 labels per split."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    val_images: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    # Where the train / val rows sit in the whole train split (the feature cache and the label axis
    # index by them), and that whole split's images.
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None
    all_train_images: np.ndarray | None = None
    all_train_labels: np.ndarray | None = None
    # Under a label budget (a fraction < 1 or labels per class) the validation split is only *held out*:
    # its images are never labelled and its labels are never read (val_* are None); its indices stay here.
    held_out_index: np.ndarray | None = None

    @property
    def budget(self) -> bool:
        """A label budget: the validation split is held out, its labels dropped (every label: None)."""
        return self.held_out_index is not None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def labels_read_index(self) -> np.ndarray:
        """Sorted indices into the whole train split of every image whose label the probe can read: the
        training rows, and the validation rows when their labels are used (every label), never under a budget."""
        parts = [np.asarray(self.train_index, dtype=np.int64)]
        if self.val_labels is not None and self.val_index is not None:
            parts.append(np.asarray(self.val_index, dtype=np.int64))
        return np.unique(np.concatenate(parts))

    @property
    def native_size(self) -> int:
        return int(self.train_images.shape[1])

    def sizes(self) -> dict:
        return {"num_train": len(self.train_labels), "num_val": 0 if self.val_labels is None else len(self.val_labels),
                "num_held_out": 0 if self.held_out_index is None else len(self.held_out_index),
                "num_test": len(self.test_labels), "num_classes": self.num_classes,
                "native_image_size": self.native_size}


def load_probe_data(dataset: str, data_dir: str | Path, image_size: int, val_split: float = 0.0,
                    seed: int = 0, labels: dict | None = None) -> ProbeData:
    """Train and test splits of `dataset`; with val_split > 0 a seeded stratified part of train is held out.

    labels={"fraction": F} or {"per_class": N}: the train rows are then the labelled subset of
    utils.data.labels (drawn after the validation split, never from it); the test split is unchanged.
    Below every label (F < 1, or N per class) that subset is the whole budget: the validation split
    stays held out of it (so the subsets nest and match the study's), but its labels are dropped
    (val_* None, `budget` True), so nothing downstream can choose, stop or fit on them.
    """
    if not 0 <= val_split < 1:
        raise UserError(f"--val_split must be in [0, 1), got {val_split}")
    train = load_split(dataset, "train", data_dir, image_size=image_size)
    test = load_split(dataset, "test", data_dir, image_size=image_size)
    if train.classes != test.classes:
        raise UserError(f"{dataset}: train and test splits have different classes")
    data = ProbeData(train.images, train.labels, test.images, test.labels, list(train.classes),
                     train_index=np.arange(len(train)), all_train_images=train.images,
                     all_train_labels=train.labels)
    va = np.zeros(0, dtype=np.int64)
    if val_split > 0:
        tr, va = stratified_split(train.labels, val_split, seed, classes=list(train.classes))
        data.train_images, data.train_labels, data.train_index = train.images[tr], train.labels[tr], tr
        data.val_images, data.val_labels, data.val_index = train.images[va], train.labels[va], va
    if labels:
        tr = labelled_subset(train.labels, train.num_classes, seed, labels.get("fraction"), labels.get("per_class"),
                             exclude=va, classes=list(train.classes))
        data.train_images, data.train_labels, data.train_index = train.images[tr], train.labels[tr], tr
        if is_label_budget(labels):
            data.held_out_index = va
            data.val_images = data.val_labels = data.val_index = None
    return data


def is_label_budget(labels: dict | None) -> bool:
    """True for a label budget ({"fraction": F < 1} or {"per_class": N}); False for every label (None, F = 1)."""
    if not labels:
        return False
    return labels.get("per_class") is not None or (labels.get("fraction") is not None and labels["fraction"] < 1)


def _images_on(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, H, W, 3) copied once to the device (the augmenting paths read it every epoch)."""
    return torch.from_numpy(np.array(images, copy=True)).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# The training loop shared by the probe and fine-tuning
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def evaluate_head(head: nn.Module, h: torch.Tensor, y: torch.Tensor, batch_size: int = EVAL_BATCH_SIZE) -> dict:
    """Mean cross-entropy and accuracy (%) of head on features h (N, D) with labels y (N,).

    Every row is counted exactly once; `count` (= N) is returned so callers can check it.
    """
    was_training = head.training
    head.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=h.device)
    correct = torch.zeros((), dtype=torch.long, device=h.device)
    count = 0
    for start in range(0, h.shape[0], batch_size):
        hb, yb = h[start:start + batch_size], y[start:start + batch_size]
        logits = head(hb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
        count += hb.shape[0]
    head.train(was_training)
    if count == 0:
        raise ValueError("nothing to evaluate")
    return {"loss": loss_sum.item() / count, "acc": 100.0 * correct.item() / count, "count": count}


def fit(
    params: list[nn.Parameter],
    batch_logits: Callable[[torch.Tensor], torch.Tensor],
    train_y: torch.Tensor,
    config: ProbeConfig,
    evaluate: Callable[[], dict[str, dict]],
    generator: torch.Generator,
    begin_epoch: Callable[[int], None] | None = None,
    what: str = "head",
    on_epoch: Callable[[dict], None] | None = None,
    allowed: Sequence[nn.Parameter] | None = None,
    cpu_step_threads: int | None = None,
) -> list[dict]:
    """Train `params` stage by stage (Adam or SGD, per-iteration cosine); one history row per epoch.

    batch_logits(idx (B,) on the device) -> logits (B, C) for those training samples;
    evaluate() -> {"test": {"loss", "acc", "count"}, "val": ...}; begin_epoch(epoch) runs first
    in every epoch (e.g. to recompute augmented features). A row's "lr_first" / "lr_last" are the
    lrs its epoch's first and last steps trained at. The order of the N samples is a fresh permutation from `generator`
    each epoch; the last batch may be smaller (no sample is dropped). Each stage's optimizer is checked to hold exactly `allowed` (default: `params`).
    On CPU, `cpu_step_threads` caps torch's threads during the optimisation steps (see
    PROBE_CPU_THREADS); begin_epoch and evaluate run with the caller's setting.
    """
    device = train_y.device
    n = int(train_y.shape[0])
    bs = config.batch_size
    steps_per_epoch = math.ceil(n / bs)
    history: list[dict] = []
    epoch = 0
    for stage_index, stage in enumerate(config.stages, start=1):
        if stage.epochs == 0:
            continue
        optimizer = config.make_optimizer(params, stage.lr)
        check_optimizer_params(optimizer, params if allowed is None else allowed, what)
        scheduler = cosine_scheduler(optimizer, stage.epochs * steps_per_epoch, stage.lr, stage.final_lr)
        for _ in range(stage.epochs):
            if begin_epoch is not None:
                begin_epoch(epoch)
            lr_first = lr_last = optimizer.param_groups[0]["lr"]
            perm = torch.randperm(n, generator=generator).to(device)
            # Sums stay on the device: one host sync per epoch, not per step.
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            threads = torch.get_num_threads()
            if cpu_step_threads and device.type == "cpu":
                torch.set_num_threads(min(threads, cpu_step_threads))
            try:
                for start in range(0, n, bs):
                    idx = perm[start:start + bs]
                    y = train_y[idx]
                    logits = batch_logits(idx).float()
                    loss = F.cross_entropy(logits, y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    lr_last = optimizer.param_groups[0]["lr"]
                    optimizer.step()
                    scheduler.step()
                    loss_sum += loss.detach().double() * idx.shape[0]
                    correct += (logits.detach().argmax(dim=1) == y).sum()
            finally:
                torch.set_num_threads(threads)
            train_loss = loss_sum.item() / n
            if not math.isfinite(train_loss):
                raise NonFiniteLossError(f"{what} training loss became {train_loss} in epoch {epoch + 1}; "
                                         f"try a smaller --test_learning_rate")
            row = {"epoch": epoch + 1, "stage": stage_index, "lr_first": lr_first, "lr_last": lr_last,
                   "train_loss": train_loss, "train_acc": 100.0 * correct.item() / n}
            for split, result in evaluate().items():
                row[f"{split}_loss"], row[f"{split}_acc"], row[f"{split}_count"] = (
                    result["loss"], result["acc"], result["count"])
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            epoch += 1
    return history


def log_epoch(total_epochs: int, label: str) -> Callable[[dict], None]:
    """One log line per epoch: lr, train loss/acc, val and test loss/acc."""
    def log(row: dict) -> None:
        val = f" | val loss {row['val_loss']:.4f} acc {row['val_acc']:.2f}%" if "val_loss" in row else ""
        LOG.info("%s epoch %d/%d (stage %d) lr %.5f | train loss %.4f acc %.2f%%%s | test loss %.4f acc %.2f%%",
                 label, row["epoch"], total_epochs, row["stage"], row["lr_first"], row["train_loss"], row["train_acc"],
                 val, row["test_loss"], row["test_acc"])
    return log


@dataclass
class ProbeResult:
    """What a probe or fine-tune run produced: per-epoch history, timings, checks."""

    protocol: str
    history: list[dict]
    seconds_features: float
    seconds_training: float
    extra: dict = field(default_factory=dict)
    head: nn.Module | None = None  # the trained head (with its Standardize in front, if any)


# ---------------------------------------------------------------------------------------------
# The two protocols
# ---------------------------------------------------------------------------------------------

def run_linear_probe(
    backbone: nn.Module,
    head: nn.Module,
    data: ProbeData,
    config: ProbeConfig,
    preprocess: Preprocess,
    device: torch.device,
    augment: bool = False,
    seed: int = 0,
    reference_state: dict[str, torch.Tensor] | None = None,
    feature_batch_size: int = 512,
    knn: bool = True,
    feature_norm: str = "standardize",
    on_epoch: Callable[[dict], None] | None = None,
    lbfgs: dict | None = None,
    precomputed: dict | None = None,
    knn10: bool = False,
    feature_precision: str = "fp32",
) -> ProbeResult:
    """Linear Classification Protocol: train `head` on the frozen backbone's features.
    precomputed: {"train", "val", "test": (N, D), "seconds"} from utils/eval/feature_cache.py (no backbone pass).

    lbfgs={"l2_grid": [...], "max_iter": N} solves the convex probe of utils/eval/lbfgs_probe.py
    instead of `config`'s SGD schedule (one linear layer, cached features only): l2 chosen on the val split
    and the head refit on train + val; with no val (a label budget) by cross-validation on train, refit on
    it alone; one history row per round of L-BFGS iterations.

    Default: features of every split are computed once with the evaluation transform and the
    head trains on them (cached). augment=True recomputes the train features every epoch with
    a padded random crop + flip (val/test features stay cached: the backbone does not change).
    feature_norm="standardize" puts a fixed `Standardize` (statistics of the first epoch's train
    features) in front of `head`; the result's `head` is then Sequential(Standardize, head).
    Afterwards the backbone is checked bit-identical to `reference_state` (the checkpoint's
    tensors; by default a copy taken on entry). Also reports weighted kNN accuracy on the cached
    features (k=200, t=0.1) unless knn=False or augment=True; knn10=True adds the uniform k=10 kNN.
    """
    _check_probe_options(feature_norm, lbfgs, augment, head)
    if reference_state is None:
        reference_state = {k: v.detach().clone().cpu() for k, v in backbone.state_dict().items()}
    freeze_backbone(backbone)
    backbone.to(device)
    head.to(device).train()

    def features(images, augmenter=None, generator=None, label=None):
        return extract_features(backbone, images, preprocess.image_size, preprocess.mean, preprocess.std, device,
                                batch_size=feature_batch_size, augment=augmenter, generator=generator,
                                progress=label, precision=feature_precision).clone()

    test_h, val_h, train_h, seconds_features = _cached_features(features, data, augment, device, precomputed)
    train_y, val_y, test_y = (None if labels is None else torch.as_tensor(labels, dtype=torch.long, device=device)
                              for labels in (data.train_labels, data.val_labels, data.test_labels))
    params = optimizer_parameters(backbone, head)
    _sync(device)
    t1 = time.perf_counter()
    current, begin_epoch = ({"h": train_h}, None) if not augment else _augmented_train_features(
        features, data.train_images, preprocess, device, seed)
    probe_head = head  # the trainable part; the only parameters any optimizer may hold
    head = _initial_probe_head(head, current["h"], feature_norm, device)

    splits = {"val": (val_h, val_y), "test": (test_h, test_y)}
    lbfgs_info = None
    if lbfgs is not None:
        history, lbfgs_info = _fit_lbfgs_probe(head, probe_head, train_h, train_y, val_h, val_y, test_h, test_y,
                                               lbfgs["l2_grid"], lbfgs["max_iter"], on_epoch, seed=seed)
    else:
        gen = torch.Generator().manual_seed(seed)
        history = fit(params, lambda idx: head(current["h"][idx]), train_y, config,
                      lambda: _evaluate_splits(head, splits), gen,
                      begin_epoch=begin_epoch, what="probe head", on_epoch=on_epoch,
                      allowed=list(probe_head.parameters()), cpu_step_threads=PROBE_CPU_THREADS)
    _sync(device)
    seconds_training = time.perf_counter() - t1

    extra = {"guard": _backbone_guard(backbone, reference_state), "feature_norm": feature_norm,
             "feature_precision": feature_precision_used(feature_precision, device)}
    if lbfgs_info is not None:
        extra["lbfgs"] = lbfgs_info
    if knn and train_h is not None:
        extra.update(_knn_reports(train_h, train_y, test_h, test_y, data.num_classes, knn10))
    return ProbeResult(LINEAR, history, seconds_features, seconds_training, extra, head)


def _knn_reports(train_h, train_y, test_h, test_y, num_classes: int, knn10: bool) -> dict:
    """{"knn": weighted k=200 (as always)} and, with knn10, {"knn10": uniform k=10}: setting and test_acc."""
    features = "cached eval-transform features, probe train split as memory"
    out = {"knn": {"k": KNN_K, "temperature": KNN_TEMPERATURE, "features": features,
                   "test_acc": knn_accuracy(train_h, train_y, test_h, test_y, num_classes)}}
    if knn10:
        k, votes = KNN_SETTINGS["knn10"]
        out["knn10"] = {**describe_knn("knn10"), "features": features,
                        "test_acc": knn_accuracy(train_h, train_y, test_h, test_y, num_classes, k=k, votes=votes)}
        queries = query_indices(test_y)  # what the picture of neighbours.png shows (utils/eval/neighbours.py)
        rows, sims = nearest_neighbours(train_h, test_h[queries])
        out["neighbours"] = {"queries": queries, "train_rows": rows.tolist(), "similarity": sims.tolist()}
    return out


def _cached_features(features: Callable, data: ProbeData, augment: bool, device: torch.device,
                     precomputed: dict | None = None):
    """(test_h, val_h or None, train_h or None with augment, seconds): each split's (N, D) features, once
    (or those of `precomputed`, moved to the device)."""
    if precomputed is not None and not augment:
        on = (lambda h: None if h is None else h.to(device))  # noqa: E731
        return on(precomputed["test"]), on(precomputed["val"]), on(precomputed["train"]), precomputed["seconds"]
    _sync(device)
    t0 = time.perf_counter()
    test_h = features(data.test_images, label="test features")
    val_h = features(data.val_images, label="val features") if data.val_labels is not None else None
    train_h = None if augment else features(data.train_images, label="train features")
    _sync(device)
    return test_h, val_h, train_h, time.perf_counter() - t0


def _evaluate_splits(head: nn.Module, splits: dict) -> dict[str, dict]:
    """{split: evaluate_head(head, h, y)} for each (h, y) of `splits` whose features exist, in its order."""
    return {name: evaluate_head(head, h, y) for name, (h, y) in splits.items() if h is not None}


def _check_probe_options(feature_norm: str, lbfgs: dict | None, augment: bool, head: nn.Module) -> None:
    if feature_norm not in FEATURE_NORMS:
        raise UserError(f"feature_norm must be one of {FEATURE_NORMS}, got {feature_norm!r}")
    if lbfgs is not None and (augment or not isinstance(head, nn.Linear)):
        raise UserError("the L-BFGS probe needs cached features (no --augment) and one linear layer (--head_layers 1)")


def _augmented_train_features(features: Callable, images, preprocess: Preprocess, device: torch.device,
                              seed: int) -> tuple[dict, Callable[[int], None]]:
    """({"h": epoch 1's train features (N, D)}, begin_epoch): a padded random crop + flip, redrawn every epoch.

    features(images, augmenter, generator) -> (N, D); begin_epoch(epoch) replaces "h" from epoch 2 on.
    """
    train_images = _images_on(images, device)
    augmenter = BatchSupervisedAugment(preprocess.image_size, preprocess.mean, preprocess.std)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    current = {"h": features(train_images, augmenter, aug_gen)}  # epoch 1's features

    def begin_epoch(epoch: int) -> None:
        if epoch > 0:
            current["h"] = features(train_images, augmenter, aug_gen)

    return current, begin_epoch


def _initial_probe_head(head: nn.Module, train_h: torch.Tensor, feature_norm: str,
                        device: torch.device) -> nn.Module:
    """The head as training starts: one linear layer zeroed; Standardize (fit on train_h (N, D)) in front."""
    if isinstance(head, nn.Linear):
        # One linear layer starts at zero, as the L-BFGS probe does: its first loss is exactly ln C
        # whatever the features' scale. (Two stacked layers keep their random init: at zero
        # neither would get a gradient.)
        with torch.no_grad():
            head.weight.zero_()
            head.bias.zero_()
    if feature_norm == "standardize":
        head = nn.Sequential(Standardize.fit(train_h).to(device), head)
    return head


def _backbone_guard(backbone: nn.Module, reference_state: dict[str, torch.Tensor]) -> dict:
    """Check the backbone bit-identical to reference_state (raises otherwise); the guard's report."""
    checked = verify_backbone_unchanged(backbone, reference_state)
    return {"backbone_bit_identical": True, "tensors_checked": checked,
            "optimizer_params": "head only (checked for every stage)",
            "backbone_requires_grad": any(p.requires_grad for p in backbone.parameters()),
            "backbone_mode": "train" if backbone.training else "eval"}


def _fit_lbfgs_probe(head, linear, train_h, train_y, val_h, val_y, test_h, test_y, l2_grid, max_iter, on_epoch,
                     seed: int = 0):
    """The L-BFGS probe: l2 chosen on val (if any) and refit on train + val; with no val (a label budget), chosen
    by stratified k-fold cross-validation on train and refit on train alone; test rows per round.

    The fits run on float64 copies of the head and the features (a gradient tolerance of 1e-6 is
    out of float32's reach); the solution is copied back into `linear` for evaluation.
    """
    head64 = copy.deepcopy(head).double()
    linear64 = head64[-1] if isinstance(head64, nn.Sequential) else head64

    def check(optimizer):
        check_optimizer_params(optimizer, list(linear64.parameters()), "probe head")

    def fit_and_copy(h, y, l2, on_round=None):
        h64 = h.double()
        round_hook = None
        if on_round is not None:
            def round_hook(iterations):
                _copy_linear(linear64, linear)
                on_round(iterations)
        info = fit_lbfgs(linear64, lambda: head64(h64), y, l2, max_iter, on_round=round_hook, check_params=check)
        _copy_linear(linear64, linear)
        return info

    def log_choice(l2, what, acc, loss, fits):
        worst = max(f["max_abs_gradient"] for f in fits)
        LOG.info("L-BFGS probe, l2 %g: %s accuracy %.2f%% (loss %.4f), %d iterations, %s, largest gradient entry "
                 "%.1e", l2, what, acc, loss, sum(f["iterations"] for f in fits),
                 "converged" if all(f["converged"] for f in fits) else "not converged", worst)

    selection, cv, default_reason = [], None, None
    fit_h, fit_y, fit_on = train_h, train_y, "train"
    if val_h is not None:
        for l2 in l2_grid:
            info = fit_and_copy(train_h, train_y, l2)
            val = evaluate_head(head, val_h, val_y)
            selection.append({**info, "val_loss": val["loss"], "val_acc": val["acc"]})
            log_choice(l2, "val", val["acc"], val["loss"], [info])
        chosen = choose_l2(list(l2_grid), [s["val_acc"] for s in selection])
        fit_h, fit_y, fit_on = torch.cat([train_h, val_h]), torch.cat([train_y, val_y]), "train + val"
        chosen_by = "validation accuracy"
    elif len(l2_grid) == 1:
        chosen, chosen_by = l2_grid[0], "the only value given"
    elif fold_count(train_y) < 2:
        chosen, chosen_by, default_reason = max(l2_grid), "default", DEFAULT_L2_REASON
        LOG.info("L-BFGS probe: l2 %g without cross-validation: %s", chosen, DEFAULT_L2_REASON)
    else:
        selection, cv = _cross_validate(head, fit_and_copy, train_h, train_y, l2_grid, seed, log_choice)
        chosen = choose_l2(list(l2_grid), [s["cv_acc"] for s in selection])
        chosen_by = f"{cv['folds']}-fold stratified cross-validation accuracy on the labelled subset"
    history: list[dict] = []

    def on_round(iterations: int) -> None:
        train, test = evaluate_head(head, fit_h, fit_y), evaluate_head(head, test_h, test_y)
        row = {"epoch": len(history) + 1, "stage": 1, "lr_first": None, "lr_last": None, "iterations": iterations,
               "train_loss": train["loss"], "train_acc": train["acc"],
               "test_loss": test["loss"], "test_acc": test["acc"], "test_count": test["count"]}
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)

    final = fit_and_copy(fit_h, fit_y, chosen, on_round=on_round)
    if not history:  # converged before its first iteration (zero gradient at zero weights)
        on_round(0)
    info = {"l2": chosen, "l2_grid": list(l2_grid), "chosen_by": chosen_by, "selection": selection,
            "final_fit": final, "fit_on": fit_on, "fit_size": int(fit_y.shape[0]), "max_iter": max_iter}
    if cv is not None:
        info["cross_validation"] = cv
    if default_reason is not None:
        info["default_reason"] = default_reason
    return history, info


def _cross_validate(head, fit_and_copy, train_h, train_y, l2_grid, seed: int, log_choice) -> tuple[list, dict]:
    """Each l2 scored by stratified k-fold cross-validation on (train_h (N, D), train_y (N,)) alone: fit on k - 1
    folds, score the held-out fold, pooled over the folds. Returns (one row per l2, the folds' description)."""
    k = fold_count(train_y)
    folds = stratified_folds(train_y, k, seed).to(train_y.device)
    n, selection = int(train_y.shape[0]), []
    for l2 in l2_grid:
        correct, loss_sum, fits = 0.0, 0.0, []
        for f in range(k):
            inside, outside = folds != f, folds == f
            fits.append(fit_and_copy(train_h[inside], train_y[inside], l2))
            scored = evaluate_head(head, train_h[outside], train_y[outside])
            correct += scored["acc"] * scored["count"] / 100.0
            loss_sum += scored["loss"] * scored["count"]
        selection.append({"l2": l2, "cv_acc": 100.0 * correct / n, "cv_loss": loss_sum / n,
                          "iterations": [f["iterations"] for f in fits], "converged": all(f["converged"] for f in fits),
                          "max_abs_gradient": max(f["max_abs_gradient"] for f in fits)})
        log_choice(l2, f"{k}-fold cross-validation", selection[-1]["cv_acc"], selection[-1]["cv_loss"], fits)
    return selection, {"folds": k, "seed": seed, "stratified": True, "fold_sizes": torch.bincount(folds.cpu()).tolist()}


def _copy_linear(source: nn.Linear, target: nn.Linear) -> None:
    with torch.no_grad():
        target.weight.copy_(source.weight)
        target.bias.copy_(source.bias)


def run_finetune(
    backbone: nn.Module,
    head: nn.Module,
    data: ProbeData,
    config: ProbeConfig,
    preprocess: Preprocess,
    device: torch.device,
    seed: int = 0,
    feature_batch_size: int = 512,
    channels_last: bool = True,
    on_epoch: Callable[[dict], None] | None = None,
    augmenter: Callable | None = None,
    feature_precision: str = "fp32",
) -> ProbeResult:
    """Fine-tuning (NOT linear evaluation): backbone and head trained together on augmented images.

    augmenter(uint8 (B, 3, H, W), generator) -> float (B, 3, S, S): the train augmentation
    (default: BatchSupervisedAugment, padded random crop + flip).

    Every parameter gets gradients and the backbone runs in train mode (BatchNorm statistics
    move); each epoch's val/test splits are evaluated in eval mode with the evaluation transform.
    """
    backbone.requires_grad_(True)
    backbone.to(device).train()
    head.to(device).train()
    size, mean, std = preprocess.image_size, preprocess.mean, preprocess.std
    augmenter = augmenter or BatchSupervisedAugment(size, mean, std)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)

    t0 = time.perf_counter()
    train_images = _images_on(data.train_images, device)
    test_images = _images_on(data.test_images, device)
    val_images = None if data.val_images is None else _images_on(data.val_images, device)
    train_y = torch.as_tensor(data.train_labels, dtype=torch.long, device=device)
    test_y = torch.as_tensor(data.test_labels, dtype=torch.long, device=device)
    val_y = None if data.val_labels is None else torch.as_tensor(data.val_labels, dtype=torch.long, device=device)
    _sync(device)
    seconds_upload = time.perf_counter() - t0

    def batch_logits(idx: torch.Tensor) -> torch.Tensor:
        x = augmenter(train_images[idx].permute(0, 3, 1, 2), generator=aug_gen)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_context(device):
            return head(backbone(x))

    def begin_epoch(epoch: int) -> None:
        backbone.train()
        head.train()

    def evaluate() -> dict:
        out = {}
        if val_images is not None:
            h = extract_features(backbone, val_images, size, mean, std, device, batch_size=feature_batch_size,
                                 precision=feature_precision)
            out["val"] = evaluate_head(head, h, val_y)
        h = extract_features(backbone, test_images, size, mean, std, device, batch_size=feature_batch_size,
                             precision=feature_precision)
        out["test"] = evaluate_head(head, h, test_y)
        return out

    params = list(backbone.parameters()) + list(head.parameters())
    gen = torch.Generator().manual_seed(seed)
    t1 = time.perf_counter()
    history = fit(params, batch_logits, train_y, config, evaluate, gen, begin_epoch=begin_epoch,
                  what="whole network", on_epoch=on_epoch)
    _sync(device)
    seconds_training = time.perf_counter() - t1
    return ProbeResult(FINETUNE, history, seconds_upload, seconds_training,
                       {"note": "whole network trained (fine-tuning); not a linear-probe result",
                        "feature_norm": "none",
                        "feature_precision": feature_precision_used(feature_precision, device)}, head)
