"""Runs that survive (issue 8): exact resume after SIGTERM/SIGINT/SIGKILL, and the NaN guard.

Kill-and-resume: `python train.py` runs as a subprocess and, through the test hook
SIMCLR_TEST_SIGNAL_AT_STEP ("N:SIG": send SIG to itself after optimizer step N), is stopped by
SIGTERM or SIGINT (which save last.pth mid-epoch and exit 128 + signum), then killed by SIGKILL
in the middle of epoch 2, then run again to the end. Its final.pth must equal, tensor by tensor
(torch.equal), that of one uninterrupted run with the same seed, and so must metrics.csv's losses.

    python -m pytest tests/test_resume.py -q
"""
import csv
import hashlib
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from utils.checkpoint import load_checkpoint
from utils.errors import run_cli
from utils.methods.simclr import SimCLR

ROOT = Path(__file__).resolve().parent.parent
# 30 synthetic images (3 per class), batches of 10: 3 steps per epoch, 6 in all; 8 px keeps it cheap.
STEPS_PER_EPOCH = 3
TINY = ["--dataset", "synthetic", "--data_scale", "0.015", "--batch_size", "10", "--epochs", "2",
        "--device", "cpu", "--image_size", "8", "--quiet", "--seed", "3"]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on 2 cores shared with other jobs, two threads were measured 30x slower
    (spinning OpenMP workers), and the same thread count in every run keeps results bit-comparable."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(run_dir: Path, flags: list[str], signal_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(train.TEST_SIGNAL_ENV, None)
    if signal_at:
        env[train.TEST_SIGNAL_ENV] = signal_at
    return subprocess.run([sys.executable, "train.py", *TINY, *flags, "--run_dir", str(run_dir)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_state(run_dir: Path) -> tuple[int, int, int]:
    ckpt = load_checkpoint(run_dir / "last.pth")
    assert ckpt["finished"] is False
    return ckpt["train_state"]["epoch"], ckpt["train_state"]["step_in_epoch"], ckpt["step"]


# (flags shared by every run of the path, flags of the first run, its signal, the second run's flags)
PATHS = {
    # DataLoader path (PIL augmentation in workers), SimCLR: SIGTERM mid-epoch 1, then SIGKILL mid-epoch 2
    # in a run with 2 workers (workers may differ between a run and its resumption).
    "dataloader-simclr": (["--aug", "cpu", "--workers", "0", "--deterministic"], "TERM", 2, ["--workers", "2"]),
    # Device path (batched augmentation on the device, here the CPU), supervised: SIGINT after the last
    # step of epoch 1 (a checkpoint at step 3 of 3), then SIGKILL mid-epoch 2.
    "device-supervised": (["--aug", "gpu", "--workers", "0", "--deterministic", "--train_type", "supervised"],
                          "INT", 3, []),
}


@pytest.mark.slow
@pytest.mark.parametrize("path", list(PATHS))
def test_signal_then_sigkill_then_resume_is_bitwise_identical(tmp_path, path):
    flags, first_signal, first_step, second_flags = PATHS[path]
    reference = tmp_path / "reference"
    done = _train(reference, flags)
    assert done.returncode == 0, done.stderr

    run = tmp_path / "interrupted"
    # 1. SIGTERM / SIGINT: last.pth at the end of the current step, a message on how to resume, exit 128 + signum.
    stopped = _train(run, flags, f"{first_step}:{first_signal}")
    signum = getattr(signal, f"SIG{first_signal}")
    assert stopped.returncode == 128 + signum, stopped.stderr
    assert (f"stopped by SIG{first_signal} at epoch 1, step {first_step}/{STEPS_PER_EPOCH}" in stopped.stderr
            and f"To resume, run the same command with --run_dir {run}" in stopped.stderr)
    assert "Traceback" not in stopped.stderr
    assert _train_state(run) == (0, first_step, first_step) and not (run / "final.pth").exists()

    # 2. The same command resumes from there; SIGKILL (no chance to save) hits in the middle of epoch 2.
    killed = _train(run, flags + second_flags, f"{STEPS_PER_EPOCH + 2}:KILL")
    assert killed.returncode == -signal.SIGKILL
    log = (run / "train.log").read_text()
    assert f"epoch 1, {first_step} of {STEPS_PER_EPOCH} steps done" in log
    assert _train_state(run) == (1, 0, STEPS_PER_EPOCH) and not (run / "final.pth").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]

    # 3. Once more: resumes from the end of epoch 1 and finishes.
    finished = _train(run, flags)
    assert finished.returncode == 0, finished.stderr
    assert f"epoch 2, 0 of {STEPS_PER_EPOCH} steps done" in (run / "train.log").read_text()

    a, b = load_checkpoint(reference / "final.pth"), load_checkpoint(run / "final.pth")
    assert a["step"] == b["step"] == 2 * STEPS_PER_EPOCH and b["finished"] is True
    for part in ("backbone", "head"):
        assert a[part].keys() == b[part].keys()
        different = [k for k in a[part] if not torch.equal(a[part][k], b[part][k])]
        assert not different, f"{part}: {different[:5]}"
    ref_rows, run_rows = _rows(reference), _rows(run)
    for key in ("epoch", "loss", "train_acc", "contrastive_acc", "lr_first", "lr_last", "skipped_steps"):
        assert [r[key] for r in ref_rows] == [r[key] for r in run_rows], key


# --- NaN guard, in-process: the objective is wrapped to return NaN at chosen calls -----------------

IN_PROCESS = TINY + ["--workers", "0", "--aug", "gpu"]


def _nan_objective(monkeypatch, nan_at, on_call=None):
    """Wrap SimCLR's step (utils/methods/simclr.py): the loss of the calls in `nan_at(call)` is NaN (graph kept)."""
    original = SimCLR.forward
    calls = {"n": 0}

    def objective(method, views, labels=None):
        calls["n"] += 1
        if on_call:
            on_call(calls["n"], method)
        loss, extra = original(method, views, labels)
        return (loss * math.nan if nan_at(calls["n"]) else loss), extra

    monkeypatch.setattr(SimCLR, "forward", objective)
    return calls


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_nan_stops_with_message_and_keeps_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    seen = {}

    def on_call(n, model):
        if n == STEPS_PER_EPOCH + 1:  # first step of epoch 2: last.pth is the epoch-1 one
            seen["last"] = _sha(run / "last.pth")

    _nan_objective(monkeypatch, lambda n: n >= STEPS_PER_EPOCH + 2, on_call)
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, IN_PROCESS + ["--run_dir", str(run)])
    err = capsys.readouterr().err
    assert info.value.code == 3
    assert err.strip() == (f"error: non-finite loss at epoch 2, step 2; the last good checkpoint is kept: "
                           f"{run / 'last.pth'} (lower --learning_rate, or --nan_policy skip)")
    assert _sha(run / "last.pth") == seen["last"]
    ckpt = load_checkpoint(run / "last.pth")
    assert (ckpt["train_state"]["epoch"], ckpt["train_state"]["step_in_epoch"]) == (1, 0)
    assert all(torch.isfinite(v.float()).all() for v in ckpt["backbone"].values())
    assert not (run / "final.pth").exists()


