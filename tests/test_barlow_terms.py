"""benchmarks/barlow_terms.py: the two terms of the Barlow Twins loss add up to the loss (the paper's eq. 1
written naively in tests/test_methods.py), identical views meet the closed-form floor of the redundancy term,
and the script measures a run's checkpoint and refuses other methods' in one line.

    python -m pytest tests/test_barlow_terms.py -q
"""
import importlib.util
from pathlib import Path

import pytest
import torch

import train
from tests.test_methods import TINY, naive_barlow
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("barlow_terms", ROOT / "benchmarks" / "barlow_terms.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


@pytest.mark.parametrize("n, d, seed", [(6, 4, 0), (5, 9, 1)])
def test_the_terms_add_up_to_the_naive_loss(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    t = bench.barlow_terms(z1, z2, 0.0051)
    assert 0.1 * (t["invariance"] + t["redundancy"]) == pytest.approx(
        naive_barlow(z1.tolist(), z2.tolist(), 0.0051, 0.1), rel=1e-5)
    assert -1 <= t["mean_cii"] <= 1


def test_identical_views_leave_no_invariance_term_and_meet_the_redundancy_floor_when_the_batch_is_short():
    n, d, lambd = 9, 32, 0.5
    floor = bench.redundancy_floor(d, n, lambd)
    assert floor == pytest.approx(lambd * (d * d / (n - 1) - d)) and bench.redundancy_floor(8, 64, lambd) == 0
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = bench.barlow_terms(z, z, lambd)
    assert t["invariance"] == pytest.approx(0.0, abs=1e-3) and t["mean_cii"] == pytest.approx(1.0, abs=1e-4)
    assert t["redundancy"] > floor * 1.01  # random embeddings: above the floor
    # The floor is met when C's n - 1 non-zero eigenvalues are equal: an orthonormal basis B (n, n-1) of the
    # centred batch space times Q (n-1, d) with orthonormal rows and equal column norms ([I I I I] / 2 here).
    basis = torch.linalg.svd(torch.eye(n, dtype=torch.float64) - 1.0 / n)[0][:, : n - 1]
    q = torch.cat([torch.eye(n - 1, dtype=torch.float64)] * (d // (n - 1)), dim=1) / (d // (n - 1)) ** 0.5
    even = 100 * basis @ q  # columns of variance 278: BatchNorm's eps 1e-5 negligible
    t = bench.barlow_terms(even, even, lambd)
    assert t["invariance"] == pytest.approx(0.0, abs=1e-3)
    assert t["redundancy"] == pytest.approx(floor, rel=1e-4)


def test_the_script_measures_a_barlow_run_and_refuses_another_method(tmp_path, capsys):
    torch.set_num_threads(1)
    train.main(TINY + ["--train_type", "barlow_twins", "--run_dir", str(tmp_path / "barlow")])
    bench.main([str(tmp_path / "barlow" / "final.pth"), "--images", "20", "--data_dir", str(tmp_path / "data")])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:6]]
            for line in out.splitlines() if line.startswith("| init") or line.startswith("| trained")}
    assert sorted(rows) == ["init", "trained"]
    for inv, red, loss, cii in rows.values():
        assert 0 <= inv and 0 <= red and loss == pytest.approx(0.1 * (inv + red), abs=0.06) and -1 <= cii <= 1
    assert rows["init"] != rows["trained"]
    train.main(TINY + ["--train_type", "simsiam", "--run_dir", str(tmp_path / "simsiam")])
    with pytest.raises(UserError, match="not a Barlow Twins checkpoint"):
        bench.main([str(tmp_path / "simsiam" / "final.pth"), "--data_dir", str(tmp_path / "data")])
