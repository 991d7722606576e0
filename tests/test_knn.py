"""Weighted kNN (utils/eval/knn.py) against a plain per-sample reference written from Wu et al. 2018.

    python -m pytest tests/test_knn.py -q
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from utils.eval.knn import knn_accuracy, knn_predict


def naive_knn(train_h, train_y, test_h, num_classes, k, temperature):
    """One test sample at a time, in float64: cosine similarity, top k, exp(s / t) votes per class."""
    train = np.asarray(train_h, dtype=np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    preds = []
    for q in np.asarray(test_h, dtype=np.float64):
        q = q / np.linalg.norm(q)
        sims = [float(np.dot(q, t)) for t in train]
        order = sorted(range(len(sims)), key=lambda j: -sims[j])[: min(k, len(sims))]
        votes = [0.0] * num_classes
        for j in order:
            votes[int(train_y[j])] += math.exp(sims[j] / temperature)
        preds.append(max(range(num_classes), key=lambda c: (votes[c], -c)))  # ties: lowest label
    return np.array(preds)


def clustered(n, num_classes, dim, noise, seed):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g)
    y = torch.randint(0, num_classes, (n,), generator=g)
    return centres[y] + noise * torch.randn(n, dim, generator=g), y


@pytest.mark.parametrize("k,temperature,chunk", [(20, 0.1, 16), (5, 0.5, 1000), (200, 0.07, 7)])
def test_knn_matches_naive_reference(k, temperature, chunk):
    # Noisy, overlapping clusters: many predictions depend on the weighting, not just the majority.
    train_h, train_y = clustered(150, 5, 12, noise=1.5, seed=1)
    test_h, test_y = clustered(77, 5, 12, noise=1.5, seed=2)
    got = knn_predict(train_h, train_y, test_h, 5, k=k, temperature=temperature, chunk_size=chunk)
    want = naive_knn(train_h, train_y, test_h, 5, k, temperature)
    assert got.dtype == torch.long and got.shape == (77,)
    np.testing.assert_array_equal(got.numpy(), want)
    acc = knn_accuracy(train_h, train_y, test_h, test_y, 5, k=k, temperature=temperature)
    assert acc == pytest.approx(100.0 * float((torch.from_numpy(want) == test_y).float().mean()))


def test_weights_matter():
    # Query next to the lone class-1 sample; four class-0 samples are further away. A plain
    # majority vote over k=5 says 0; exp(s / 0.1) weighting lets the close neighbour win.
    train_h = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8], [0.5, 0.85], [0.5, -0.85]])
    train_y = torch.tensor([1, 0, 0, 0, 0])
    test_h = torch.tensor([[1.0, 0.01]])
    assert knn_predict(train_h, train_y, test_h, 2, k=5, temperature=0.1).item() == 1
    assert knn_predict(train_h, train_y, test_h, 2, k=5, temperature=100.0).item() == 0


def test_scale_invariant_and_separable_clusters():
    train_h, train_y = clustered(200, 4, 8, noise=0.05, seed=3)
    test_h, test_y = clustered(50, 4, 8, noise=0.05, seed=3)  # same centres (same seed), same labels
    assert knn_accuracy(train_h, train_y, test_h, test_y, 4, k=10) == 100.0
    a = knn_predict(train_h, train_y, test_h, 4, k=10)
    b = knn_predict(train_h * 37.0, train_y, test_h * 0.01, 4, k=10)
    assert torch.equal(a, b)  # cosine similarity ignores feature scale


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError):
        knn_predict(torch.randn(5, 3), torch.zeros(4, dtype=torch.long), torch.randn(2, 3), 2)
