"""Where SimCLR passes random init on real images: Fashion-MNIST probe accuracy against pretraining steps.

SimCLR and supervised pretraining of ResNet-18 on the 60,000 Fashion-MNIST training images, one run per step
count (each with its own cosine schedule, so every checkpoint is the end of a complete run), beside a random-init
network and a network trained from scratch on each labelled subset. Every backbone is probed the same way, from
one feature pass: a linear probe with 1 %, 10 % and all of the labels (the labelled images drawn from the 90 %
that the probe's validation split leaves), by two solvers: L-BFGS (convex logistic regression, converged; l2
chosen by cross-validation inside the labelled subset below every label, on the validation split with every
label) and the project's default minibatch Adam probe (500 epochs), and by kNN (k=10). Below every label no
probe reads a label outside its subset (`labels_used` = `num_labelled`, a column of results.csv), and the
supervised arm never trains on the probe's validation images (train.py --label_val_split, as the study does).
It writes results.csv, results.md and crossover.png (probe accuracy against steps, log x, random init as a band)
into --out, and reads finished runs back, so an interrupted run resumes where it stopped.

    apt-get install dataset-fashion-mnist          # the real files, offline (docs/datasets.md)
    python benchmarks/fashion_crossover.py         # steps 100 300 1000, seed 0, 2 processes of 1 thread
    python benchmarks/fashion_crossover.py --steps 100 300 1000 3000   # go further; finished runs are kept
    python benchmarks/fashion_crossover.py --report                    # redraw from the finished runs only
    python benchmarks/fashion_crossover.py --steps 1000 --arms simclr \
        --simclr_args "--crop_min_scale 0.3" --out benchmarks/results/fashion_chase/crop0.3   # one check of the chase

Settings (docs/results.md, the crossover): 16 px, batch 64 for every arm. SimCLR: the tuned recipe's views and head,
lr 0.125 at batch 64 (the digits preset's measured short-run value), cosine to 0, no warmup. Supervised: lr 0.05
(weiaicunzai/pytorch-cifar100's 0.1 at batch 128, scaled to 64 as the tuned recipe does) with the same
cosine instead of its multistep, so that both arms share one schedule shape at every step count. Scratch:
supervised from scratch on the probe's labelled subset for --scratch_epochs, long enough for its training loss
to flatten (its metrics.csv; curve in the out folder).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils.errors import UserError, run_cli  # noqa: E402

FRACTIONS = (0.01, 0.1, 1.0)
SOLVERS = ("lbfgs", "adam")


def solvers_at(fraction: float) -> tuple[str, ...]:
    """L-BFGS below all labels, where the Adam probe's 500 epochs are few steps (500 at 1 %: not converged);
    with every label the Adam probe takes 27,000 steps (its convergence: docs/recipes.md) and L-BFGS on 54,000
    features would cost minutes per checkpoint on a CPU."""
    return SOLVERS if fraction < 1 else ("adam",)
ARMS = ("simclr", "supervised", "random", "scratch")
VAL_SPLIT = 0.1  # the probe's validation split (test.py --val_split), the study's default
FIELDS = ["arm", "steps", "seed", "label_fraction", "solver", "num_labelled", "labels_used", "chosen_by",
          "test_accuracy", "test_loss", "val_accuracy", "cv_accuracy", "knn10_accuracy", "probe_train_loss", "probe_max_grad", "l2", "pretrain_loss_last",
          "pretrain_seconds", "eval_seconds"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/fashion_crossover", help="output folder (kept between runs)")
    p.add_argument("--data_dir", default="data", help="train.py --data_dir (Debian's package is found after it)")
    p.add_argument("--steps", type=int, nargs="+", default=[100, 300, 1000], help="pretraining step counts")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--image_size", type=int, default=16)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--simclr_lr", type=float, default=0.125)
    p.add_argument("--supervised_lr", type=float, default=0.05)
    p.add_argument("--scratch_epochs", type=int, nargs=2, default=[100, 30], metavar=("AT_1PC", "AT_10PC"),
                   help="epochs of the scratch network on 1 %% and 10 %% of the labels")
    p.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    p.add_argument("--scratch_fractions", type=float, nargs="*", default=[0.01],
                   help="label fractions the scratch baseline trains at (10 %% costs about 45 CPU minutes)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="which networks to train and probe")
    p.add_argument("--jobs", type=int, default=2, help="processes at once, one CPU thread each")
    p.add_argument("--report", action="store_true", help="only collect finished runs and redraw")
    p.add_argument("--simclr_args", default="",
                   help="more train.py flags for the SimCLR arm, after its own (a check of the chase, e.g. "
                        "\"--crop_min_scale 0.3\"); its runs need their own --out, which remembers these flags")
    return p.parse_args(argv)


def train_argv(args, arm: str, steps: int | None, seed: int, fraction: float | None = None) -> list[str]:
    common = ["--dataset", "fashion_mnist", "--data_dir", args.data_dir, "--image_size", str(args.image_size),
              "--seed", str(seed), "--threads", "1", "--device", "cpu", "--quiet"]
    cosine = ["--schedule", "cosine", "--warmup_epochs", "0"]
    if arm == "random":
        return ["--train_type", "simclr", "--epochs", "0", *common]
    if arm == "simclr":
        return ["--train_type", "simclr", "--batch_size", str(args.batch_size), "--learning_rate", str(args.simclr_lr),
                "--steps", str(steps), *common, *shlex.split(args.simclr_args)]
    sup = ["--train_type", "supervised", "--batch_size", str(args.batch_size), "--learning_rate",
           str(args.supervised_lr), *cosine, *common]
    if arm == "supervised":  # the probe's validation images stay out of pretraining, as in the study
        return sup + ["--steps", str(steps), "--label_val_split", repr(VAL_SPLIT)]
    assert arm == "scratch"
    epochs = args.scratch_epochs[0] if fraction <= 0.01 else args.scratch_epochs[1]
    return sup + ["--epochs", str(epochs), "--label_fraction", repr(fraction), "--label_val_split", repr(VAL_SPLIT)]


def test_argv(args, ckpt: Path, cache: Path, run_dir: Path, seed: int, fraction: float, solver: str) -> list[str]:
    argv = ["--model_path", str(ckpt), "--dataset", "fashion_mnist", "--data_dir", args.data_dir, "--val_split",
            repr(VAL_SPLIT), "--seed", str(seed), "--threads", "1", "--device", "cpu", "--quiet", "--knn",
            "--feature_cache", str(cache), "--run_dir", str(run_dir)]
    if fraction < 1:
        argv += ["--label_fraction", repr(fraction)]
    return argv + (["--solver", "lbfgs"] if solver == "lbfgs" else [])


def backbones(args) -> list[tuple[str, int | None, int, float | None]]:
    """(arm, steps, seed, scratch label fraction) of every network, the longest runs first."""
    out = []
    for seed in args.seeds:
        for steps in sorted(args.steps, reverse=True):
            out += [("simclr", steps, seed, None), ("supervised", steps, seed, None)]
        out += [("scratch", None, seed, f) for f in args.scratch_fractions]
        out.append(("random", 0, seed, None))
    return [net for net in out if net[0] in args.arms]


def name_of(arm: str, steps, seed: int, fraction) -> str:
    return f"scratch-f{fraction:g}-seed{seed}" if arm == "scratch" else f"{arm}-s{steps}-seed{seed}"


def run(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:1])} exited {proc.returncode}; see {log}")


def check_variant(args, out: Path) -> None:
    """One --out folder holds runs of one set of --simclr_args: a finished run is never retrained, so runs of other
    flags under the same names would be reported as these. The flags are written to out/simclr_args.txt on first use."""
    record = out / "simclr_args.txt"
    wanted = " ".join(shlex.split(args.simclr_args))
    if record.exists():
        held = record.read_text().strip()
        if held != wanted:
            raise UserError(f"{out} holds SimCLR runs with --simclr_args {held!r}, not {wanted!r}: "
                            "give these another --out")
    elif any((out / "runs").glob("simclr-*")):  # runs of the default recipe, from before this record existed
        if wanted:
            raise UserError(f"{out} holds SimCLR runs of the default recipe: give --simclr_args {wanted!r} "
                            "another --out")
        return
    record.write_text(wanted + "\n")


def chain(args, out: Path, net: tuple, progress) -> None:
    """Train one network (unless finished), then every probe of it from one cached feature pass."""
    arm, steps, seed, fraction = net
    name = name_of(*net)
    run_dir = out / "runs" / name
    check_no_leak(run_dir, arm)
    if not (run_dir / "final.pth").exists():
        progress(f"train {name}")
        run(["train.py", *train_argv(args, arm, steps, seed, fraction), "--run_dir", str(run_dir)], out / "logs" / f"{name}.log")
    fractions = [fraction] if arm == "scratch" else args.fractions
    for f in fractions:
        for solver in solvers_at(f):
            eval_dir = out / "evals" / name / f"{solver}-f{f:g}"
            if not (eval_dir / "eval.json").exists():
                progress(f"probe {name} ({solver}, {f:g} of the labels)")
                run(["test.py", *test_argv(args, run_dir / "final.pth", out / "features" / name, eval_dir, seed, f,
                                           solver)], out / "logs" / f"{name}.log")
    progress(f"done {name}")


def check_no_leak(run_dir: Path, arm: str) -> None:
    """Refuse a supervised run of an earlier version that trained on the probe's validation images."""
    config = run_dir / "config.json"
    if arm == "supervised" and config.exists():
        held = json.loads(config.read_text()).get("args", {}).get("label_val_split")
        if held != VAL_SPLIT:
            raise UserError(f"{run_dir} was pretrained with --label_val_split {held}, on the probe's validation "
                            f"images: delete it (or use another --out) to retrain it without them")


