"""benchmarks/threads.py runs on CPU with tiny settings, measures each mode side by side and restores torch's
thread count and determinism.

    python -m pytest tests/test_threads_benchmark.py -q
"""
import importlib.util
import json
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_benchmark_measures_each_thread_count_side_by_side_and_restores_threads(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("threads_bench", ROOT / "benchmarks" / "threads.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    before = torch.get_num_threads()
    out = tmp_path / "threads.json"
    # One count, with and without deterministic kernels: 2 threads on 2 cores shared with other jobs took
    # minutes (OpenMP waits on a descheduled thread at every op), so the side by side is of those two modes.
    result = bench.main(["--threads", "1", "--batch_size", "2", "--image_size", "8", "--steps", "1",
                         "--repeats", "1", "--deterministic", "--json", str(out)])
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    got = {(r["threads"], r["deterministic"]): r for r in result["results"]}
    assert sorted(got) == [(1, False), (1, True)]
    assert all(len(r["repeats"]) == 1 and r["step_s_min"] <= r["step_s_median"] and r["images_per_s"] > 0
               for r in got.values())
    table = capsys.readouterr().out.splitlines()
    assert sum(line.split()[:2] in (["1", "no"], ["1", "yes"]) for line in table) == 2
