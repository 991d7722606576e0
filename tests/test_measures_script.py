"""test.py --eval_views K and --knn end to end on offline data (utils/eval/measures.py, views.py, knn.py).

    python -m pytest tests/test_measures_script.py -q
"""
from __future__ import annotations

import json

import pytest
import torch

import test as test_script
from test_test_script import cut_synthetic, make_checkpoint
from utils.augment import BatchSimCLRAugment
from utils.data.datasets import load_split
from utils.errors import UserError
from utils.eval.probe import Preprocess
from utils.eval.views import score_augmented_views, view_seed
from utils.recipes import recipe

N_TRAIN, N_TEST = 30, 8  # few images: the naive reference runs the backbone once per view and image


@pytest.fixture
def small_synthetic(monkeypatch):
    cut_synthetic(monkeypatch, N_TRAIN, N_TEST)


def naive_augmented_scores(backbone, head, spec, views, seed, image_size, mean, std):
    """Per test image and view: make the view alone, run the backbone, standardise with the probe's
    statistics, apply the head's W h + b, compare with the label; mean loss and accuracy (%)."""
    test = load_split("synthetic", "test")
    augment = BatchSimCLRAugment(image_size, mean, std, spec)
    standardize, linear = head[0], head[1]
    losses, hits = [], 0
    for k in range(views):
        for i in range(N_TEST):
            x = torch.from_numpy(test.images[i]).permute(2, 0, 1)[None]
            x = augment(x, generator=torch.Generator().manual_seed(view_seed(seed, k, i)))
            with torch.no_grad():
                h = backbone(x)[0].double()
                z = (h - standardize.mean.double()) * standardize.scale.double()
                logits = linear.weight.double() @ z + linear.bias.double()
            y = int(test.labels[i])
            losses.append((torch.logsumexp(logits, 0) - logits[y]).item())
            hits += int(logits.argmax().item() == y)
    return sum(losses) / len(losses), 100.0 * hits / len(losses)


def test_eval_views_and_knn_add_keys_and_lines_and_match_a_naive_loop(tmp_path, small_synthetic, monkeypatch,
                                                                       capsys):
    ckpt = make_checkpoint(tmp_path / "final.pth")
    captured = {}
    real = test_script.run_linear_probe

    def capture(backbone, *args, **kwargs):
        result = real(backbone, *args, **kwargs)
        captured.update(backbone=backbone, head=result.head)
        return result

    monkeypatch.setattr(test_script, "run_linear_probe", capture)
    base = ["--model_path", str(ckpt), "--test_num_epochs", "2", "--quiet", "--device", "cpu", "--dataset", "synthetic"]

    def run(name, *extra):
        report = test_script.main(base + ["--run_dir", str(tmp_path / name), *extra])
        assert json.loads((tmp_path / name / "eval.json").read_text()) == json.loads(json.dumps(report))
        return report, [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]

    plain, plain_lines = run("plain")
    full, lines = run("full", "--eval_views", "2", "--knn", "--eval_hflip_prob", "0", "--eval_view_seed", "3")

    # K=0 (the default) leaves eval.json as it was; the measures only add keys, the probe is untouched
    added = {"augmented_test_accuracy", "augmented_test_loss", "augmented_test", "knn10_accuracy", "knn200_accuracy",
             "knn10", "neighbours"}  # neighbours: the picture neighbours.png draws (utils/eval/neighbours.py)
    assert test_script.parse_args(["--model_path", "X.pth"]).eval_views == 0
    assert not added & set(plain) and len(plain_lines) == 1
    assert set(full) - set(plain) == added
    assert full["test_accuracy"] == plain["test_accuracy"] and full["test_loss"] == plain["test_loss"]

    aug = full["augmented_test"]
    assert aug["views_per_image"] == 2 and aug["views_scored"] == 2 * N_TEST and aug["seed"] == 3
    assert aug["spec"]["hflip_prob"] == 0 and aug["spec_source"]["hflip_prob"] == "flag"
    simclr = recipe("tuned", "simclr")  # the test checkpoint records no SimCLR view settings: the recipe's
    assert aug["spec"]["crop_min_scale"] == simclr["crop_min_scale"] and aug["spec_source"]["gray_prob"] == "recipe"
    from utils.augment import SimCLRViewSpec
    spec = SimCLRViewSpec(**{k: aug["spec"][k] for k in ("crop_min_scale", "hflip_prob", "jitter", "jitter_prob",
                                                         "gray_prob", "blur_prob")})
    loss, acc = naive_augmented_scores(captured["backbone"], captured["head"], spec, 2, 3, 16,
                                       full["preprocessing"]["mean"], full["preprocessing"]["std"])
    assert full["augmented_test_accuracy"] == pytest.approx(acc)
    assert full["augmented_test_loss"] == pytest.approx(loss, rel=1e-4)

    assert full["knn200_accuracy"] == full["knn"]["test_acc"] == plain["knn"]["test_acc"]
    assert full["knn10"]["k"] == 10 and full["knn10"]["votes"] == "uniform"
    assert full["knn10_accuracy"] == full["knn10"]["test_acc"] and 0 <= full["knn10_accuracy"] <= 100
    assert lines[-1] == plain_lines[-1]  # the result line stays last, the measures' lines come before it
    assert lines[-3] == (f"kNN accuracy: k=10 uniform {full['knn10_accuracy']:.2f}%, "
                         f"k=200 weighted {full['knn200_accuracy']:.2f}%")
    assert lines[-2] == (f"augmented test views (2 per image): loss {full['augmented_test_loss']:.4f}, "
                         f"accuracy {full['augmented_test_accuracy']:.2f}%")

    # --solver lbfgs: the same scoring of its (Standardize, linear) head
    lbfgs, _ = run("lbfgs", "--solver", "lbfgs", "--l2", "1e-2", "--lbfgs_max_iter", "5", "--eval_views", "1")
    test = load_split("synthetic", "test")
    pre = Preprocess(16, tuple(full["preprocessing"]["mean"]), tuple(full["preprocessing"]["std"]))
    spec = SimCLRViewSpec(**{**spec.__dict__, "hflip_prob": simclr["hflip_prob"]})  # no flag given this time
    want = score_augmented_views(captured["backbone"], captured["head"], test.images[:N_TEST], test.labels[:N_TEST],
                                 pre, spec, 1, 0, torch.device("cpu"))
    assert lbfgs["hyperparameters"]["solver"] == "lbfgs" and lbfgs["augmented_test"]["views_scored"] == N_TEST
    assert lbfgs["augmented_test_accuracy"] == pytest.approx(want["acc"])
    assert lbfgs["augmented_test_loss"] == pytest.approx(want["loss"], rel=1e-5)


@pytest.mark.parametrize("extra, message", [
    (["--eval_views", "1", "--finetune"], "--eval_views"), (["--knn", "--finetune"], "--knn"),
    (["--knn", "--augment"], "--augment"),
])
def test_measures_refuse_what_they_cannot_score(extra, message):
    with pytest.raises(UserError, match=message):
        test_script.main(["--model_path", "X.pth", *extra])


@pytest.mark.parametrize("flag", ["--eval_views", "--eval_view_seed", "--eval_crop_min_scale", "--eval_hflip_prob",
                                  "--eval_jitter_strength", "--eval_gray_prob", "--eval_blur_prob"])
def test_measure_flags_refuse_out_of_range_values(flag, capsys):
    with pytest.raises(SystemExit) as info:
        test_script.parse_args(["--model_path", "X.pth", flag, "-1"])
    assert info.value.code == 2 and flag in capsys.readouterr().err
