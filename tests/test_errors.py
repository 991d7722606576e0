"""Every bad input ends with one line, exit code 2 and no traceback, before any training (issue 8, item 6).

The whole table runs in-process through `run_cli(train.cli, argv)` (the command-line entry point,
without paying for a Python start per row); a few rows also run as real subprocesses, and
`--debug` / SIMCLR_DEBUG=1 are checked to show the traceback.

    python -m pytest tests/test_errors.py -q
"""
import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
from utils.checkpoint import FORMAT, load_checkpoint, plain, save_checkpoint
from utils.errors import UserError, run_cli

ROOT = Path(__file__).resolve().parent.parent
# 100 synthetic images (10 per class); 8 px keeps the rows that pass validation cheap.
TINY = ["--dataset", "synthetic", "--data_scale", "0.05", "--batch_size", "20", "--epochs", "1",
        "--device", "cpu", "--workers", "0", "--image_size", "8", "--quiet"]


def _image_folder(root: Path, classes: list[str], per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / "train" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "train" / name / f"{i}.png")
    return root


def _gif_class(tmp: Path) -> Path:
    root = _image_folder(tmp / "imgs", ["a", "b"], 3)
    (root / "train" / "c").mkdir()
    (root / "train" / "c" / "0.gif").write_bytes(b"GIF89a")
    return root


def _a_file(tmp: Path) -> str:
    (tmp / "data.bin").write_bytes(b"x")
    return str(tmp / "data.bin")


def _file_in_the_way(tmp: Path) -> str:
    (tmp / "a_file.txt").write_text("x")
    return str(tmp / "a_file.txt" / "run")


# id: (extra flags, a function of tmp_path giving more flags, words the error line must contain)
BAD_INPUTS = {
    "data_scale 0": (["--data_scale", "0"], None, "--data_scale must be in (0, 1], got 0.0"),
    "data_scale 1.5": (["--data_scale", "1.5"], None, "--data_scale must be in (0, 1], got 1.5"),
    "data_scale nan": (["--data_scale", "nan"], None, "--data_scale must be in (0, 1]"),
    "batch_size 0": (["--batch_size", "0"], None, "--batch_size must be > 0, got 0"),
    "batch_size -1": (["--batch_size", "-1"], None, "--batch_size must be > 0, got -1"),
    "batch_size > scaled data": (["--batch_size", "101"], None,
                                 "--batch_size 101 is larger than the training set (100 images at --data_scale 0.05)"),
    "epochs -1": (["--epochs", "-1"], None, "argument --epochs: must be >= 0, got -1"),
    "unknown dataset": (["--dataset", "svhn"], None, "argument --dataset: invalid choice: 'svhn'"),
    "unknown train type": (["--train_type", "dino"], None, "argument --train_type: invalid choice: 'dino'"),
    "learning_rate 0": (["--learning_rate", "0"], None, "--learning_rate must be > 0"),
    "device cuda without GPU": (["--device", "cuda"], None, "no CUDA GPU is available"),
    "device cuda:7 without GPU": (["--device", "cuda:7"], None, "no CUDA GPU is available"),
    "device typo": (["--device", "cpux"], None, "--device 'cpux' is not a device name"),
    "fp16 on CPU": (["--precision", "fp16"], None, "--precision fp16 needs CUDA"),
    "run_dir under a file": ([], lambda t: ["--run_dir", _file_in_the_way(t)], "cannot create run directory"),
    "run_dir in /proc": ([], lambda t: ["--run_dir", "/proc/simclr-run"], "cannot create run directory"),
    "resume with nothing there": (["--resume"], None, "--resume: no last.pth in"),
    "resume and overwrite": (["--resume", "--overwrite"], None, "--resume and --overwrite contradict"),
    "folder without images": (["--dataset", "folder", "--train_type", "supervised"],
                              lambda t: ["--data_dir", str(_image_folder(t / "imgs", ["a", "b"], 0))], "no images found"),
    "folder with one class": (["--dataset", "folder"],
                              lambda t: ["--data_dir", str(_image_folder(t / "imgs", ["cats"], 3))], "only one class"),
    "folder missing": (["--dataset", "folder"], lambda t: ["--data_dir", str(t / "nowhere")], "not found"),
    "folder class with only gifs": (["--dataset", "folder"], lambda t: ["--data_dir", str(_gif_class(t))],
                                    "with no usable image: c (has only .gif)"),
    "simclr batch_size 1": (["--batch_size", "1"], None, "SimCLR needs --batch_size >= 2"),
    "data_dir is a file (cifar10)": (["--dataset", "cifar10"], lambda t: ["--data_dir", _a_file(t)],
                                     "as the data folder (--data_dir): it is a file"),
    "run_dir name over 255 bytes": ([], lambda t: ["--run_dir", str(t / ("r" * 256) / "x")],
                                    "is 256 bytes long, over the file system's limit of 255"),
    # issue 14, item 4: NaN / inf / out-of-range numbers stop at argparse, before any data is loaded
    "temperature nan": (["--temperature", "nan"], None, "argument --temperature: expected a finite number, got 'nan'"),
    "learning_rate inf": (["--learning_rate", "inf"], None, "argument --learning_rate/--lr: expected a finite number"),
    "learning_rate nan": (["--learning_rate", "nan"], None, "argument --learning_rate/--lr: expected a finite number"),
    "seed -5": (["--seed", "-5"], None, "argument --seed: must be in [0, 4294967295], got -5"),
    "seed too large": (["--seed", "99999999999999999999"], None, "argument --seed: must be in [0, 4294967295]"),
    "weight_decay -1": (["--weight_decay", "-1"], None, "argument --weight_decay: must be >= 0, got -1"),
    "momentum -0.5": (["--momentum", "-0.5"], None, "argument --momentum: must be in [0, 1), got -0.5"),
    "warmup_epochs nan": (["--warmup_epochs", "nan"], None, "argument --warmup_epochs: expected a finite number"),
    "image_size 100000": (["--image_size", "100000"], None, "argument --image_size: must be in [8, 1024] pixels"),
    "min_lr inf": (["--min_lr", "inf"], None, "argument --min_lr: expected a finite number"),
    "data_scale inf": (["--data_scale", "inf"], None, "--data_scale must be in (0, 1]"),
}


