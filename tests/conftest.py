"""Test-suite guards: offline (only loopback sockets), seeded, small thread pools."""
from __future__ import annotations

import dataclasses
import os
import random
import socket

import numpy as np
import pytest
import torch

_LOOPBACK_PREFIXES = ("127.", "::1", "localhost")
_real_connect = socket.socket.connect
_real_create_connection = socket.create_connection


def _is_loopback(address) -> bool:
    if isinstance(address, tuple) and address:
        host = str(address[0])
        return host.startswith(_LOOPBACK_PREFIXES) or host == "0.0.0.0"
    return isinstance(address, (str, bytes))  # unix sockets are local


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address):
        raise OSError(f"network access blocked in tests: {address!r}")
    return _real_connect(self, address)


def _guarded_create_connection(address, *args, **kwargs):
    if not _is_loopback(address):
        raise OSError(f"network access blocked in tests: {address!r}")
    return _real_create_connection(address, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.create_connection = _guarded_create_connection

# Subprocesses started by tests (scripts run end to end) inherit these. Under pytest-xdist every worker
# and its subprocesses get one thread: two workers of 2 threads each on 2 cores oversubscribe them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True)
def _no_system_datasets(monkeypatch):
    """Tests see only the data they make: the folders operating-system packages install datasets in (Debian's
    dataset-fashion-mnist: /usr/share/datasets/fashion-mnist) are hidden; a test that wants one names its own."""
    from utils.data import mnist

    for name, src in list(mnist.IDX_SOURCES.items()):
        monkeypatch.setitem(mnist.IDX_SOURCES, name, dataclasses.replace(src, system_dirs=()))
    yield


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    """Tests marked `longest` go first (the others keep their order)."""
    items.sort(key=lambda item: item.get_closest_marker("longest") is None)
