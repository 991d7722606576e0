"""benchmarks/throughput.py runs end to end on CPU with tiny settings and writes its JSON."""
import importlib.util
import json
from pathlib import Path

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