def test_nan_in_first_epoch_says_no_checkpoint_yet(tmp_path, monkeypatch):
    _nan_objective(monkeypatch, lambda n: n == 2)
    with pytest.raises(train.NonFiniteLossError, match="epoch 1, step 2; no checkpoint was written yet"):
        train.main(IN_PROCESS + ["--run_dir", str(tmp_path / "run")])


def test_nan_skip_drops_steps_counts_them_and_stops_after_max_in_a_row(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    snapshots = {}

    def on_call(n, model):
        snapshots[n] = [p.detach().clone() for p in model.parameters()]

    # Epoch 1: step 2 is NaN (skipped). Epoch 2: step 1 fine, then NaN for ever: stop after 2 in a row.
    _nan_objective(monkeypatch, lambda n: n == 2 or n >= STEPS_PER_EPOCH + 2, on_call)
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, IN_PROCESS + ["--run_dir", str(run), "--nan_policy", "skip", "--max_nan_skips", "2"])
    assert info.value.code == 3
    assert capsys.readouterr().err.strip().startswith(
        "error: 2 non-finite losses in a row (--max_nan_skips) at epoch 2, step 3; the last good checkpoint is kept")
    # The skipped step changed no parameter; the others did.
    assert all(torch.equal(a, b) for a, b in zip(snapshots[2], snapshots[3]))
    assert not all(torch.equal(a, b) for a, b in zip(snapshots[1], snapshots[2]))
    rows = _rows(run)
    assert [(r["epoch"], r["skipped_steps"]) for r in rows] == [("1", "1")]
    assert load_checkpoint(run / "last.pth")["step"] == STEPS_PER_EPOCH - 1  # optimizer steps taken


