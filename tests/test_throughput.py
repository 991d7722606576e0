"""benchmarks/throughput.py runs end to end on CPU with tiny settings and writes its JSON."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_prints_side_by_side_and_writes_json(tmp_path, capsys):
    bench = _load_benchmark()
    out = tmp_path / "bench.json"
    result = bench.main(["--device", "cpu", "--batch_size", "4", "--steps", "1", "--warmup", "0",
                         "--num_images", "64", "--workers", "0", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["batch_size"] == 4 and saved["device_type"] == "cpu"
    for path in ("baseline", "fast"):
        assert saved[path]["images_per_s"] > 0 and saved[path]["epoch_seconds"] > 0
    assert saved["flops_per_image"] > 6e9  # ResNet-18 CIFAR stem, two views, fwd+bwd: 6.66 GFLOP
    assert saved["speedup"] == result["speedup"]
    assert saved["augmentation"]["batched_views_per_s"] > 0
    printed = capsys.readouterr().out
    assert "baseline" in printed and "fast" in printed


def test_compile_cost_break_even_closed_form():
    bench = _load_benchmark()
    # Eager: 100 images/s (1 s per step of 100), 1 s warm-up; compiled: 200 images/s, 11 s warm-up.
    # 10 s of compilation, 0.5 s saved per step: ahead after 20 steps = 2,000 images = 0.04 CIFAR-10 epochs.
    cost = bench.compile_cost({"warmup_s": 1.0, "images_per_s": 100.0},
                              {"warmup_s": 11.0, "images_per_s": 200.0}, batch_size=100)
    assert cost["extra_warmup_s"] == 10.0 and cost["speedup"] == 2.0
    assert abs(cost["break_even_steps"] - 20.0) < 1e-9
    assert abs(cost["break_even_epochs"] - 0.04) < 1e-12
    never = bench.compile_cost({"warmup_s": 1.0, "images_per_s": 100.0},
                               {"warmup_s": 30.0, "images_per_s": 95.0}, batch_size=100)
    assert never["break_even_steps"] is None and never["break_even_epochs"] is None
    assert never["speedup"] < 1


def test_compile_flag_times_both_fast_paths(tmp_path, capsys, monkeypatch):
    """--compile runs the fast path uncompiled and compiled and reports the cost (compiler stubbed out)."""
    bench = _load_benchmark()
    compiled = []
    monkeypatch.setattr(bench.torch, "compile", lambda model: compiled.append(model) or model)
    out = tmp_path / "bench.json"
    bench.main(["--device", "cpu", "--batch_size", "4", "--steps", "1", "--warmup", "1", "--compile",
                "--num_images", "64", "--workers", "0", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert len(compiled) == 2  # the SimCLR model of the compiled fast path, and the probe backbone
    assert saved["fast_uncompiled"]["images_per_s"] > 0 and saved["fast"]["images_per_s"] > 0
    cost = saved["compile_cost"]
    assert abs(cost["speedup"] - saved["fast"]["images_per_s"] / saved["fast_uncompiled"]["images_per_s"]) < 1e-9
    assert "torch.compile: fast path" in capsys.readouterr().out


def test_cpu_bf16_runs_the_fast_path_twice_side_by_side(tmp_path, capsys, monkeypatch):
    """--cpu_bf16 on a CPU with native bf16 times the fast path under bf16 autocast beside fp32 (the CPU check is
    stubbed: on a CPU without it autocast still runs, only slowly); on one without, one line and no run."""
    bench = _load_benchmark()
    used = []
    real = bench.autocast_context
    monkeypatch.setattr(bench, "autocast_context", lambda device, cpu=False: used.append(cpu) or real(device))
    monkeypatch.setattr(bench, "cpu_bf16_native", lambda: True)
    out = tmp_path / "bench.json"
    bench.main(["--device", "cpu", "--batch_size", "4", "--steps", "1", "--warmup", "0", "--cpu_bf16",
                "--num_images", "64", "--workers", "0", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert used[:2] == [False, True]
    assert saved["fast_cpu_bf16"]["images_per_s"] > 0 and saved["fast"]["images_per_s"] > 0
    assert "bf16 autocast on this CPU: fast path" in capsys.readouterr().out
    monkeypatch.setattr(bench, "cpu_bf16_native", lambda: False)
    with pytest.raises(bench.UserError, match="no native bf16"):
        bench.main(["--device", "cpu", "--cpu_bf16", "--json", str(tmp_path / "never.json")])
    assert not (tmp_path / "never.json").exists()


def test_cpu_bf16_native_reads_the_flags_line(tmp_path):
    from utils.runtime import cpu_bf16_native
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    assert cpu_bf16_native(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f amx_tile amx_bf16\n")
    assert cpu_bf16_native(str(info))
    info.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    assert not cpu_bf16_native(str(info))
    assert not cpu_bf16_native(str(tmp_path / "missing"))
