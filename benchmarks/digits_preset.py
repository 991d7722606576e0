"""Wall and CPU time of the README's quick start, `simclr_train.py --preset digits`, in a fresh folder.

The quick start promises real images, offline, in at most ten minutes on 2 idle CPU cores; this script is how
that figure is measured (never by a timed test). It runs the preset as a user would, in a new --out_dir,
then prints the wall time, the CPU time of the study and its workers, the machine's load before and after,
and the rows of results.csv. Run it on an idle machine:

    python benchmarks/digits_preset.py                      # the preset as shipped
    python benchmarks/digits_preset.py --keep runs/digits --scratch_curve docs/results/digits/scratch_training.png

--scratch_curve draws the training loss of the study's scratch cells (each seed's metrics.csv) against the
step: the evidence that DIGITS_SCRATCH_EPOCHS trains the scratch baseline until its loss has flattened.

The sweep that chose the preset's lr, scored on the probe's validation accuracy (docs/study.md, "The digits
preset"; 2026-12-03, 2 cores shared with two other processes, 18 min for the first four lrs):

    python simclr_train.py --dataset digits --eval_dataset digits --data_scales 1.0 --batch_sizes 64 \\
        --learning_rates 0.03 0.06 0.125 0.25 0.5 --epochs 2 --seeds 0 1 --baselines random \\
        --label_fractions 0.1 1.0 --jobs 2 \\
        --train_args "--crop_min_scale 0.3 --jitter_strength 0.5 --gray_prob 0.2 --hflip_prob 0 --proj_hidden_dim 512 --proj_bn true" \\
        --test_args "--eval_views 2 --knn --eval_crop_min_scale 0.3 --eval_hflip_prob 0 --eval_jitter_strength 0.5 --eval_gray_prob 0.2" \\
        --out_dir sweeps/digits-lr-val

The earlier sweeps that chose batch 64 (2026-12-01) were scored on the test split (docs/study.md says so):
the same with --batch_sizes 128 --learning_rates 0.125 0.25 0.5 1.0 --epochs 5 --eval_views 5, and with
--batch_sizes 64 128 --learning_rates 0.03 0.125 0.5 --epochs 3.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def draw_scratch_curve(out: Path, path: Path) -> Path:
    """The training loss (and train accuracy) of every scratch cell of the study in `out`, per step (the study's
    own scratch_training.png, drawn here into `path`)."""
    sys.path.insert(0, str(ROOT))
    from utils.sweep import plot_scratch_training

    if not list((out / "runs").glob("scratch_*")):
        raise SystemExit(f"digits_preset.py: no scratch cell in {out / 'runs'}")
    return plot_scratch_training(out, path, title="The digits preset's scratch baseline: 10 % of the labels, from scratch")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--keep", default=None, help="run the study into this folder and keep it (must not exist)")
    p.add_argument("--scratch_curve", default=None,
                   help="also draw the scratch cells' training loss against the step into this PNG")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more simclr_train.py flags")
    args = p.parse_args()
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="digits-preset-")) / "study"
    if out.exists():
        sys.exit(f"digits_preset.py: {out} exists; the benchmark needs a fresh folder")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "simclr_train.py"), "--preset", "digits", "--out_dir", str(out),
                           "--quiet", *args.extra], cwd=ROOT)
    wall = time.perf_counter() - t0
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = (out / "results.csv").read_text().count("\n") - 1 if (out / "results.csv").exists() else 0
    print(f"simclr_train.py --preset digits: exit {proc.returncode}, wall {int(wall // 60)} min {wall % 60:.1f} s, "
          f"CPU {cpu.ru_utime + cpu.ru_stime:.0f} s, {os.cpu_count()} cores, load before {load_before[0]:.2f} / "
          f"after {os.getloadavg()[0]:.2f}, {rows} results.csv rows, out_dir {out}")
    if args.scratch_curve:
        print(f"wrote {draw_scratch_curve(out, Path(args.scratch_curve))}")
    if not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
