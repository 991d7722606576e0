"""Download, verify and prepare datasets; nothing else.

    python data.py                          # Tiny-ImageNet into data/ (download, extract, array cache)
    python data.py --dataset cifar10        # CIFAR-10 into data/cifar-10-batches-py
    python data.py --dataset all --data_dir /big/disk
    python data.py --dataset tiny-imagenet --url http://mirror/tiny-imagenet-200.zip --md5 <md5>
    python data.py --dataset digits         # ships inside scikit-learn: says so, downloads nothing

Downloads resume after an interruption, are md5-checked before they get their final name, and
archives are extracted safely (utils/data/download.py, utils/data/archive.py). A second run finds
everything in place and says so in one line without touching the network. `train.py` and
`test.py` fetch what they need by themselves; this script is for doing it ahead of time. The
datasets, where they come from and how to provide them offline: docs/datasets.md.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from utils.cli import ArgumentParser, HelpFormatter
from utils.data.registry import DATASET_ALIASES, DATASETS, DOWNLOADABLE, canonical_dataset
from utils.errors import UserError, run_cli

_MD5_PATTERN = re.compile(r"^[0-9a-fA-F]{32}$")

logger = logging.getLogger("data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset", default="tiny-imagenet", choices=[*DATASETS, *DATASET_ALIASES, "all"],
                        help="what to prepare ('imagenet' means Tiny-ImageNet; all: " + ", ".join(DOWNLOADABLE)
                        + "; " + ", ".join(n for n in DATASETS if n not in DOWNLOADABLE) + " need no download)")
    parser.add_argument("--data_dir", default="data", help="where datasets are stored (and downloaded to)")
    parser.add_argument("--url", default=None,
                        help="download from this mirror instead of the official URL (one dataset only)")
    parser.add_argument("--md5", default=None,
                        help="md5 of the mirror's archive; without it the official archive's md5 is required")
    parser.add_argument("--force", action="store_true",
                        help="extract and prepare again; re-download an archive that fails its md5")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    args.dataset = canonical_dataset(args.dataset)
    if args.dataset == "all" and (args.url or args.md5):
        raise UserError("--url/--md5 name one archive: use them with a single --dataset, not 'all'")
    if (args.url or args.md5) and args.dataset != "all" and DATASETS[args.dataset].prepare is None:
        raise UserError(f"{args.dataset} has nothing to download: --url/--md5 do not apply")
    if args.md5 is not None and not _MD5_PATTERN.match(args.md5):
        raise UserError(f"--md5 must be 32 hexadecimal digits, got {args.md5!r}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Path | None]:
    """Prepare the chosen dataset(s); return {dataset name: prepared folder (None: nothing to download)}."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    data_dir = Path(args.data_dir)
    names = DOWNLOADABLE if args.dataset == "all" else (args.dataset,)
    prepared: dict[str, Path | None] = {}
    for name in names:
        info = DATASETS[name]
        if info.prepare is None:
            print(f"{name}: {info.source}")
            prepared[name] = None
            continue
        if not args.force and info.ready(data_dir):
            path = info.prepare(data_dir)  # complete already: returns its folder without the network
            print(f"{name}: already prepared in {path}, nothing to do")
        else:
            path = info.prepare(data_dir, url=args.url, md5=args.md5, force=args.force)
            print(f"{name}: prepared in {path}")
        prepared[name] = path
    return prepared


if __name__ == "__main__":
    run_cli(main)
