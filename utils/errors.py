"""User-facing errors: one clear line and exit code 2, the traceback only on request.

Every script runs its `main` through `run_cli`, so a `UserError` raised anywhere becomes

    error: <message>

on stderr with exit status 2. Set `--debug` or the environment variable `SIMCLR_DEBUG=1`
to see the full traceback instead. Exit codes: 0 done, 2 user error, 3 non-finite loss (the
last good checkpoint is kept), 130 / 143 stopped by Ctrl-C / SIGTERM, 1 a bug (traceback).

    python train.py --data_scale 0      # error: --data_scale must be in (0, 1], got 0.0   (exit 2)
"""
from __future__ import annotations

import os
import sys
from typing import Callable, Sequence

EXIT_USER_ERROR = 2
EXIT_NON_FINITE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
DEBUG_ENV = "SIMCLR_DEBUG"


class UserError(Exception):
    """A problem the user can fix (bad flag, missing data, unreadable checkpoint)."""


class DataMissingError(UserError):
    """A dataset or weights file is not on disk and could not be fetched."""


class NonFiniteLossError(Exception):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def debug_enabled(argv: Sequence[str] | None = None) -> bool:
    """True when `--debug` is on the command line or SIMCLR_DEBUG is set to a true value."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ.get(DEBUG_ENV, "").strip().lower()
    return "--debug" in argv or env in {"1", "true", "yes", "on"}


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run `main(argv)` as a command: user errors exit 2 and a NaN loss 3, with one line; Ctrl-C exits 130."""
    try:
        main(argv)
    except UserError as exc:
        if debug_enabled(argv):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except NonFiniteLossError as exc:
        if debug_enabled(argv):
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_NON_FINITE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
