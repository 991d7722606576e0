"""Linear-probe machinery (utils/eval/probe.py, utils/eval/features.py): features, guard, schedules, evaluation.

    python -m pytest tests/test_probe.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import utils.eval.probe as probe
from models import build_backbone, build_probe_head
from utils.data.synthetic import make_synthetic
from utils.eval.features import extract_features
from utils.eval.probe import (FrozenBackboneError, Preprocess, ProbeData, Standardize, evaluate_head, fit, make_config,
                              run_linear_probe, scheduled_lr, split_epochs, verify_backbone_unchanged)
from utils.augment import eval_transform
from utils.recipes import recipe

# The tuned probe, and the original's SimCLR probe (SGD, batch 32, lr 0.075, cosine to 1e-3).
TUNED_PROBE = recipe("tuned", "probe")
ORIGINAL_SIMCLR_PROBE = {**TUNED_PROBE, "optimizer": "sgd", "batch_size": 32, "lr": 0.075, "final_lr": 1e-3}

CPU = torch.device("cpu")
MEAN, STD = (0.5, 0.5, 0.5), (0.29, 0.29, 0.29)


class CountingBackbone(nn.Module):
    """Wraps a backbone and records how many images each forward saw."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(x.shape[0])
        return self.inner(x)


def trained_bn_backbone(seed: int = 0) -> nn.Module:
    """A CIFAR-stem ResNet-18 whose BatchNorm running statistics are not the init ones."""
    torch.manual_seed(seed)
    net = build_backbone("cifar")
    net.train()
    with torch.no_grad():
        net(torch.randn(8, 3, 16, 16))
    return net.eval()


@pytest.fixture(scope="module")
def tiny_data():
    x, y = make_synthetic(60, seed=5)
    xt, yt = make_synthetic(37, seed=6)  # 37: not a multiple of any batch size used below
    return ProbeData(x[:, ::2, ::2].copy(), y, xt[:, ::2, ::2].copy(), yt, [str(i) for i in range(10)])


