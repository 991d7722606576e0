"""The results tables of README.md and docs/, written from committed results files so that they cannot drift.

A generated table sits in a Markdown file between `<!-- table: NAME -->` and `<!-- /table -->`; NAME is a key of
TABLES below, which says which committed results file (a study's results.csv under docs/results/) it is drawn
from and how; or `records/NAME`, drawn from docs/results/records/NAME.csv: the table of a run whose output folder
was not kept, with its source (command, date, machine) in the file's `#` lines. Nothing between the markers is typed
by hand: to change a figure, change the results file (or rerun the study) and rewrite.

    python benchmarks/tables.py            # rewrite every generated table from its results file
    python benchmarks/tables.py --check    # exit 1 naming each table that differs from what its file gives

The test suite runs the check (tests/test_tables.py), so a hand edit inside a table, or a rerun whose results
file was committed without its tables, fails the suite.
"""
from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path
from typing import Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from utils import sweep  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.stats import compare, describe  # noqa: E402

DOCS = ("README.md", "docs")  # where generated tables may sit (docs/: every .md below it)
BLOCK = re.compile(r"(<!-- table: (?P<name>[\w/-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)
RECORDS = "docs/results/records"  # `<!-- table: records/NAME -->` is drawn from RECORDS/NAME.csv
ARMS = (("random", "random init"), ("simclr", "SimCLR"), ("supervised", "supervised"),
        ("scratch", "supervised from scratch on the labels"))


def _entries(path: str) -> list[dict]:
    rows = sweep.read_results(ROOT / path)
    if not rows:
        raise UserError(f"{path}: no results rows")
    return sweep.aggregate(rows)


def _at(entries: Sequence[Mapping], kind: str, scale, fraction: float) -> Mapping | None:
    return next((e for e in entries if sweep.kind_of(e) == kind and e["data_scale"] == scale
                 and sweep.fraction_of(e) == fraction), None)


def _difference(entries: Sequence[Mapping], scale, kind: str, fraction: float, key: str) -> dict | None:
    """SimCLR at `scale` minus baseline `kind` (random init and scratch have no data scale) on metric `key` at label
    fraction `fraction`, by utils/stats.compare, with SimCLR's seed count; None where either has no such figure."""
    a = _at(entries, "simclr", scale, fraction)
    b = _at(entries, kind, None if kind in ("random", "scratch") else scale, fraction)
    if a is None or b is None or a.get(f"{key}_mean") is None or b.get(f"{key}_mean") is None:
        return None
    return {**compare(a[f"{key}_mean"], a[f"{key}_std"], a["n_seeds"], b[f"{key}_mean"], b[f"{key}_std"],
                      b["n_seeds"]), "seeds": (a["n_seeds"], b["n_seeds"])}


def _cell(e: Mapping | None, key: str, best: float | None) -> str:
    if e is None or e.get(f"{key}_mean") is None:
        return ""
    text = sweep._pm(e[f"{key}_mean"], e[f"{key}_std"], ".2f")
    return f"**{text}**" if best is not None and round(e[f"{key}_mean"], 2) == round(best, 2) else text


def preset_table(path: str, columns: Sequence[tuple[str, float, str]]) -> Callable[[], list[str]]:
    """A preset's table: one row per arm and data scale, columns (title, label fraction, metric key) as mean ±
    s.d. over seeds, the best mean of each column in bold; the steps and seeds of each row."""
    def render() -> list[str]:
        entries = _entries(path)
        rows = []
        for kind, label in ARMS:
            scales = sorted({e["data_scale"] for e in entries if sweep.kind_of(e) == kind},
                            key=lambda s: (s is not None, s or 0))
            for scale in scales:
                found = [_at(entries, kind, scale, f) for _, f, _ in columns]
                some = next(e for e in found if e is not None) if any(found) else None
                if some is not None:
                    rows.append((label, scale, some, found))
        best = [max((found[i][f"{key}_mean"] for *_, found in rows
                     if found[i] is not None and found[i].get(f"{key}_mean") is not None), default=None)
                for i, (_, _, key) in enumerate(columns)]
        lines = ["| backbone | data scale | steps | seeds | " + " | ".join(t for t, _, _ in columns) + " |",
                 "|---|---|---|---|" + "---|" * len(columns)]
        for label, scale, some, found in rows:
            cells = [_cell(e, key, b) for e, (_, _, key), b in zip(found, columns, best)]
            lines.append(f"| {label} | {'–' if scale is None else f'{scale:g}'} | {sweep._g(some.get('steps'), ',d')} "
                         f"| {some['n_seeds']} | " + " | ".join(cells) + " |")
        return lines
    return render


def verdict_table(path: str, scales: Sequence[float], against: Sequence[tuple[str, float, str]]
                  ) -> Callable[[], list[str]]:
    """SimCLR at each data scale against each baseline: (baseline kind, label fraction, metric key) per row, the
    difference of means ± its standard error and the verdict of utils/stats.py."""
    names = dict(ARMS)
    metrics = {"test_accuracy": "linear probe", "aug_test_acc": "probe on augmented views", "knn10_acc": "kNN k=10"}

    def render() -> list[str]:
        entries = _entries(path)
        lines = ["| SimCLR, data scale | against | labels | measure | seeds | difference (points) |",
                 "|---|---|---|---|---|---|"]
        for scale in scales:
            for kind, fraction, key in against:
                result = _difference(entries, scale, kind, fraction, key)
                if result is None:
                    raise UserError(f"{path}: no {kind} or SimCLR entry at label fraction {fraction:g} for {key}")
                lines.append(f"| {scale:g} | {names[kind]} | {'all' if fraction == 1 else f'{fraction * 100:g} %'} "
                             f"| {metrics[key]} | {result['seeds'][0]} vs {result['seeds'][1]} | {describe(result)} |")
        return lines
    return render


def verdict_matrix(path: str, scales: Sequence[float], measures: Sequence[tuple[str, float, str]],
                   against: Sequence[str]) -> Callable[[], list[str]]:
    """The answer in one small table: a row per SimCLR data scale and measure (title, label fraction, metric key), a
    column per baseline, each cell the difference of means ± its standard error and the verdict of utils/stats.py;
    blank where the baseline has no such measure (the scratch network is probed with its own labels only)."""
    names = dict(ARMS)

    def render() -> list[str]:
        entries = _entries(path)
        lines = ["| SimCLR, data scale | measure | seeds | " + " | ".join(f"against {names[k]}" for k in against) + " |",
                 "|---|---|---|" + "---|" * len(against)]
        for scale in scales:
            for title, fraction, key in measures:
                a = _at(entries, "simclr", scale, fraction)
                if a is None or a.get(f"{key}_mean") is None:
                    raise UserError(f"{path}: no SimCLR entry at data scale {scale:g}, label fraction {fraction:g}")
                results = [_difference(entries, scale, kind, fraction, key) for kind in against]
                cells = ["" if r is None else describe(r) for r in results]
                lines.append(f"| {scale:g} | {title} | {a['n_seeds']} | " + " | ".join(cells) + " |")
        return lines
    return render


def probes_table(path: str, arm: str) -> Callable[[], list[str]]:
    """benchmarks/fashion_crossover.py's rows of one arm: the L-BFGS and Adam probes at each label fraction below
    every label, mean ± s.d. over seeds, the labels each read, and Adam - L-BFGS by the two-standard-error rule."""
    def render() -> list[str]:
        with open(ROOT / path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r["arm"] == arm and float(r["label_fraction"]) < 1]
        if not rows:
            raise UserError(f"{path}: no {arm} rows below every label")
        lines = ["| labels | seeds | L-BFGS, l2 by cross-validation (%) | Adam probe (%) | labels_used (each) "
                 "| Adam - L-BFGS (points) |", "|---|---|---|---|---|---|"]
        for fraction in sorted({float(r["label_fraction"]) for r in rows}):
            by = {solver: [r for r in rows if float(r["label_fraction"]) == fraction and r["solver"] == solver]
                  for solver in ("lbfgs", "adam")}
            acc = {k: [float(r["test_accuracy"]) for r in v] for k, v in by.items()}
            if not acc["lbfgs"] or len(acc["lbfgs"]) != len(acc["adam"]):
                raise UserError(f"{path}: {arm} at {fraction:g} lacks one probe for some seed")
            stats = {k: (*sweep._mean_std(v), len(v)) for k, v in acc.items()}
            used = {r["labels_used"] for r in by["lbfgs"] + by["adam"]}
            seeds = ", ".join(sorted({r["seed"] for r in by["lbfgs"]}))
            cells = [sweep._pm(m, sd, ".2f") for m, sd, _ in (stats["lbfgs"], stats["adam"])]
            lines.append(f"| {fraction * 100:g} % | {seeds} | {cells[0]} | {cells[1]} | "
                         f"{', '.join(f'{int(u):,}' for u in sorted(used, key=int))} | "
                         f"{describe(compare(*stats['adam'], *stats['lbfgs']))} |")
        return lines
    return render


DIGITS = "docs/results/digits/results.csv"
TABLES: dict[str, Callable[[], list[str]]] = {
    "digits": preset_table(DIGITS, [("clean test acc (%)", 1.0, "test_accuracy"),
                                    ("augmented test views (%)", 1.0, "aug_test_acc"),
                                    ("kNN k=10 (%)", 1.0, "knn10_acc"),
                                    ("10 % of the labels (%)", 0.1, "test_accuracy")]),
    "digits-verdicts": verdict_table(DIGITS, [1.0], [
        ("random", 0.1, "test_accuracy"), ("random", 1.0, "test_accuracy"), ("random", 1.0, "aug_test_acc"),
        ("random", 1.0, "knn10_acc"), ("supervised", 0.1, "test_accuracy"), ("supervised", 1.0, "test_accuracy"),
        ("supervised", 1.0, "aug_test_acc"), ("supervised", 1.0, "knn10_acc"), ("scratch", 0.1, "test_accuracy")]),
}
FASHION = "docs/results/fashion_mnist/results.csv"
TABLES.update({
    "fashion": preset_table(FASHION, [("10 % of the labels (5,400), L-BFGS (%)", 0.1, "test_accuracy"),
                                      ("all labels, Adam (%)", 1.0, "test_accuracy"),
                                      ("kNN k=10, all labels (%)", 1.0, "knn10_acc")]),
    "fashion-verdicts": verdict_table(FASHION, [0.1, 1.0], [
        ("random", 0.1, "test_accuracy"), ("random", 1.0, "test_accuracy"), ("random", 1.0, "knn10_acc"),
        ("supervised", 0.1, "test_accuracy"), ("supervised", 1.0, "test_accuracy"), ("supervised", 1.0, "knn10_acc"),
        ("scratch", 0.1, "test_accuracy")]),
    "crossover-probes": probes_table("docs/results/fashion_crossover/results.csv", "random"),
    "fashion-answer": verdict_matrix(FASHION, [0.1, 1.0], [
        ("linear probe, 10 % of the labels", 0.1, "test_accuracy"), ("linear probe, every label", 1.0, "test_accuracy"),
        ("kNN k=10, every label", 1.0, "knn10_acc")], ["random", "supervised", "scratch"]),
})


def record_table(path: Path) -> list[str]:
    """A record: the table of a run whose own output folder was not kept, as a CSV committed beside the study
    results. Lines starting with `#` say where the figures come from (command, date, machine); the first other line
    is the header; every cell is written as it stands (bold marked with ** in the file)."""
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    except FileNotFoundError:
        raise UserError(f"no record {path.relative_to(ROOT)}") from None
    rows = list(csv.reader(lines))
    if len(rows) < 2 or any(len(r) != len(rows[0]) for r in rows):
        raise UserError(f"{path}: a record needs a header and rows of as many fields")
    return ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])] + \
        ["| " + " | ".join(r) + " |" for r in rows[1:]]


