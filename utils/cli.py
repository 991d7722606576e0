"""Command-line pieces shared by the scripts, defined once and reused through argparse parents.

Every numeric flag is read by one of the `type=` functions below, so a value that is not a
finite number in the flag's range (NaN, inf, a negative seed, a 100000 px image) is refused by
argparse before any work, with exit code 2 and one line (`ArgumentParser.error`):

    python train.py --temperature nan   # train.py: error: argument --temperature: expected a finite number, got 'nan'
"""
from __future__ import annotations

import argparse
import math

SEED_MAX = 2**32 - 1  # numpy's seed range (torch accepts more; numpy is the narrower of the two)
# Largest --image_size: one 3 x 1024 x 1024 uint8 image is 3 MiB, a dataset of them already tens of
# GB on the device, and ResNet-18 activations at batch 64 exceed a 24 GB GPU's memory well below this.
IMAGE_SIZE_MIN, IMAGE_SIZE_MAX = 8, 1024
# Most CPU threads a run may ask for: above the largest two-socket servers' hardware threads (2 x 192 cores x
# 2); each thread is an OpenMP worker, so a typo such as 100000 would start that many.
THREADS_MAX = 1024
# Appended to the help of a flag whose default depends on the recipe or train type: it prints as nothing, and
# keeps the help formatter from adding 'default: None'.
BY_TYPE = "%(default).0s"


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `<prog>: error: <message>`, exit 2 (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def str2bool(value: str) -> bool:
    """'true'/'false' (and yes/no/1/0) as the original project's --pretrained took them."""
    v = str(value).strip().lower()
    if v in {"true", "t", "yes", "y", "1"}:
        return True
    if v in {"false", "f", "no", "n", "0"}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def _integer(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None


def finite_float(value: str) -> float:
    """A float that is neither NaN nor +-inf (float('nan') parses, and every comparison with it is False)."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {value!r}")
    return x


def positive_float(value: str) -> float:
    """A finite float > 0 (learning rates, temperatures)."""
    x = finite_float(value)
    if x <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {x:g}")
    return x


def non_negative_float(value: str) -> float:
    """A finite float >= 0 (weight decay, warmup epochs, cosine floor)."""
    x = finite_float(value)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {x:g}")
    return x


def fraction(value: str) -> float:
    """A finite float in (0, 1] (a share of a dataset that must keep something)."""
    x = finite_float(value)
    if not 0 < x <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {x:g}")
    return x


def probability(value: str) -> float:
    """A finite float in [0, 1]."""
    x = finite_float(value)
    if not 0 <= x <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {x:g}")
    return x


def jitter_strength(value: str) -> float:
    """SimCLR colour jitter strength s in [0, 2.5]: hue 0.2 s must stay within torchvision's [0, 0.5]."""
    x = finite_float(value)
    if not 0 <= x <= 2.5:
        raise argparse.ArgumentTypeError(f"must be in [0, 2.5] (hue 0.2 s <= 0.5), got {x:g}")
    return x


def degrees(value: str) -> float:
    """A rotation range in degrees, [0, 180]."""
    x = finite_float(value)
    if not 0 <= x <= 180:
        raise argparse.ArgumentTypeError(f"must be in [0, 180] degrees, got {x:g}")
    return x


def momentum(value: str) -> float:
    """SGD momentum: a finite float in [0, 1) (1 never forgets a gradient; above 1 diverges)."""
    x = finite_float(value)
    if not 0 <= x < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {x:g}")
    return x


def positive_int(value: str) -> int:
    n = _integer(value)
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {n}")
    return n


def non_negative_int(value: str) -> int:
    n = _integer(value)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {n}")
    return n


def seed(value: str) -> int:
    """A random seed numpy accepts: an integer in [0, 2**32 - 1]."""
    n = _integer(value)
    if not 0 <= n <= SEED_MAX:
        raise argparse.ArgumentTypeError(f"must be in [0, {SEED_MAX}], got {n}")
    return n


def image_size(value: str) -> int:
    """An image side in pixels, in [IMAGE_SIZE_MIN, IMAGE_SIZE_MAX]."""
    n = _integer(value)
    if not IMAGE_SIZE_MIN <= n <= IMAGE_SIZE_MAX:
        raise argparse.ArgumentTypeError(f"must be in [{IMAGE_SIZE_MIN}, {IMAGE_SIZE_MAX}] pixels, got {n}")
    return n


def thread_count(value: str) -> int:
    """CPU threads: an integer in [1, THREADS_MAX]."""
    n = _integer(value)
    if not 1 <= n <= THREADS_MAX:
        raise argparse.ArgumentTypeError(f"must be in [1, {THREADS_MAX}], got {n}")
    return n


def common_parser() -> argparse.ArgumentParser:
    """Flags every script shares, with one spelling, default and help text."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("common")
    g.add_argument("--data_dir", default="data", help="where datasets are stored (and downloaded to)")
    g.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda or cuda:N")
    g.add_argument("--seed", type=seed, default=0,
                   help=f"seed for data subsets, order, augmentation and init (0 to {SEED_MAX})")
    g.add_argument("--workers", type=non_negative_int, default=2,
                   help="DataLoader worker processes (DataLoader path only; the device path needs none)")
    g.add_argument("--debug", action="store_true", help="show full tracebacks instead of one-line errors")
    return p


def reproducibility_parser() -> argparse.ArgumentParser:
    """--threads and --deterministic, shared by train.py and test.py (the study forwards both to every cell;
    docs/reproducibility.md says what each one promises)."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("reproducibility")
    g.add_argument("--threads", type=thread_count, default=None,
                   help="intra-op CPU threads (torch.set_num_threads) while this script runs, restored after; CPU "
                        "results depend on it [torch's default: one per core]%(default).0s")
    g.add_argument("--deterministic", action="store_true",
                   help="deterministic kernels (torch.use_deterministic_algorithms, warn-only; cuDNN benchmarking off): "
                        "on CPU at a fixed --threads runs repeat bit for bit with or without it; on GPU only as far as torch's "
                        "kernels allow (docs/reproducibility.md)")
    return p


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults in --help, and the module docstring's layout kept as written."""