def eval_row(out: Path, net: tuple, f: float, solver: str) -> dict | None:
    arm, steps, seed, fraction = net
    name = name_of(*net)
    path = out / "evals" / name / f"{solver}-f{f:g}" / "eval.json"
    if not path.exists():
        return None
    ev = json.loads(path.read_text())
    metrics = list(csv.DictReader(open(out / "runs" / name / "metrics.csv"))) if arm != "random" else []
    hist = ev.get("history") or {}
    lbfgs = ev.get("hyperparameters", {}).get("lbfgs") or {}
    fits, final = lbfgs.get("selection") or [], lbfgs.get("final_fit")
    val = ev.get("val_accuracy") if fits else _last(hist.get("val_accuracy"))
    cv = ev.get("cv_accuracy")
    return {"arm": arm, "steps": steps if arm != "scratch" else int(metrics[-1]["step"]), "seed": seed,
            "label_fraction": f, "solver": solver, "num_labelled": ev.get("num_labelled"),
            "labels_used": ev.get("labels_used"), "chosen_by": lbfgs.get("chosen_by", "no choice (recipe)"),
            "test_accuracy": ev["test_accuracy"], "test_loss": round(ev["test_loss"], 4),
            "val_accuracy": None if val is None else round(val, 2), "cv_accuracy": None if cv is None else round(cv, 2),
            "knn10_accuracy": ev.get("knn10_accuracy"),
            "probe_train_loss": _round(final["train_cross_entropy"] if final else _last(hist.get("train_loss"))),
            "probe_max_grad": final["max_abs_gradient"] if final else None, "l2": lbfgs.get("l2"),
            "pretrain_loss_last": float(metrics[-1]["loss"]) if metrics else None,
            "pretrain_seconds": round(sum(float(m["seconds"]) for m in metrics), 1) if metrics else 0.0,
            "eval_seconds": round(ev["seconds"]["total"], 1)}