def test_bf16_on_a_cpu_without_native_bf16_is_refused_and_with_it_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train, "cpu_bf16_native", lambda: False)
    code, out, err = _run_in_process(TINY + ["--run_dir", str(tmp_path / "no"), "--precision", "bf16"], capsys)
    assert code == 2 and "--precision bf16 needs CUDA or a CPU with native bf16" in _error_line(err)
    assert not (tmp_path / "no").exists()
    monkeypatch.setattr(train, "cpu_bf16_native", lambda: True)  # emulated here if the CPU lacks it: slow, not wrong
    run_cli(train.cli, TINY + ["--run_dir", str(tmp_path / "yes"), "--precision", "bf16"])
    assert (tmp_path / "yes" / "final.pth").exists()
    assert json.loads((tmp_path / "yes" / "config.json").read_text())["precision"] == "bf16"


def _run_in_process(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        run_cli(train.cli, argv)
    out, err = capsys.readouterr()
    return info.value.code, out, err


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("row", list(BAD_INPUTS))
def test_bad_input_table(row, tmp_path, capsys):
    flags, more, expected = BAD_INPUTS[row]
    if row.startswith("device cuda") and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    if row == "run_dir in /proc" and not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    run_dir = tmp_path / "run"
    argv = TINY + ["--run_dir", str(run_dir)] + flags + (more(tmp_path) if more else [])
    code, out, err = _run_in_process(argv, capsys)
    assert code == 2
    assert "Traceback" not in err + out
    line = _error_line(err)
    assert expected in line
    if line.startswith("error:"):
        assert err.strip() == line  # exactly one line on stderr
    else:  # argparse's own check: "<prog>: error: argument ...", one line (utils.cli.ArgumentParser)
        assert ": error: argument --" in line and err.strip().endswith(line)
        assert err.strip() == line
    assert not list(run_dir.glob("*.pth")) and not (run_dir / "config.json").exists()  # no work was done
    assert not run_dir.exists()  # and no empty run folder is left behind (issue 14, items 9 and 10)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_finished_run_is_refused_unless_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    argv = TINY + ["--epochs", "0", "--run_dir", str(run)]  # --epochs 0 writes final.pth at once
    train.main(argv)
    first = _sha(run / "final.pth")
    code, _, err = _run_in_process(argv, capsys)
    assert code == 2 and "already holds a finished run (final.pth)" in _error_line(err)
    assert "--overwrite" in err and "Traceback" not in err

    # --overwrite with another bad flag: refused, and the finished run is still there.
    code, _, err = _run_in_process(TINY + ["--run_dir", str(run), "--overwrite", "--batch_size", "500"], capsys)
    assert code == 2 and "larger than the training set" in _error_line(err)
    assert _sha(run / "final.pth") == first and (run / "config.json").exists()

    train.main(argv + ["--overwrite", "--seed", "1"])
    assert _sha(run / "final.pth") != first  # started over: another seed, another initialisation


def test_resume_with_another_config_names_the_keys(tmp_path, capsys):
    run = tmp_path / "run"
    argv = TINY + ["--run_dir", str(run)]
    config = plain(vars(train.parse_args(argv)))
    run.mkdir()
    save_checkpoint(run / "last.pth", {"format": FORMAT, "config": config, "train_state": {}, "epoch": 0})

    changed = TINY + ["--run_dir", str(run), "--batch_size", "10", "--seed", "3", "--workers", "1", "--device", "cpu"]
    code, _, err = _run_in_process(changed, capsys)
    line = _error_line(err)
    assert code == 2 and "was made with another config" in line
    assert "batch_size: 20 -> 10" in line and "seed: 0 -> 3" in line
    assert "workers" not in line  # how to run may change; what is computed may not

    train.main(TINY + ["--run_dir", str(run), "--batch_size", "10", "--epochs", "0", "--overwrite"])
    assert not (run / "last.pth").exists() and (run / "final.pth").exists()


def test_unreadable_last_pth_says_how_to_start_again(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes(b"\x00" * 100)
    code, _, err = _run_in_process(TINY + ["--run_dir", str(run)], capsys)
    line = _error_line(err)
    assert code == 2 and "cannot resume" in line and "--overwrite" in line


def test_run_dir_in_use_by_another_process_is_refused(tmp_path, capsys):
    """Two runs in one folder would clobber each other's checkpoints: the second one is refused."""
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time\n"
        f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = _run_in_process(TINY + ["--run_dir", str(run)], capsys)
        assert code == 2 and "is in use by another training process" in _error_line(err)
    finally:
        holder.kill()
        holder.wait()
    train.main(TINY + ["--run_dir", str(run), "--epochs", "0"])  # free again once that process is gone
    assert (run / "final.pth").exists()


@pytest.fixture
def one_thread():
    """One intra-op thread (two were measured 30x slower on 2 cores shared with other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_failing_checkpoint_save_is_one_line_and_keeps_last_pth(tmp_path, monkeypatch, capsys, one_thread):
    """The disk fills up while the epoch-2 last.pth is written: exit 2, one line, epoch-1 last.pth intact."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to tell which file is being written")
    run = tmp_path / "run"
    real_fsync, writes = os.fsync, []

    def fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if Path(name).name.startswith(".last.pth."):
            writes.append(name)
            if len(writes) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = _run_in_process(TINY + ["--run_dir", str(run), "--epochs", "2", "--data_scale", "0.015",
                                           "--batch_size", "10", "--aug", "gpu"], capsys)
    monkeypatch.undo()
    assert code == 2 and err.strip() == (f"error: cannot write {run / 'last.pth'}: No space left on device; "
                                         "the previous last.pth, if any, is unchanged")
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt["train_state"]["epoch"] == 1 and not (run / "final.pth").exists()
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_debug_flag_and_env_show_the_traceback(tmp_path, monkeypatch):
    argv = TINY + ["--run_dir", str(tmp_path / "run"), "--data_scale", "0"]
    with pytest.raises(UserError, match="--data_scale"):
        run_cli(train.cli, argv + ["--debug"])
    monkeypatch.setenv("SIMCLR_DEBUG", "1")
    with pytest.raises(UserError, match="--data_scale"):
        run_cli(train.cli, argv)


class _OpensAFile:
    """Unpickling this calls open(path, "w")."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _cli(args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, **kwargs)


CLI_ROWS = {
    "data_scale 0": (["--data_scale", "0"], "error: --data_scale must be in (0, 1], got 0.0"),
    "epochs -1 (argparse)": (["--epochs", "-1"], "train.py: error: argument --epochs: must be >= 0, got -1"),
    "device": ((["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "nonsense"]), "error: --device"),
}


@pytest.mark.parametrize("row", list(CLI_ROWS))
def test_bad_input_from_the_command_line(row, tmp_path):
    flags, expected = CLI_ROWS[row]
    proc = _cli(["train.py", *TINY, "--run_dir", str(tmp_path / "run"), *flags])
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in err + proc.stdout
    if expected.startswith("train.py:"):  # argparse: usage lines, then the error
        assert err.splitlines()[-1] == expected
    else:
        assert "\n" not in err and err.startswith(expected)


def test_debug_from_the_command_line_shows_traceback(tmp_path):
    proc = _cli(["train.py", *TINY, "--run_dir", str(tmp_path / "run"), "--data_scale", "0", "--debug"])
    assert proc.returncode != 0 and "Traceback (most recent call last)" in proc.stderr
    assert "UserError: --data_scale must be in (0, 1]" in proc.stderr


def test_malicious_model_path_from_the_command_line(tmp_path):
    """test.py with a checkpoint whose pickle would create a file: exit 2, one line, no file."""
    if not (ROOT / "test.py").exists():
        pytest.skip("test.py is not there yet")
    marker = tmp_path / "created-by-pickle"
    torch.save({"format": FORMAT, "backbone": _OpensAFile(str(marker))}, tmp_path / "evil.pth")
    proc = _cli(["test.py", "--model_path", str(tmp_path / "evil.pth"), "--dataset", "synthetic", "--device", "cpu",
                 "--workers", "0", "--run_dir", str(tmp_path / "eval")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: refusing to load") and "\n" not in proc.stderr.strip()
    assert not marker.exists()
