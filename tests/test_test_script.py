"""test.py end to end on offline data: eval.json, curves, printed line, fine-tune kept apart, errors.

    python -m pytest tests/test_test_script.py -q            # fast ones
    python -m pytest tests/test_test_script.py -q -m slow    # SimCLR-pretrained beats random init
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import test as test_script
import utils.eval.probe as probe
from models import build_model
from utils.checkpoint import FORMAT, save_checkpoint
from utils.data.constants import SYNTHETIC_MEAN, SYNTHETIC_STD
from utils.data.datasets import ImageArrays, load_split
from utils.runtime import setup_logging

ROOT = Path(__file__).resolve().parent.parent
N_TRAIN, N_TEST = 60, 37  # 37: not a multiple of any batch size, so a dropped remainder would show


def make_checkpoint(path: Path, train_type: str = "simclr", image_size: int = 16, dataset: str = "synthetic",
                    mean=SYNTHETIC_MEAN, std=SYNTHETIC_STD) -> Path:
    """A checkpoint in train.py's format, built directly (no training): CIFAR stem, 16 px by default."""
    torch.manual_seed(0)
    spec = {"train_type": train_type, "stem": "cifar", "num_classes": 10 if train_type == "supervised" else None,
            "proj_hidden_dim": 32, "proj_dim": 16, "feature_dim": 512, "pretrained": False}
    model = build_model(spec)
    model.train()
    with torch.no_grad():  # move the BatchNorm statistics away from their initial values
        model(torch.randn(16, 3, image_size, image_size))
    ckpt = {"format": FORMAT, "model": spec,
            "data": {"dataset": dataset, "image_size": image_size, "mean": list(mean),
                     "std": list(std), "classes": None, "data_scale": 1.0, "subset_sha256": None,
                     "num_train": 2000},
            "backbone": model.backbone.state_dict(), "head": model.head.state_dict(),
            "epoch": 3, "step": 60, "finished": True, "config": {"train_type": train_type}}
    return save_checkpoint(path, ckpt)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    make_checkpoint(d / "final.pth")
    make_checkpoint(d / "supervised.pth", train_type="supervised")
    return d


def cut_synthetic(monkeypatch, n_train: int, n_test: int) -> None:
    """The probe reads the synthetic dataset cut to its first n_train / n_test images (each split made once),
    so that a ResNet-18 runs in seconds on CPU."""
    made = {}

    def load(dataset, split, data_dir="data", download=True, image_size=None):
        if split not in made:
            full = load_split(dataset, split, data_dir, download, image_size)
            n = n_train if split == "train" else n_test
            made[split] = ImageArrays(full.images[:n], full.labels[:n], full.classes)
        return made[split]

    monkeypatch.setattr(probe, "load_split", load)


@pytest.fixture
def small_synthetic(monkeypatch):
    cut_synthetic(monkeypatch, N_TRAIN, N_TEST)


def run_main(args: list[str], capsys) -> tuple[dict, list[str]]:
    report = test_script.main(args + ["--device", "cpu", "--dataset", "synthetic"])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    return report, lines


