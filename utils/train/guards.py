"""Run guards for train.py: stop cleanly on SIGINT/SIGTERM, stop on (or skip) a non-finite loss.

The training loop saves last.pth at the end of the step in which a signal arrived, then raises
`Interrupted`; a NaN/inf loss raises NonFiniteLossError naming the epoch and step, before any
checkpoint could hold the bad weights. With --nan_policy skip, `finite_on_every_rank` decides
the skip for all ranks at once.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

import torch

from utils.distributed import all_reduce_sum
from utils.errors import NonFiniteLossError

TEST_SIGNAL_ENV = "SIMCLR_TEST_SIGNAL_AT_STEP"


class Interrupted(Exception):
    """SIGINT/SIGTERM received; last.pth has been written. The command exits 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves last.pth at the end of the current step and exits."""

    def __init__(self):
        self.signum = 0
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def finite_on_every_rank(loss: torch.Tensor) -> bool:
    """--nan_policy skip's test, agreed by every rank: True when the loss is finite on all of them.

    Under torchrun a supervised loss is per rank: a rank that skipped alone would leave the others
    waiting in backward's gradient all-reduce (a hang), or pair their steps wrongly. One all-reduce
    of the non-finite count (a copy when not distributed) makes all ranks skip the same steps.
    """
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    return all_reduce_sum(bad).item() == 0


def check_finite(recent: list[torch.Tensor], epoch: int, last_step: int, run_dir: Path) -> None:
    """Raise naming the first non-finite loss among `recent` (the steps up to `last_step`)."""
    if not recent:
        return
    finite = torch.isfinite(torch.stack(recent).float()).cpu()
    if not bool(finite.all()):
        step = last_step - len(recent) + 1 + int((~finite).nonzero()[0])
        raise NonFiniteLossError(f"non-finite loss at epoch {epoch + 1}, step {step + 1}; {last_good(run_dir)} "
                                 "(lower --learning_rate, or --nan_policy skip)")


def last_good(run_dir: Path) -> str:
    last = run_dir / "last.pth"
    return f"the last good checkpoint is kept: {last}" if last.exists() else "no checkpoint was written yet"


def test_signal_hook() -> tuple[int, int] | None:
    """(step, signal) from TEST_SIGNAL_ENV, or None (always None outside the tests)."""
    spec = os.environ.get(TEST_SIGNAL_ENV, "").strip()
    if not spec:
        return None
    step, _, name = spec.partition(":")
    return int(step), int(getattr(signal, "SIG" + (name or "KILL").upper()))
