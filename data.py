"""Download, verify and prepare datasets; nothing else.

    python data.py                          # Tiny-ImageNet into data/ (download, extract, array cache)
    python data.py --dataset cifar10        # CIFAR-10 into data/cifar-10-batches-py
    python data.py --dataset all --data_dir /big/disk
    python data.py --dataset tiny-imagenet --url http://mirror/tiny-imagenet-200.zip --md5 <md5>

Downloads resume after an interruption, are md5-checked before they get their final name, and
archives are extracted safely (utils/data/download.py, utils/data/archive.py). A second run finds
everything in place and says so in one line without touching the network. `train.py` and
`test.py` fetch what they need by themselves; this script is for doing it ahead of time.
"""
from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path

from utils.cli import ArgumentParser, HelpFormatter
from utils.data.cifar import cifar_ready, ensure_cifar
from utils.data.tinyimagenet import TINY_IMAGENET_MD5, TINY_IMAGENET_URL, prepare_tiny_imagenet, tiny_imagenet_ready
from utils.errors import UserError, run_cli

DATASETS = ("tiny-imagenet", "cifar10", "cifar100")
ALIASES = {"imagenet": "tiny-imagenet"}  # the original project's name for Tiny-ImageNet
_MD5_PATTERN = re.compile(r"^[0-9a-fA-F]{32}$")

logger = logging.getLogger("data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--dataset", default="tiny-imagenet", choices=[*DATASETS, *ALIASES, "all"],
                        help="what to prepare ('imagenet' means Tiny-ImageNet)")
    parser.add_argument("--data_dir", default="data", help="where datasets are stored (and downloaded to)")
    parser.add_argument("--url", default=None,
                        help="download from this mirror instead of the official URL (one dataset only)")
    parser.add_argument("--md5", default=None,
                        help="md5 of the mirror's archive; without it the official archive's md5 is required")
    parser.add_argument("--force", action="store_true",
                        help="extract and prepare again; re-download an archive that fails its md5")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    args = parser.parse_args(argv)
    args.dataset = ALIASES.get(args.dataset, args.dataset)
    if args.dataset == "all" and (args.url or args.md5):
        raise UserError("--url/--md5 name one archive: use them with a single --dataset, not 'all'")
    if args.md5 is not None and not _MD5_PATTERN.match(args.md5):
        raise UserError(f"--md5 must be 32 hexadecimal digits, got {args.md5!r}")
    return args


def _ready(name: str, data_dir: Path) -> bool:
    return tiny_imagenet_ready(data_dir) if name == "tiny-imagenet" else cifar_ready(name, data_dir)


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Prepare the chosen dataset(s); return {dataset name: prepared folder}."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s")
    data_dir = Path(args.data_dir)
    names = DATASETS if args.dataset == "all" else (args.dataset,)
    prepared: dict[str, Path] = {}
    for name in names:
        if not args.force and _ready(name, data_dir):
            path = prepare_tiny_imagenet(data_dir) if name == "tiny-imagenet" else ensure_cifar(name, data_dir)
            print(f"{name}: already prepared in {path}, nothing to do")
        elif name == "tiny-imagenet":
            path = prepare_tiny_imagenet(data_dir, url=args.url or TINY_IMAGENET_URL,
                                         md5=args.md5 or TINY_IMAGENET_MD5, force=args.force)
            print(f"{name}: prepared in {path}")
        else:
            path = ensure_cifar(name, data_dir, url=args.url, md5=args.md5, force=args.force)
            print(f"{name}: prepared in {path}")
        prepared[name] = path
    return prepared


if __name__ == "__main__":
    run_cli(main)
