"""Command-line pieces shared by the scripts, defined once and reused through argparse parents."""
from __future__ import annotations

import argparse


def str2bool(value: str) -> bool:
    """'true'/'false' (and yes/no/1/0) as the original project's --pretrained took them."""
    v = str(value).strip().lower()
    if v in {"true", "t", "yes", "y", "1"}:
        return True
    if v in {"false", "f", "no", "n", "0"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {n}")
    return n


def non_negative_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def common_parser() -> argparse.ArgumentParser:
    """Flags every script shares, with one spelling, default and help text."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common")
    g.add_argument("--data_dir", default="data", help="where datasets are stored (and downloaded to)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--seed", type=int, default=0, help="seed for data subsets, order, augmentation and init")
    g.add_argument("--workers", type=non_negative_int, default=2,
                   help="DataLoader worker processes (DataLoader path only; the device path needs none)")
    g.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return p


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and the module docstring's layout kept as written."""