def test_reused_run_dir_drops_temp_files_left_by_a_kill(tmp_path):
    """A SIGKILL during an atomic save leaves a hidden temp file; the next run in that folder removes it."""
    run = tmp_path / "run"
    run.mkdir()
    stale = run / ".last.pth.abcd1234.tmp"
    stale.write_bytes(b"half a checkpoint")
    (run / "notes.tmp").write_text("not ours")
    train.main(TINY + ["--workers", "0", "--epochs", "0", "--run_dir", str(run)])
    assert not stale.exists() and (run / "notes.tmp").exists() and (run / "final.pth").exists()


# --- issue 14: runs that stop early leave no folder; foreign files; resume checks the data -------

def test_nan_or_a_bug_before_the_first_checkpoint_leaves_no_run_folder(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    _nan_objective(monkeypatch, lambda n: n == 2)
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, IN_PROCESS + ["--run_dir", str(run)])
    assert info.value.code == 3 and "no checkpoint was written yet" in capsys.readouterr().err
    assert not run.exists()

    def bug(*args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(SimCLR, "forward", bug)
    with pytest.raises(RuntimeError, match="a bug"):  # exit 1 with its traceback, as a bug should
        run_cli(train.cli, IN_PROCESS + ["--run_dir", str(run)])
    assert not run.exists()
    run.mkdir()  # a folder the user made stays, as it was
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(train.cli, IN_PROCESS + ["--run_dir", str(run)])
    assert run.is_dir()


@pytest.mark.parametrize("name, content", [("config.json", '{"lr": 0.1}'), ("metrics.csv", "a,b\n1,2\n"),
                                           ("curves.png", "png")])

def test_files_no_run_wrote_are_refused_unless_overwrite(tmp_path, capsys, name, content):
    run = tmp_path / "run"
    run.mkdir()
    (run / name).write_text(content)
    argv = IN_PROCESS + ["--epochs", "0", "--run_dir", str(run)]
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err == (f"error: {run} holds {name} that no training run wrote; a run would "
                                            "overwrite them: use a new --run_dir, or --overwrite to replace them\n")
    assert (run / name).read_text() == content and sorted(p.name for p in run.iterdir()) == [".lock", name]
    train.main(argv + ["--overwrite"])
    assert (run / "final.pth").exists()


def test_our_own_leftovers_are_not_foreign(tmp_path):
    """A run that crashed before its first checkpoint in a folder the user made left config.json and
    train.log there: the next run goes ahead."""
    run = tmp_path / "run"
    train.main(IN_PROCESS + ["--epochs", "0", "--run_dir", str(run)])
    (run / "final.pth").unlink()
    train.main(IN_PROCESS + ["--epochs", "0", "--run_dir", str(run)])
    assert (run / "final.pth").exists()


def _folder(root: Path, per_class: int, seed: int) -> Path:
    from PIL import Image
    import numpy as np

    rng = np.random.default_rng(seed)
    for c in ("a", "b", "c"):
        (root / "train" / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (10, 10, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")
    return root


def test_resume_refuses_other_data_naming_what_changed(tmp_path, capsys):
    import shutil

    data, run = _folder(tmp_path / "d", 4, 0), tmp_path / "run"
    flags = ["--dataset", "folder", "--data_scale", "1", "--batch_size", "4", "--epochs", "1", "--device", "cpu",
             "--image_size", "8", "--quiet", "--workers", "0", "--aug", "gpu", "--run_dir", str(run)]
    train.main(flags + ["--data_dir", str(data)])
    (run / "final.pth").unlink()  # now an unfinished run: its last.pth is resumed by the same command

    def refused(data_dir) -> str:
        with pytest.raises(SystemExit) as info:
            run_cli(train.cli, flags + ["--data_dir", str(data_dir)])
        assert info.value.code == 2
        return capsys.readouterr().err

    other = _folder(tmp_path / "other", 4, 1)  # same size and classes, other pixels
    err = refused(other)
    assert err.startswith(f"error: {run / 'last.pth'} was trained on other data (data_sha256: ")
    assert f"data_dir: {str(data)!r} -> {str(other)!r}" in err and "--overwrite" in err and err.count("\n") == 1

    _folder(data, 5, 2)  # images added to the same folder
    err = refused(data)
    assert "num_train: 12 -> 15; subset_sha256: " in err and "data_dir" not in err
    (data / "train" / "d").mkdir()
    shutil.copy(data / "train" / "a" / "0.png", data / "train" / "d" / "0.png")
    assert "classes: 3 -> 4 (added d)" in refused(data)

    before = load_checkpoint(run / "last.pth")
    assert before["data"]["num_train"] == 12  # nothing was touched
    train.main(flags + ["--data_dir", str(data), "--overwrite"])
    assert load_checkpoint(run / "final.pth")["data"]["num_train"] == 16


def test_resume_from_moved_but_identical_data_goes_ahead(tmp_path):
    import shutil

    data, run = _folder(tmp_path / "d", 4, 0), tmp_path / "run"
    flags = ["--dataset", "folder", "--data_scale", "1", "--batch_size", "4", "--epochs", "1", "--device", "cpu",
             "--image_size", "8", "--quiet", "--workers", "0", "--aug", "gpu", "--run_dir", str(run)]
    train.main(flags + ["--data_dir", str(data)])
    (run / "final.pth").unlink()
    moved = tmp_path / "moved"
    shutil.copytree(data / "train", moved / "train")
    train.main(flags + ["--data_dir", str(moved)])
    assert (run / "final.pth").exists()


def test_resume_from_a_last_pth_with_nan_weights_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    train.main(IN_PROCESS + ["--epochs", "1", "--run_dir", str(run)])
    (run / "final.pth").unlink()
    ckpt = load_checkpoint(run / "last.pth")
    name = next(iter(ckpt["head"]))
    ckpt["head"][name].view(-1)[0] = float("nan")
    from utils.checkpoint import save_checkpoint
    save_checkpoint(run / "last.pth", ckpt)
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, IN_PROCESS + ["--epochs", "1", "--run_dir", str(run)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: cannot resume: {run / 'last.pth'}: tensor head.{name} holds 1 NaN value(s)")
    assert "--overwrite" in err

@pytest.mark.slow
def test_steps_budget_killed_in_its_partial_last_epoch_resumes_bitwise(tmp_path):
    """--steps 7 at 3 steps per epoch: epochs of 3, 3 and 1 steps. SIGKILL right after step 7 (the
    partial epoch's only step, before its checkpoint), then the same command: it ends at step 7 with the
    weights and metrics of an uninterrupted run."""
    flags = [f for f in TINY if f not in ("--epochs", "2")] + ["--steps", "7", "--aug", "gpu", "--workers", "0",
                                                               "--deterministic"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(train.TEST_SIGNAL_ENV, None)

    def run(run_dir, signal_at=None):
        e = dict(env, **({train.TEST_SIGNAL_ENV: signal_at} if signal_at else {}))
        return subprocess.run([sys.executable, "train.py", *flags, "--run_dir", str(run_dir)], cwd=ROOT, env=e,
                              capture_output=True, text=True, timeout=300)

    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    assert run(reference).returncode == 0
    assert run(resumed, "7:KILL").returncode == -signal.SIGKILL
    assert _train_state(resumed) == (2, 0, 6) and not (resumed / "final.pth").exists()
    finished = run(resumed)
    assert finished.returncode == 0, finished.stderr
    a, b = load_checkpoint(reference / "final.pth"), load_checkpoint(resumed / "final.pth")
    assert a["step"] == b["step"] == 7 and a["epoch"] == b["epoch"] == 3
    for part in ("backbone", "head"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    assert [r["step"] for r in _rows(reference)] == ["3", "6", "7"]
    for key in ("epoch", "step", "loss", "lr_first", "lr_last"):
        assert [r[key] for r in _rows(reference)] == [r[key] for r in _rows(resumed)], key
