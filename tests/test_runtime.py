"""utils/runtime.py: run_settings sets a run's CPU threads and determinism and restores them after;
runtime_info reports them.

    python -m pytest tests/test_runtime.py -q
"""
import json

import pytest
import torch

from utils.runtime import run_settings, runtime_info


@pytest.fixture
def restore_torch():
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark)
    yield saved
    torch.set_num_threads(saved[0])
    torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
    torch.backends.cudnn.benchmark = saved[3]


def test_run_settings_apply_inside_and_restore_after(restore_torch, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # set_deterministic's setdefault: undone after
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = False
    with run_settings(1, True):
        inside = runtime_info()
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.benchmark is False
    assert inside["threads"] == 1 and inside["deterministic"] is True and inside["cudnn_benchmark"] is False
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == (
        2, False, False)


def test_run_settings_restore_after_an_error_and_turn_determinism_off(restore_torch):
    """A deterministic caller (one in-process cell after another) does not leak into a run without it."""
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)  # strict, as a caller might have it
    with pytest.raises(RuntimeError, match="boom"):
        with run_settings(None, False):
            assert torch.get_num_threads() == 1  # None: unchanged
            assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
            raise RuntimeError("boom")
    assert torch.are_deterministic_algorithms_enabled() and not torch.is_deterministic_algorithms_warn_only_enabled()
    assert torch.get_num_threads() == 1


def test_runtime_info_reports_the_thread_variables_of_the_environment(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    info = runtime_info()
    assert info["env"]["OMP_NUM_THREADS"] == "3" and "MKL_NUM_THREADS" not in info["env"]
    assert info["threads"] == torch.get_num_threads() and info["interop_threads"] == torch.get_num_interop_threads()


def test_runtime_info_names_the_cpu_and_the_instruction_set_its_kernels_use():
    """Two machines with other CPUs round differently, so a run records which one computed it."""
    info = runtime_info()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["cpu"], str) and info["cpu_capability"]
    json.dumps(info)  # it goes into config.json and eval.json as it is
