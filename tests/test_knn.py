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


# ----------------------------------------------------------------------------------------------
# Uniform votes, k=10: the setting dkobak/simclr-cifar10 reports (scikit-learn, metric cosine).

def naive_uniform_knn(train_h, train_y, test_h, num_classes, k):
    """One test sample at a time, float64: the k most cosine-similar training samples vote 1 each;
    the class with the most votes wins, a tie going to the lowest class index."""
    train = np.asarray(train_h, dtype=np.float64)
    train = train / np.linalg.norm(train, axis=1, keepdims=True)
    preds = []
    for q in np.asarray(test_h, dtype=np.float64):
        sims = train @ (q / np.linalg.norm(q))
        nearest = sorted(range(len(sims)), key=lambda j: -sims[j])[:k]
        counts = [sum(1 for j in nearest if int(train_y[j]) == c) for c in range(num_classes)]
        preds.append(next(c for c in range(num_classes) if counts[c] == max(counts)))
    return np.array(preds)


@pytest.mark.parametrize("num_classes,noise,seed", [(2, 3.0, 0), (3, 2.0, 1), (10, 1.5, 2)])
def test_uniform_knn_matches_sklearn_and_a_naive_loop(num_classes, noise, seed):
    from sklearn.neighbors import KNeighborsClassifier

    train_h, train_y = clustered(150, num_classes, 6, noise, seed)
    test_h, test_y = clustered(60, num_classes, 6, noise, seed + 100)
    got = knn_predict(train_h, train_y, test_h, num_classes, k=10, votes="uniform", chunk_size=17)
    naive = naive_uniform_knn(train_h, train_y, test_h, num_classes, 10)
    sk = KNeighborsClassifier(n_neighbors=10, metric="cosine").fit(train_h.numpy(), train_y.numpy())
    np.testing.assert_array_equal(got.numpy(), naive)
    np.testing.assert_array_equal(got.numpy(), sk.predict(test_h.numpy()))
    assert knn_accuracy(train_h, train_y, test_h, test_y, num_classes, k=10, votes="uniform") == pytest.approx(
        100 * sk.score(test_h.numpy(), test_y.numpy()))


def test_uniform_knn_class_ties_go_to_the_lowest_label():
    # 4 neighbours: two of class 3 (the nearest ones) and two of class 1 -> a 2-2 tie -> class 1
    train_h = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.9, 0.4], [0.8, 0.6], [-1.0, 0.0]])
    train_y = torch.tensor([3, 3, 1, 1, 0])
    query = torch.tensor([[1.0, 0.0]])
    assert knn_predict(train_h, train_y, query, 4, k=4, votes="uniform").item() == 1
    # weighted votes (t=0.1) let the two nearer class-3 neighbours win the same neighbourhood
    assert knn_predict(train_h, train_y, query, 4, k=4, temperature=0.1).item() == 3
    assert knn_predict(train_h, train_y, query, 4, k=3, votes="uniform").item() == 3  # 2-1


def test_knn_accuracies_reports_both_settings():
    from utils.eval.knn import describe_knn, knn_accuracies

    train_h, train_y = clustered(300, 4, 8, 2.5, 5)
    test_h, test_y = clustered(80, 4, 8, 2.5, 6)
    accs = knn_accuracies(train_h, train_y, test_h, test_y, 4)
    assert accs == {"knn10": knn_accuracy(train_h, train_y, test_h, test_y, 4, k=10, votes="uniform"),
                    "knn200": knn_accuracy(train_h, train_y, test_h, test_y, 4)}
    assert describe_knn("knn10")["k"] == 10 and describe_knn("knn10")["votes"] == "uniform"
    assert describe_knn("knn200")["temperature"] == 0.1
    with pytest.raises(ValueError, match="votes"):
        knn_predict(train_h, train_y, test_h, 4, votes="distance")