def _last(values):
    return values[-1] if values else None


def _round(x):
    return None if x is None else round(float(x), 4)


def finished_networks(out: Path) -> list[tuple]:
    """(arm, steps, seed, scratch fraction) of every network trained under out/runs, whatever the flags now."""
    nets = []
    for d in sorted((out / "runs").glob("*")):
        if m := re.fullmatch(r"(simclr|supervised|random)-s(\d+)-seed(\d+)", d.name):
            nets.append((m[1], int(m[2]), int(m[3]), None))
        elif m := re.fullmatch(r"scratch-f([0-9.e-]+)-seed(\d+)", d.name):
            nets.append(("scratch", None, int(m[2]), float(m[1])))
    return nets


def collect(args, out: Path) -> list[dict]:
    """Every finished probe of every network in out/runs (all seeds and step counts, not only today's flags)."""
    rows = []
    for net in finished_networks(out):
        fractions = [net[3]] if net[0] == "scratch" else args.fractions
        rows += [r for f in fractions for s in solvers_at(f) if (r := eval_row(out, net, f, s)) is not None]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    return rows


def write_report(rows: list[dict], out: Path) -> None:
    """results.md (one table per solver) and crossover.png (probe accuracy against steps, per label fraction)."""
    lines = ["# Fashion-MNIST: SimCLR against random init, by pretraining steps", "",
             "Test accuracy (%) of a linear probe on frozen features (the test split is used for nothing else); "
             "kNN k=10 on all labels. Written by benchmarks/fashion_crossover.py.", "",
             "Which labels chose each row's configuration: the pretraining recipes are fixed (no choice); below every "
             "label the L-BFGS probe's l2 is chosen by stratified cross-validation inside the labelled subset and the "
             "head refit on it alone, and the Adam probe has no choice to make, so a few-label row reads its "
             "`num_labelled` labels and no other (`labels_used` in results.csv); with every label l2 would be chosen "
             "on the 6,000 validation images. The supervised arm never trains on those validation images.", ""]
    if (record := out / "simclr_args.txt").exists() and record.read_text().strip():
        lines += [f"The SimCLR arm ran with `--simclr_args \"{record.read_text().strip()}\"` (a check of the chase).", ""]
    for solver in SOLVERS:
        sel = [r for r in rows if r["solver"] == solver]
        if not sel:
            continue
        lines += [f"## {solver} probe", "", "| arm | steps | seed | " + " | ".join(
            f"{f:g} of labels" for f in FRACTIONS) + " | kNN k=10 (all labels) | pretrain loss (last epoch) |",
            "|---" * 8 + "|"]
        keys = sorted({(r["arm"], r["steps"], r["seed"]) for r in sel}, key=lambda k: (ARMS.index(k[0]), k[1] or 0, k[2]))
        for arm, steps, seed in keys:
            cell = {r["label_fraction"]: r for r in sel if (r["arm"], r["steps"], r["seed"]) == (arm, steps, seed)}
            accs = " | ".join(f"{cell[f]['test_accuracy']:.2f}" if f in cell else "" for f in FRACTIONS)
            knn = cell.get(1.0, {}).get("knn10_accuracy")
            loss = next((r["pretrain_loss_last"] for r in cell.values() if r["pretrain_loss_last"] is not None), None)
            lines.append(f"| {arm} | {steps} | {seed} | {accs} | {'' if knn is None else knn} | "
                         f"{'' if loss is None else loss} |")
        lines.append("")
        if len({r["seed"] for r in sel}) > 1:
            lines += [f"Mean over seeds ({solver} probe; ± the sample standard deviation between seeds):", "",
                      "| arm | steps | seeds | " + " | ".join(f"{f:g} of labels" for f in FRACTIONS)
                      + " | kNN k=10 (all labels) |", "|---" * 7 + "|"]
            for (arm, steps), group in seed_groups(sel, "test_accuracy").items():
                seeds = sorted({r["seed"] for r in sel if (r["arm"], r["steps"]) == (arm, steps)})
                accs = " | ".join(mean_cell(group.get(f, [])) for f in FRACTIONS)
                knn = seed_groups(sel, "knn10_accuracy").get((arm, steps), {}).get(1.0, [])
                lines.append(f"| {arm} | {steps} | {', '.join(map(str, seeds))} | {accs} | {mean_cell(knn)} |")
            lines.append("")
    (out / "results.md").write_text("\n".join(lines))
    plot(rows, out / "crossover.png")


