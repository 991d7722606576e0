"""utils/eval/neighbours.py and test.py --knn's neighbours.png: the neighbours against a naive cosine search written
out sample by sample, the fixed queries, and the picture on disk."""
from __future__ import annotations

import json
import math

import numpy as np
import torch

import test as test_script
import train
from utils.eval.neighbours import nearest_neighbours, plot_neighbours, query_indices


def naive_neighbours(train_h: torch.Tensor, query: torch.Tensor, k: int) -> list[int]:
    """Cosine similarity to every train sample, one by one; sorted by similarity, then by index."""
    def cosine(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))
    sims = [(cosine(query.tolist(), row.tolist()), i) for i, row in enumerate(train_h)]
    return [i for _, i in sorted(sims, key=lambda t: (-t[0], t[1]))[:k]]


def test_the_neighbours_are_a_naive_cosine_search():
    gen = torch.Generator().manual_seed(0)
    train_h, queries = torch.randn(40, 7, generator=gen, dtype=torch.float64), torch.randn(5, 7, generator=gen,
                                                                                          dtype=torch.float64)
    train_h[13] = train_h[2]  # a duplicate: a tie in similarity, broken by the lower index
    queries[0] = train_h[2]
    idx, sim = nearest_neighbours(train_h, queries, k=6)
    assert idx.shape == sim.shape == (5, 6)
    for q in range(5):
        assert idx[q].tolist() == naive_neighbours(train_h, queries[q], 6)
    assert idx[0, :2].tolist() == [2, 13] and torch.allclose(sim[0, :2], torch.ones(2))
    assert bool((sim[:, :-1] >= sim[:, 1:] - 1e-6).all())  # most similar first


def test_the_queries_are_the_first_test_image_of_each_class():
    labels = np.array([3, 1, 1, 0, 3, 2, 0])
    assert query_indices(labels) == [3, 1, 5, 0] and query_indices(labels, num_queries=2) == [3, 1]


def test_knn_writes_neighbours_png_for_the_backbone(tmp_path):
    run = tmp_path / "random"
    train.main(["--dataset", "digits", "--epochs", "0", "--device", "cpu", "--quiet", "--run_dir", str(run)])
    test_script.main(["--model_path", str(run / "final.pth"), "--dataset", "digits", "--device", "cpu", "--quiet",
                      "--knn", "--test_num_epochs", "2", "--run_dir", str(tmp_path / "eval")])
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    found = report["neighbours"]
    assert found["picture"] == "neighbours.png" and (tmp_path / "eval" / "neighbours.png").stat().st_size > 20_000
    assert len(found["queries"]) == 8 and np.array(found["train_rows"]).shape == (8, 6)
    assert all(a >= b - 1e-6 for row in found["similarity"] for a, b in zip(row, row[1:]))


def test_the_picture_is_drawn_from_images_in_memory(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    path = plot_neighbours(tmp_path / "n.png", images[:2], np.stack([images[[1, 2]], images[[0, 2]]]), [0, 1],
                           np.array([[0, 1], [1, 1]]), ["a", "b"], "title")
    assert path.stat().st_size > 5_000


def test_the_study_sets_one_picture_per_kind_side_by_side(tmp_path):
    """The report picks, per kind, the lowest seed's picture with every label at the largest data scale."""
    from utils import sweep

    images = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    rows = []
    for kind, scale, seed in (("random", None, 0), ("simclr", 1.0, 1), ("simclr", 1.0, 0), ("simclr", 0.1, 0)):
        cell = f"{kind}_{scale}_{seed}"
        eval_dir = tmp_path / "runs" / cell / "eval-digits-epoch0002"
        eval_dir.mkdir(parents=True)
        plot_neighbours(eval_dir / "neighbours.png", images[:1], images[None, 1:], [0], np.array([[0, 1]]),
                        ["a", "b"], cell)
        rows.append({"kind": kind, "data_scale": scale, "seed": seed, "label_fraction": 1.0, "eval_epoch": 2,
                     "checkpoint": f"runs/{cell}/final.pth", "budget": "epochs"})
    chosen = sweep.neighbour_pictures(tmp_path, rows)
    assert [(title, path.parent.parent.name) for title, path in chosen] == [
        ("random init, seed 0", "random_None_0"), ("SimCLR, data scale 1, seed 0", "simclr_1.0_0")]
    assert sweep.plot_neighbours_side_by_side(tmp_path, rows, tmp_path / "n.png").stat().st_size > 20_000
    assert sweep.plot_neighbours_side_by_side(tmp_path, rows[:1], tmp_path / "m.png") is None