def test_extract_features_matches_per_image_reference():
    x, _ = make_synthetic(13, seed=1)
    backbone = CountingBackbone(trained_bn_backbone())
    backbone.train()  # extract_features must switch to eval and then restore train mode
    got = extract_features(backbone, x, 32, MEAN, STD, CPU, batch_size=5)
    assert backbone.training
    assert backbone.seen == [5, 5, 3]  # every image exactly once, nothing padded
    assert got.shape == (13, 512) and got.dtype == torch.float32
    # Independent reference: the PIL evaluation transform, one image at a time, eval mode.
    inner = backbone.inner.eval()
    t = eval_transform(32, MEAN, STD)
    with torch.no_grad():
        want = torch.cat([inner(t(img).unsqueeze(0)) for img in x])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_extract_features_resizes_to_the_checkpoint_size():
    x, _ = make_synthetic(5, seed=2)
    backbone = trained_bn_backbone()
    h16 = extract_features(backbone, x, 16, MEAN, STD, CPU)
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, size=(16, 16), mode="bilinear",
                        align_corners=False, antialias=True)
    ref = (ref - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(h16, backbone(ref), rtol=1e-4, atol=1e-4)


def test_features_are_float32_unless_bf16_is_asked_for(monkeypatch):
    """Features used to run under bf16 autocast on every GPU, so GPU and CPU probes saw different features.
    Now the default pass never enters the bf16 autocast; --feature_precision bf16 does, on a native-bf16 GPU."""
    import utils.eval.features as features

    entered = []
    monkeypatch.setattr(features, "autocast_context", lambda device, enabled=True: entered.append(device) or (
        torch.autocast("cpu", enabled=False)))
    x, _ = make_synthetic(3, seed=1)
    backbone = trained_bn_backbone()
    fp32 = extract_features(backbone, x, 16, MEAN, STD, CPU)
    assert entered == [] and fp32.dtype == torch.float32
    # Inside a caller's bf16 autocast the pass still computes in float32 (autocast switched off).
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = extract_features(backbone, x, 16, MEAN, STD, CPU)
    torch.testing.assert_close(inside, fp32, rtol=1e-5, atol=1e-5)
    # bf16 is taken only where it is native: a CUDA device whose hardware has it.
    cuda = torch.device("cuda")
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(features, "bf16_native", lambda native=native: native)
        assert features.feature_precision_used("bf16", cuda) == want
        assert features.feature_precision_used("fp32", cuda) == "fp32"
    assert features.feature_precision_used("bf16", CPU) == "fp32"
    features.precision_context("bf16", cuda)  # bf16_native now says False: float32, no autocast
    assert entered == []
    monkeypatch.setattr(features, "bf16_native", lambda: True)
    features.precision_context("bf16", cuda)
    assert entered == [cuda]
    with pytest.raises(ValueError, match="fp16"):
        features.feature_precision_used("fp16", CPU)


def test_float32_features_on_cuda_turn_tf32_convolutions_off(monkeypatch):
    """fp32 on a GPU means fp32: cuDNN's TF32 convolutions (on by default) are off during the pass, restored after."""
    import utils.eval.features as features

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with features.precision_context("fp32", torch.device("cuda")):
        assert torch.backends.cudnn.allow_tf32 is False
        assert not torch.is_autocast_enabled("cuda")
    assert torch.backends.cudnn.allow_tf32 is True


def test_cached_and_uncached_probes_agree(tiny_data):
    """The head trained on cached features equals one trained on features computed per batch."""
    backbone = trained_bn_backbone()
    pre = Preprocess(16, MEAN, STD)
    config = make_config(ORIGINAL_SIMCLR_PROBE, epochs=2, batch_size=16)
    torch.manual_seed(3)
    head_cached = build_probe_head(512, 10)
    head_uncached = build_probe_head(512, 10)
    head_uncached.load_state_dict(head_cached.state_dict())
    nn.init.zeros_(head_uncached.weight)  # run_linear_probe starts a one-layer head at zero
    nn.init.zeros_(head_uncached.bias)

    result = run_linear_probe(backbone, head_cached, tiny_data, config, pre, CPU, seed=7, feature_norm="none",
                              knn=False)

    # Reference: the same loop, but every batch goes through the backbone (eval transform) again.
    images = torch.from_numpy(tiny_data.train_images).permute(0, 3, 1, 2)
    t = eval_transform(16, MEAN, STD)

    def uncached_logits(idx):
        with torch.no_grad():
            x = torch.stack([t(tiny_data.train_images[i]) for i in idx.tolist()])
            h = backbone(x)
        return head_uncached(h)

    assert images.shape[0] == 60
    ref = fit(list(head_uncached.parameters()), uncached_logits, torch.as_tensor(tiny_data.train_labels), config,
              lambda: {}, torch.Generator().manual_seed(7))
    for a, b in zip(head_cached.parameters(), head_uncached.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert [r["train_loss"] for r in result.history] == pytest.approx([r["train_loss"] for r in ref], rel=1e-4)


def test_probe_freezes_and_guard_passes(tiny_data):
    backbone = trained_bn_backbone()
    backbone.train()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = run_linear_probe(backbone, build_probe_head(512, 10), tiny_data, make_config(ORIGINAL_SIMCLR_PROBE, 2),
                              Preprocess(16, MEAN, STD), CPU)
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    assert result.extra["guard"]["backbone_bit_identical"]
    assert result.extra["guard"]["tensors_checked"] == len(reference)
    verify_backbone_unchanged(backbone, reference)
    assert len(result.history) == 2 and all(r["test_count"] == 37 for r in result.history)
    assert isinstance(result.head, nn.Sequential) and isinstance(result.head[0], Standardize)


def test_augmented_probe_recomputes_train_features(tiny_data, monkeypatch):
    calls = []
    real = probe.extract_features

    def spy(backbone, images, *args, **kwargs):
        calls.append((len(images), kwargs.get("augment") is not None))
        return real(backbone, images, *args, **kwargs)

    monkeypatch.setattr(probe, "extract_features", spy)
    result = run_linear_probe(trained_bn_backbone(), build_probe_head(512, 10), tiny_data, make_config(ORIGINAL_SIMCLR_PROBE, 3),
                              Preprocess(16, MEAN, STD), CPU, augment=True)
    # Test features once (no augmentation), then train features with augmentation once per epoch.
    assert calls == [(37, False), (60, True), (60, True), (60, True)]
    assert result.extra["guard"]["backbone_bit_identical"] and "knn" not in result.extra


def test_guard_catches_batchnorm_drift(tiny_data, monkeypatch):
    """A feature pass that (wrongly) runs the backbone in train mode moves BN statistics: caught."""
    real = probe.extract_features

    def leaky(backbone, images, *args, **kwargs):
        backbone.train()
        with torch.no_grad():
            backbone(torch.randn(4, 3, 16, 16))
        return real(backbone, images, *args, **kwargs)

    monkeypatch.setattr(probe, "extract_features", leaky)
    with pytest.raises(FrozenBackboneError, match="changed the frozen backbone"):
        run_linear_probe(trained_bn_backbone(), build_probe_head(512, 10), tiny_data, make_config(ORIGINAL_SIMCLR_PROBE, 1),
                         Preprocess(16, MEAN, STD), CPU)


def test_guard_catches_a_changed_parameter_or_buffer():
    backbone = trained_bn_backbone()
    reference = {k: v.clone() for k, v in backbone.state_dict().items()}
    verify_backbone_unchanged(backbone, reference)
    for key in ("layer1.0.conv1.weight", "bn1.running_var", "layer4.1.bn2.num_batches_tracked"):
        changed = {k: v.clone() for k, v in reference.items()}
        flat = changed[key].view(-1)
        flat[0] = flat[0] + 1 if flat.dtype == torch.long else torch.nextafter(flat[0], flat[0] + 1)  # 1 ulp
        with pytest.raises(FrozenBackboneError, match=key.replace(".", r"\.")):
            verify_backbone_unchanged(backbone, changed)


def test_optimizer_holding_backbone_params_is_refused(tiny_data, monkeypatch):
    """A deliberately unfrozen run (backbone parameters handed to the optimizer) stops before training."""
    monkeypatch.setattr(probe, "optimizer_parameters",
                        lambda backbone, head: list(backbone.parameters()) + list(head.parameters()))
    with pytest.raises(FrozenBackboneError, match="outside the probe head"):
        run_linear_probe(trained_bn_backbone(), build_probe_head(512, 10), tiny_data, make_config(ORIGINAL_SIMCLR_PROBE, 1),
                         Preprocess(16, MEAN, STD), CPU)


def test_evaluate_head_counts_every_row_once():
    torch.manual_seed(0)
    h, y = torch.randn(37, 8), torch.randint(0, 3, (37,))
    head = nn.Linear(8, 3)
    out = evaluate_head(head, h, y, batch_size=10)
    assert out["count"] == 37
    with torch.no_grad():
        logits = head(h)
    assert out["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    assert out["acc"] == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())


def test_split_epochs():
    assert split_epochs(1) == (1, 0)
    assert split_epochs(5) == (3, 2)
    assert split_epochs(30) == (15, 15)
    assert split_epochs(100) == (50, 50)


def cosine(lr, final, t, span):
    return final + (lr - final) * 0.5 * (1 + math.cos(math.pi * min(1.0, t / span)))


def test_two_stage_lr_at_stage_boundaries():
    """The original's supervised probe: lr, then lr / 10, each stage's cosine spanning that stage."""
    spe = 7
    config = make_config(TUNED_PROBE, epochs=100, batch_size=128, lr=0.01, schedule="two-stage", optimizer="sgd")
    assert config.schedule == "two-stage" and config.batch_size == 128 and config.optimizer == "sgd"
    assert [(s.epochs, s.lr, s.final_lr) for s in config.stages] == [(50, 0.01, 0.0), (50, 0.001, 0.0)]
    lr = lambda step: scheduled_lr(config, step, spe)
    assert lr(0) == pytest.approx(0.01)
    assert lr(25 * spe) == pytest.approx(cosine(0.01, 0.0, 25 * spe, 50 * spe)) == pytest.approx(0.005)
    # Each stage's floor comes one step after its last: its last step still trains.
    assert lr(50 * spe - 1) == pytest.approx(cosine(0.01, 0.0, 50 * spe - 1, 50 * spe)) and lr(50 * spe - 1) > 0
    assert lr(50 * spe) == pytest.approx(0.001)  # stage 2 restarts at lr / 10
    assert lr(100 * spe - 1) == pytest.approx(cosine(0.001, 0.0, 50 * spe - 1, 50 * spe)) and lr(100 * spe - 1) > 0
    # The README's 5-epoch runs: 3 + 2 epochs; each stage now decays over its own length (the
    # original's 50-epoch period left the lr near its peak), and no step is at 0.
    short = make_config(TUNED_PROBE, epochs=5, lr=0.01, schedule="two-stage", optimizer="sgd")
    assert all(scheduled_lr(short, k, spe) > 0 for k in range(5 * spe))
    assert scheduled_lr(short, 3 * spe, spe) == pytest.approx(0.001)
    # --test_learning_rate sets stage 1; stage 2 gets a tenth.
    assert [s.lr for s in make_config(TUNED_PROBE, 4, lr=0.05, schedule="two-stage").stages] == pytest.approx(
        [0.05, 0.005])


def test_training_follows_the_schedule():
    """The lr the optimizer really used at each epoch's first and last steps matches scheduled_lr."""
    torch.manual_seed(0)
    h, y = torch.randn(50, 6), torch.randint(0, 3, (50,))
    head = nn.Linear(6, 3)
    config = make_config(TUNED_PROBE, epochs=5, batch_size=16, lr=0.01, schedule="two-stage", optimizer="sgd")
    hist = fit(list(head.parameters()), lambda idx: head(h[idx]), y, config, lambda: {},
               torch.Generator().manual_seed(0))
    spe = 4  # steps per epoch
    assert [r["stage"] for r in hist] == [1, 1, 1, 2, 2]
    for e, row in enumerate(hist):
        assert row["lr_first"] == pytest.approx(scheduled_lr(config, e * spe, spe))
        assert row["lr_last"] == pytest.approx(scheduled_lr(config, (e + 1) * spe - 1, spe))
        assert row["lr_last"] > 0  # each stage's cosine reaches 0 after its last step, not on it
    assert hist[3]["lr_first"] == pytest.approx(0.001)


def test_recipe_probe_is_one_cosine_for_every_checkpoint_type():
    config = make_config(TUNED_PROBE, epochs=10)
    assert (config.schedule, config.batch_size, config.optimizer, config.weight_decay) == ("cosine", 1000, "adam", 5e-6)
    assert scheduled_lr(config, 0, 3) == pytest.approx(1e-3)
    # Horizon = the probe's own 30 steps: the last trains one step short of the floor, which comes after it.
    assert scheduled_lr(config, 29, 3) == pytest.approx(cosine(1e-3, 0.0, 29, 30))
    assert all(scheduled_lr(config, k, 3) > 0 for k in range(30))
    original = make_config(ORIGINAL_SIMCLR_PROBE, epochs=10)
    assert (original.batch_size, original.optimizer) == (32, "sgd")
    assert scheduled_lr(original, 0, 3) == pytest.approx(0.075)
    assert scheduled_lr(original, 29, 3) == pytest.approx(cosine(0.075, 1e-3, 29, 30)) and cosine(0.075, 1e-3, 29, 30) > 1e-3
    assert isinstance(config.make_optimizer([nn.Parameter(torch.zeros(1))], 1e-3), torch.optim.Adam)


def test_standardize_has_no_parameters_and_whitens():
    h = torch.randn(500, 4) * torch.tensor([1.0, 10.0, 100.0, 0.1]) + 5
    s = Standardize.fit(h)
    out = s(h)
    assert list(s.parameters()) == []
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.std(0, unbiased=False), torch.ones(4), atol=1e-3, rtol=0)


def test_make_config_rejects_bad_values():
    from utils.errors import UserError

    for kwargs in ({"epochs": 0}, {"epochs": 1, "lr": -1.0}, {"epochs": 1, "schedule": "step"},
                   {"epochs": 1, "lr": float("nan")}, {"epochs": 1, "optimizer": "lbfgs"}):
        with pytest.raises(UserError):
            make_config(TUNED_PROBE, **kwargs)