def seed_groups(rows: list[dict], key: str) -> dict:
    """{(arm, steps): {label fraction: [value of each seed]}} of the rows that have `key`, in ARMS order."""
    out: dict = {}
    for r in sorted(rows, key=lambda r: (ARMS.index(r["arm"]), r["steps"] or 0, r["seed"])):
        if r[key] is not None:
            out.setdefault((r["arm"], r["steps"]), {}).setdefault(r["label_fraction"], []).append(r[key])
    return out


def mean_cell(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def plot(rows: list[dict], path: Path) -> None:
    """One panel per label fraction (its primary probe solid: L-BFGS below all labels, Adam with all; the Adam
    probe dotted where both ran) and one for kNN; random init as a band of +-2 binomial standard errors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fracs = [f for f in FRACTIONS if any(r["label_fraction"] == f for r in rows)]
    panels = [(f, "test_accuracy", solvers_at(f)) for f in fracs] + [(1.0, "knn10_accuracy", ("adam",))]
    cols = 2 if len(panels) > 2 else len(panels)
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.2 * cols, 3.9 * rows_n), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (f, key, solvers) in zip(axes.flat, panels):
        for solver, ls in zip(solvers, ("-", ":")):
            sel = [r for r in rows if r["label_fraction"] == f and r["solver"] == solver and r[key] is not None]
            tag = "" if len(solvers) == 1 else f" ({solver})"
            rand = [r[key] for r in sel if r["arm"] == "random"]
            if rand and ls == "-":  # every seed's value, widened by 2 binomial s.e. of 10,000 test images
                se = 100 * math.sqrt(max(rand[0] / 100 * (1 - rand[0] / 100), 1e-9) / 10_000)
                ax.axhspan(min(rand) - 2 * se, max(rand) + 2 * se, color="0.8",
                           label=f"random init{tag} ({len(rand)} seed{'s' * (len(rand) > 1)}), ±2 s.e.")
            elif rand:
                ax.axhline(sum(rand) / len(rand), color="0.5", ls=ls, label=f"random init{tag}")
            groups = seed_groups(sel, key)
            for arm, marker, color in (("simclr", "o", "C0"), ("supervised", "s", "C1")):
                pts = sorted((steps, g[f]) for (a, steps), g in groups.items() if a == arm and f in g)
                if pts:  # the mean over seeds as the line, each seed as a small dot
                    ax.plot([p[0] for p in pts], [statistics.mean(p[1]) for p in pts], marker=marker, ls=ls,
                            color=color, label=f"{arm}{tag} (mean of {max(len(p[1]) for p in pts)} seeds)"
                            if max(len(p[1]) for p in pts) > 1 else f"{arm}{tag}")
                    seeds = [(p[0], v) for p in pts for v in p[1]] if max(len(p[1]) for p in pts) > 1 else []
                    if seeds:
                        ax.plot([x for x, _ in seeds], [v for _, v in seeds], ".", color=color, alpha=0.6, ms=4)
            for r in sel:
                if r["arm"] == "scratch":
                    ax.axhline(r[key], ls="--" if ls == "-" else ":", color="C2",
                               label=f"scratch on these labels ({r['steps']} steps){tag}")
        what = "kNN k=10" if key == "knn10_accuracy" else "linear probe"
        ax.set_title(f"{what}, {f:g} of the labels ({', '.join(solvers)})", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlabel("pretraining steps (batch 64)")
        ax.set_ylabel("test accuracy (%)")
        ax.legend(fontsize=6)
    fig.suptitle("Fashion-MNIST, ResNet-18 at 16 px: SimCLR vs random init by pretraining steps", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.report:
        check_variant(args, out)
        nets = backbones(args)
        t0 = time.perf_counter()

        def progress(msg: str) -> None:
            print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", flush=True)

        with ThreadPoolExecutor(args.jobs) as pool:
            for fut in [pool.submit(chain, args, out, net, progress) for net in nets]:
                fut.result()
        print(f"all {len(nets)} networks trained and probed in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = collect(args, out)
    write_report(rows, out)
    print(f"{len(rows)} rows: {out / 'results.csv'}, {out / 'results.md'}, {out / 'crossover.png'}")


if __name__ == "__main__":
    run_cli(main)