def test_linear_eval_outputs(ckpt_dir, small_synthetic, capsys):
    ckpt = ckpt_dir / "final.pth"
    before = sha256(ckpt)
    report, lines = run_main(["--model_path", str(ckpt), "--test_num_epochs", "3", "--val_split", "0.2",
                              "--train_type", "supervised"], capsys)
    run_dir = ckpt_dir / "eval-synthetic"  # default: beside the checkpoint
    assert sha256(ckpt) == before  # the checkpoint is never written
    on_disk = json.loads((run_dir / "eval.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert (run_dir / "eval_curves.png").stat().st_size > 1000
    assert not (run_dir / "finetune.json").exists()

    assert report["protocol"] == "linear"
    assert report["checkpoint"]["sha256"] == before
    assert report["checkpoint"]["path"] == str(ckpt.resolve())
    assert report["checkpoint"]["train_type"] == "simclr"  # the checkpoint wins over --train_type
    assert report["guard"]["backbone_bit_identical"] is True
    assert report["guard"]["backbone_requires_grad"] is False and report["guard"]["backbone_mode"] == "eval"
    assert report["preprocessing"]["image_size"] == 16 and report["preprocessing"]["native_image_size"] == 32
    assert report["preprocessing"]["mean"] == pytest.approx(list(SYNTHETIC_MEAN))
    assert report["preprocessing"]["stem"] == "cifar" and "resize 32 -> 16" in report["preprocessing"]["policy"]
    hp = report["hyperparameters"]
    assert (hp["schedule"], hp["batch_size"], hp["epochs"], hp["optimizer"]) == ("cosine", 1000, 3, "adam")
    assert hp["stages"][0]["lr"] == 1e-3 and hp["trained"] == "head only" and hp["feature_norm"] == "standardize"
    assert hp["recipe"] == "tuned" and hp["head_init"] == "zeros"
    # val_split 0.2 of 60 (stratified per class) is held out of the probe's training data.
    assert report["dataset"]["num_val"] + report["dataset"]["num_train"] == N_TRAIN
    assert report["dataset"]["num_val"] > 0 and report["dataset"]["num_test"] == N_TEST
    assert report["test_images_evaluated"] == N_TEST
    h = report["history"]
    for key in ("epoch", "lr_first", "lr_last", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                "val_loss", "val_accuracy"):
        assert len(h[key]) == 3, key
    assert h["epoch"] == [1, 2, 3] and h["lr_first"][0] == pytest.approx(1e-3) and h["lr_last"][-1] > 0
    assert hp["feature_precision"] == "fp32"  # on any device unless --feature_precision bf16 (and a bf16 GPU)
    assert report["test_loss"] == h["test_loss"][-1] and report["test_accuracy"] == h["test_accuracy"][-1]
    assert report["best_val_epoch"] in (1, 2, 3)
    assert report["seconds"]["features"] > 0 and report["seconds"]["training"] > 0
    assert report["device"] == "cpu" and 0 <= report["knn"]["test_acc"] <= 100
    # The warning names the checkpoint's value; the last printed line has the agreed format.
    assert any("--train_type supervised disagrees" in ln and "simclr" in ln for ln in lines)
    assert lines[-1] == f"test loss {report['test_loss']:.4f}, test accuracy {report['test_accuracy']:.2f}%"


def test_supervised_checkpoint_gets_the_same_probe_and_two_stages_on_request(ckpt_dir, small_synthetic, capsys,
                                                                          tmp_path):
    report, _ = run_main(["--model_path", str(ckpt_dir / "supervised.pth"), "--test_num_epochs", "3",
                          "--run_dir", str(tmp_path / "same"), "--quiet"], capsys)
    hp = report["hyperparameters"]
    assert (hp["schedule"], hp["batch_size"], hp["optimizer"]) == ("cosine", 1000, "adam")  # as for SimCLR
    report, lines = run_main(["--model_path", str(ckpt_dir / "supervised.pth"), "--test_num_epochs", "3",
                              "--run_dir", str(tmp_path / "ev"), "--head_layers", "2", "--quiet",
                              "--schedule", "two-stage", "--probe_optimizer", "sgd", "--batch_size", "128",
                              "--test_learning_rate", "0.01"], capsys)
    hp = report["hyperparameters"]
    assert hp["schedule"] == "two-stage" and hp["batch_size"] == 128 and hp["head_layers"] == 2
    assert [(s["epochs"], s["lr"], s["final_lr"]) for s in hp["stages"]] == [(2, 0.01, 0.0), (1, 0.001, 0.0)]
    assert report["history"]["stage"] == [1, 1, 2] and report["history"]["lr_first"][2] == pytest.approx(0.001)
    assert (tmp_path / "ev" / "eval.json").exists()
    assert lines[-1].startswith("test loss ") and len(lines) == 1  # --quiet: only the result line


def test_finetune_is_labelled_and_writes_no_eval_json(ckpt_dir, small_synthetic, capsys):
    ckpt = ckpt_dir / "final.pth"
    before = sha256(ckpt)
    report, lines = run_main(["--model_path", str(ckpt), "--test_num_epochs", "1", "--finetune",
                              "--batch_size", "30"], capsys)
    run_dir = ckpt_dir / "finetune-synthetic"
    assert sha256(ckpt) == before
    assert report["protocol"] == "fine-tune" and "not a linear-probe result" in report["what"]
    assert (run_dir / "finetune.json").exists() and (run_dir / "finetune_curves.png").exists()
    assert not (run_dir / "eval.json").exists() and not (run_dir / "eval_curves.png").exists()
    assert "guard" not in report and "knn" not in report
    assert report["hyperparameters"]["trained"] == "backbone and head"
    assert lines[-1] == (f"fine-tune test loss {report['test_loss']:.4f}, "
                         f"test accuracy {report['test_accuracy']:.2f}%")
    assert report["test_images_evaluated"] == N_TEST


def test_lbfgs_solver_chooses_l2_on_val_and_refits(ckpt_dir, small_synthetic, capsys, tmp_path):
    """--solver lbfgs: l2 chosen on the (default 0.1) val split, refit on train + val, curves by iteration."""
    run_dir = tmp_path / "lbfgs"
    report, lines = run_main(["--model_path", str(ckpt_dir / "final.pth"), "--solver", "lbfgs", "--l2", "1e-3", "1e-1",
                              "--lbfgs_max_iter", "40", "--run_dir", str(run_dir)], capsys)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved == json.loads(json.dumps(report)) and saved["protocol"] == "linear"
    hp = saved["hyperparameters"]
    assert hp["solver"] == "lbfgs" and hp["val_split"] == 0.1 and "schedule" not in hp and "stages" not in hp
    lb = hp["lbfgs"]
    assert [row["l2"] for row in lb["selection"]] == [1e-3, 1e-1] and lb["fit_on"] == "train + val"
    best = max(row["val_acc"] for row in lb["selection"])
    assert lb["l2"] == max(row["l2"] for row in lb["selection"] if row["val_acc"] == best)
    assert saved["val_accuracy"] == next(row["val_acc"] for row in lb["selection"] if row["l2"] == lb["l2"])
    assert saved["dataset"]["num_train"] + saved["dataset"]["num_val"] == N_TRAIN
    its = saved["history"]["iterations"]
    assert its == sorted(its) and 0 < its[-1] <= 40 and its[-1] == lb["final_fit"]["iterations"]
    assert saved["test_images_evaluated"] == N_TEST and saved["guard"]["backbone_bit_identical"]
    assert (run_dir / "eval_curves.png").stat().st_size > 0
    assert lines[-1] == f"test loss {saved['test_loss']:.4f}, test accuracy {saved['test_accuracy']:.2f}%"


@pytest.mark.parametrize("extra, message", [
    (["--finetune"], "--finetune"), (["--augment"], "--augment"), (["--head_layers", "2"], "--head_layers 2"),
    (["--val_split", "0"], "validation split"), (["--l2", "-1"], "--l2 values"),
])
def test_lbfgs_solver_refuses_what_it_cannot_do(extra, message):
    with pytest.raises(test_script.UserError, match=message):
        test_script.parse_args(["--model_path", "X.pth", "--solver", "lbfgs", *extra])


def test_guard_failure_writes_nothing(ckpt_dir, small_synthetic, monkeypatch, tmp_path, capsys):
    """A run whose backbone moved (BatchNorm drift) fails loudly and leaves no eval.json behind."""
    real = probe.extract_features

    def drifting(backbone, images, *args, **kwargs):
        backbone.train()
        with torch.no_grad():
            backbone(torch.randn(4, 3, 16, 16))
        return real(backbone, images, *args, **kwargs)

    monkeypatch.setattr(probe, "extract_features", drifting)
    with pytest.raises(probe.FrozenBackboneError):
        run_main(["--model_path", str(ckpt_dir / "final.pth"), "--test_num_epochs", "1",
                  "--run_dir", str(tmp_path / "ev")], capsys)
    assert not (tmp_path / "ev" / "eval.json").exists()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("SIMCLR_DEBUG", None)
    return subprocess.run([sys.executable, str(ROOT / "test.py"), *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=120)


@pytest.mark.parametrize("kind", ["missing", "corrupt"])
def test_bad_model_path_exits_2_with_one_line(tmp_path, kind):
    path = tmp_path / "model.pth"
    if kind == "corrupt":
        path.write_bytes(b"PK\x03\x04 this is not a checkpoint" * 10)
    proc = run_cli("--model_path", str(path), "--dataset", "synthetic", "--device", "cpu")
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(path) in err[0]
    assert "Traceback" not in proc.stderr
    if kind == "corrupt":
        assert path.read_bytes() == b"PK\x03\x04 this is not a checkpoint" * 10


def test_original_readme_command_parses():
    args = test_script.parse_args(["--train_type", "supervised", "--dataset", "cifar100", "--test_num_epochs", "100",
                                   "--train_dataset", "cifar10", "--model_path", "X.pth"])
    assert (args.train_type, args.dataset, args.test_num_epochs, args.train_dataset) == (
        "supervised", "cifar100", 100, "cifar10")
    alias = test_script.parse_args(["--model_path", "X.pth", "--learning_rate", "0.3", "--train_type",
                                    "selfsupervised", "--dataset", "imagenet"])
    assert alias.test_learning_rate == 0.3 and alias.train_type == "simclr" and alias.dataset == "tiny-imagenet"


def test_original_readme_command_runs_on_cifar100(tmp_path, monkeypatch, capsys):
    """The original README's test.py line, unchanged, from a folder holding data/cifar-100-python
    (a miniature in the real pickle format: 2 train and 3 test images) and a supervised CIFAR-10
    checkpoint X.pth: the linear protocol with the tuned probe (the same for every checkpoint), every test image
    counted, and no warning (the flags agree with the checkpoint)."""
    import tarfile

    from test_data_script import _trust_miniature_md5s, make_cifar_archive
    from utils.data.constants import CIFAR10_MEAN, CIFAR10_STD

    archive, ref = make_cifar_archive(tmp_path, "cifar100")
    with tarfile.open(archive) as tf:
        tf.extractall(tmp_path / "data", filter="data")
    _trust_miniature_md5s(monkeypatch, "cifar100", ref["md5s"])
    make_checkpoint(tmp_path / "X.pth", train_type="supervised", image_size=32, dataset="cifar10",
                    mean=CIFAR10_MEAN, std=CIFAR10_STD)
    monkeypatch.chdir(tmp_path)
    setup_logging()
    argv = "--train_type supervised --dataset cifar100 --test_num_epochs 100 --train_dataset cifar10 --model_path X.pth"
    result = test_script.main(argv.split())  # exactly the original line (auto device)
    printed = capsys.readouterr().out
    assert "warning" not in printed.lower()
    assert printed.strip().splitlines()[-1].startswith("test loss ")
    saved = json.loads((tmp_path / "eval-cifar100" / "eval.json").read_text())
    assert result["protocol"] == saved["protocol"] == "linear"
    assert saved["test_images_evaluated"] == saved["dataset"]["num_test"] == len(ref["test_y"])
    assert saved["dataset"]["num_classes"] == 100 and saved["checkpoint"]["train_dataset"] == "cifar10"
    hp = saved["hyperparameters"]
    assert hp["schedule"] == "cosine" and hp["epochs"] == 100 and hp["recipe"] == "tuned"
    assert len(saved["history"]["test_accuracy"]) == 100 and saved["guard"]["backbone_bit_identical"]


def test_imagenet_weights_checkpoint_gets_the_common_probe(capsys):
    """train.py --epochs 0 --pretrained true: supervised ImageNet weights at 224 px, ImageNet stem."""
    ckpt = {"model": {"train_type": "supervised", "stem": "imagenet", "pretrained": True, "feature_dim": 512},
            "data": {"dataset": "imagenet", "image_size": 224, "mean": [0.485, 0.456, 0.406],
                     "std": [0.229, 0.224, 0.225]}, "backbone": {}, "epoch": 0, "finished": True}
    info = test_script.describe_checkpoint(ckpt, Path("imagenet.pth"))
    assert info["imagenet_weights"] and info["image_size"] == 224
    args = test_script.parse_args(["--train_type", "supervised", "--dataset", "cifar100", "--test_num_epochs", "5",
                                   "--train_dataset", "imagenet", "--model_path", "X.pth"])
    setup_logging()  # LOG to the (captured) stdout
    test_script.warn_flag_mismatches(args, info)  # the README's command: no warning
    assert "warning" not in capsys.readouterr().out
    args.train_dataset = "cifar10"
    test_script.warn_flag_mismatches(args, info)
    assert "pretrained on imagenet" in capsys.readouterr().out
    config = probe.make_config(args.probe, args.test_num_epochs)  # the same probe as for SimCLR checkpoints
    assert config.schedule == "cosine" and config.epochs == 5 and config.optimizer == "adam"
    with pytest.raises(test_script.UserError, match="lacks"):
        test_script.describe_checkpoint({"model": {}, "data": {}}, Path("bad.pth"))


@pytest.mark.slow
def test_simclr_beats_random_init_on_augmented_views_of_real_digits(tmp_path):
    """Real images: SimCLR pretraining on scikit-learn's digits makes the probe's features invariant to the views.

    2 epochs of SimCLR on the 1,438 train digits (44 steps of batch 64 at 16 px, lr 0.125, the digits preset's
    views and head) against the same network at init (both from seed 0); both probed by the default probe on
    clean train features and scored on 2 seeded augmented views of every test image (the preset's views). On
    clean test images random features are already near 98 % (docs/results.md), so the claim is on the views.
    The same cell of the digits preset (seed 0, one thread, 2026-12-01) gave 62.3 % against 50.4 % on the views
    (loss 2.33 against 2.43) and 95.5 % against 98.3 % on clean images.
    """
    import simclr_train
    import train

    common = ["--dataset", "digits", "--device", "cpu", "--quiet", "--seed", "0"]
    train.main(common + ["--run_dir", str(tmp_path / "simclr"), "--epochs", "2", "--batch_size", "64",
                         "--learning_rate", "0.125", *simclr_train.DIGITS_VIEWS.split(),
                         "--proj_hidden_dim", "512", "--proj_bn", "true"])
    train.main(common + ["--run_dir", str(tmp_path / "init"), "--epochs", "0"])
    probe = ["--dataset", "digits", "--device", "cpu", "--quiet", "--eval_views", "2",
             *[f"--eval_{t[2:]}" if t.startswith("--") else t for t in simclr_train.DIGITS_VIEWS.split()]]
    pretrained = test_script.main(["--model_path", str(tmp_path / "simclr" / "final.pth"), *probe])
    random_init = test_script.main(["--model_path", str(tmp_path / "init" / "final.pth"), *probe])
    scores = {k: (pretrained[k], random_init[k]) for k in ("augmented_test_accuracy", "test_accuracy")}
    assert pretrained["augmented_test_accuracy"] > random_init["augmented_test_accuracy"] + 5, scores
    # The probe's loss on the views is not asserted: at the same code (074645c) it was 2.33 against 2.43 on
    # 2026-12-01 and 2.52 against 2.38 on this machine on 2026-12-03 (accuracy 60.6 % against 50.0 % there):
    # the SimCLR probe is more often right on the views and more confidently wrong on the rest.


# --- issue 14 ------------------------------------------------------------------------------------

def _run_cli_in_process(argv, capsys) -> tuple[int, str]:
    from utils.errors import run_cli as run
    with pytest.raises(SystemExit) as info:
        run(test_script.main, argv)
    return info.value.code, capsys.readouterr().err


def test_checkpoint_with_nan_weights_is_refused_at_load(tmp_path, capsys):
    path = make_checkpoint(tmp_path / "diverged.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt["backbone"]["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    ckpt["backbone"]["layer2.0.conv1.weight"][1, 0, 0, 0] = float("inf")
    save_checkpoint(path, ckpt)
    code, err = _run_cli_in_process(["--model_path", str(path), "--dataset", "synthetic", "--device", "cpu",
                                     "--run_dir", str(tmp_path / "ev")], capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {path}: tensor backbone.layer2.0.conv1.weight holds 2 NaN/inf value(s)")
    assert not (tmp_path / "ev").exists()


def test_data_dir_that_is_a_file_is_one_line(ckpt_dir, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = _run_cli_in_process(["--model_path", str(ckpt_dir / "final.pth"), "--dataset", "cifar100",
                                     "--data_dir", str(tmp_path / "afile"), "--device", "cpu",
                                     "--run_dir", str(tmp_path / "ev")], capsys)
    assert code == 2 and err == f"error: cannot use {tmp_path / 'afile'} as the data folder (--data_dir): it is a file\n"
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("epoch, step_in_epoch, finished", [(3, 0, True), (2, 0, False), (2, 5, False)])
def test_last_pth_of_a_finished_run_is_not_called_unfinished(tmp_path, epoch, step_in_epoch, finished):
    """train.py writes every last.pth with finished=False; the one after the final epoch is complete."""
    path = make_checkpoint(tmp_path / "last.pth")
    ckpt = torch.load(path, weights_only=True)
    ckpt.update(finished=False, epoch=epoch, config={"train_type": "simclr", "epochs": 3},
                train_state={"epoch": epoch, "step_in_epoch": step_in_epoch, "partial": None})
    assert test_script.describe_checkpoint(ckpt, path)["finished"] is finished


def test_run_dir_name_over_the_limit_is_one_line(ckpt_dir, tmp_path, capsys):
    code, err = _run_cli_in_process(["--model_path", str(ckpt_dir / "final.pth"), "--dataset", "synthetic",
                                     "--device", "cpu", "--run_dir", str(tmp_path / ("e" * 300))], capsys)
    assert code == 2 and err.count("\n") == 1 and "is 300 bytes long, over the file system's limit of 255" in err


def test_final_lr_with_two_stages_is_refused_and_feature_precision_is_a_choice():
    """--test_final_lr used to be ignored by --schedule two-stage (each stage runs to 0): refused now."""
    from utils.errors import UserError

    with pytest.raises(UserError, match="--test_final_lr"):
        test_script.parse_args(["--model_path", "x.pth", "--schedule", "two-stage", "--test_final_lr", "0.001"])
    assert test_script.parse_args(["--model_path", "x.pth", "--test_final_lr", "0.001"]).test_final_lr == 0.001
    assert test_script.parse_args(["--model_path", "x.pth"]).feature_precision == "fp32"
    with pytest.raises(SystemExit):
        test_script.parse_args(["--model_path", "x.pth", "--feature_precision", "fp16"])
