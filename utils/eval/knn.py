"""k-nearest-neighbour classifiers on backbone features: cheap representation monitors.

Two settings, named apart everywhere (metrics.csv knn10_acc / knn200_acc, eval.json
knn10_accuracy / knn200_accuracy; docs/measures.md):
- weighted, k=200 (knn200): Wu et al. 2018 ("Unsupervised Feature Learning via Non-Parametric
  Instance Discrimination"), as used across SSL codebases to watch pretraining: features are
  L2-normalised, similarity is the cosine s_i = <h, h_i>, each of the k most similar training
  samples votes for its class with weight exp(s_i / temperature), the largest total wins;
- uniform, k=10 (knn10): what dkobak/simclr-cifar10 reports (its 91.4 % on CIFAR-10):
  scikit-learn's KNeighborsClassifier(n_neighbors=10, metric="cosine") on h, i.e. the 10 most
  cosine-similar training samples vote one each, the majority wins.
In both, a tie between classes goes to the lowest class index (scikit-learn's rule for uniform
votes too); which of several equally similar samples fill the last neighbour slots is torch.topk's
choice (exact ties in similarity do not occur with real features).

    from utils.eval.knn import knn_accuracy, knn_accuracies
    acc = knn_accuracy(train_h, train_y, test_h, test_y, num_classes=10)   # percent, weighted k=200
    accs = knn_accuracies(train_h, train_y, test_h, test_y, 10)   # {"knn10": .., "knn200": ..}

Run its tests with `python -m pytest tests/test_knn.py -q`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Wu et al. 2018 use k=200 and temperature 0.07; k=200, temperature 0.1 is the common SSL
# monitor setting (e.g. the MoCo CIFAR demo and lightly's benchmarks), which this project follows.
KNN_K = 200
KNN_TEMPERATURE = 0.1
# dkobak/simclr-cifar10 (simclr-cifar10.py): KNeighborsClassifier(n_neighbors=10, metric="cosine"), uniform votes.
KNN_SOURCE_K = 10
VOTES = ("weighted", "uniform")
# The two settings reported side by side: name -> (k, votes).
KNN_SETTINGS = {"knn10": (KNN_SOURCE_K, "uniform"), "knn200": (KNN_K, "weighted")}
# Test samples per similarity block: a (chunk, N_train) matrix, 1024 x 50,000 x 4 B = 205 MB.
KNN_CHUNK_SIZE = 1024


@torch.no_grad()
def knn_predict(
    train_h: torch.Tensor,
    train_y: torch.Tensor,
    test_h: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    chunk_size: int = KNN_CHUNK_SIZE,
    votes: str = "weighted",
) -> torch.Tensor:
    """Predicted labels (M,) int64 for test_h (M, D), from train_h (N, D) with labels train_y (N,).

    Cosine similarity on L2-normalised features; the k = min(k, N) nearest training samples vote
    with weight exp(sim / temperature) (votes="weighted") or 1 each (votes="uniform", temperature
    unused). Test samples are processed `chunk_size` at a time so memory stays at chunk_size x N
    similarities. Ties between classes go to the lowest label.
    """
    if votes not in VOTES:
        raise ValueError(f"votes must be one of {VOTES}, got {votes!r}")
    if train_h.shape[0] != train_y.shape[0]:
        raise ValueError(f"train_h has {train_h.shape[0]} rows but train_y has {train_y.shape[0]}")
    if train_h.shape[0] == 0:
        raise ValueError("kNN needs at least one training sample")
    device = test_h.device
    bank = F.normalize(train_h.float().to(device), dim=1)  # (N, D)
    labels = train_y.to(device=device, dtype=torch.long)
    k = min(int(k), bank.shape[0])
    preds = []
    for start in range(0, test_h.shape[0], chunk_size):
        query = F.normalize(test_h[start:start + chunk_size].float(), dim=1)  # (B, D)
        sim = query @ bank.T  # (B, N)
        top_sim, top_idx = sim.topk(k, dim=1)  # (B, k)
        weights = (top_sim / temperature).exp() if votes == "weighted" else torch.ones_like(top_sim)
        tally = torch.zeros(query.shape[0], num_classes, device=device, dtype=weights.dtype)
        tally.scatter_add_(1, labels[top_idx], weights)  # (B, C): summed weight (or count) per class
        preds.append(tally.argmax(dim=1))  # the first (lowest) label among tied maxima
    if not preds:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.cat(preds)


def knn_accuracy(
    train_h: torch.Tensor,
    train_y: torch.Tensor,
    test_h: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    votes: str = "weighted",
) -> float:
    """Top-1 kNN accuracy in percent over all M test samples (see knn_predict)."""
    if test_h.shape[0] == 0:
        raise ValueError("kNN accuracy needs at least one test sample")
    pred = knn_predict(train_h, train_y, test_h, num_classes, k=k, temperature=temperature, votes=votes)
    correct = (pred == test_y.to(pred.device, dtype=torch.long)).sum().item()
    return 100.0 * correct / test_h.shape[0]


def knn_accuracies(
    train_h: torch.Tensor, train_y: torch.Tensor, test_h: torch.Tensor, test_y: torch.Tensor, num_classes: int
) -> dict[str, float]:
    """Both reported settings (KNN_SETTINGS): {"knn10": uniform k=10 %, "knn200": weighted k=200 t=0.1 %}."""
    return {name: knn_accuracy(train_h, train_y, test_h, test_y, num_classes, k=k, votes=votes)
            for name, (k, votes) in KNN_SETTINGS.items()}


def describe_knn(name: str) -> dict:
    """What eval.json records about a setting of KNN_SETTINGS: k, similarity, votes, tie-break."""
    k, votes = KNN_SETTINGS[name]
    return {"k": k, "similarity": "cosine on backbone features h", "votes": votes,
            **({"temperature": KNN_TEMPERATURE, "weight": "exp(cosine / temperature)"} if votes == "weighted"
               else {"weight": "1 per neighbour (majority vote)"}),
            "class_ties": "lowest class index"}