def table_lines(name: str, where: str, tables: Mapping[str, Callable[[], list[str]]]) -> list[str]:
    if name.startswith("records/"):
        return record_table(ROOT / RECORDS / f"{name.removeprefix('records/')}.csv")
    if name not in tables:
        raise UserError(f"{where}: unknown table {name!r}; known: {', '.join(sorted(tables))}, records/<NAME>")
    return tables[name]()


def markdown_files(root: Path = ROOT) -> list[Path]:
    out = []
    for name in DOCS:
        path = root / name
        out += sorted(path.rglob("*.md")) if path.is_dir() else [path] if path.exists() else []
    return out


def render_file(text: str, where: str, tables: Mapping[str, Callable[[], list[str]]] = TABLES) -> tuple[str, list[str]]:
    """(text with every generated table written anew, the names of the tables that changed)."""
    changed = []

    def fill(m: re.Match) -> str:
        name = m["name"]
        body = "\n".join(table_lines(name, where, tables)) + "\n"
        if body != m["body"]:
            changed.append(name)
        return m[1] + body + m[4]

    return BLOCK.sub(fill, text), changed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each table that differs")
    p.add_argument("--root", default=str(ROOT), help="the repository whose README.md and docs/ are read")
    args = p.parse_args(argv)
    stale, seen = [], 0
    for path in markdown_files(Path(args.root)):
        text = path.read_text(encoding="utf-8")
        new, changed = render_file(text, str(path))
        seen += len(BLOCK.findall(text))
        stale += [f"{path.relative_to(args.root)}: {name}" for name in changed]
        if changed and not args.check:
            path.write_text(new, encoding="utf-8")
    if args.check and stale:
        for line in stale:
            print(f"differs from its results file: {line}")
        print("run `python benchmarks/tables.py` to rewrite them (and commit the results file they come from)")
        return 1
    print(f"{seen} generated tables, {len(stale)} {'stale' if args.check else 'rewritten'}")
    return 0


if __name__ == "__main__":
    run_cli(lambda argv: sys.exit(main(argv)))
