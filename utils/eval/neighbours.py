"""What a backbone has learned, drawn: a few fixed test images and their nearest train images by its features.

test.py --knn writes neighbours.png beside eval.json: one row per query (the first test image of each of the
first NUM_QUERIES classes, so every backbone is shown the same queries), the query on the left and its
NUM_NEIGHBOURS most cosine-similar images of the probe's train split (the kNN memory) to its right, each
neighbour framed green where its label is the query's and red where it is not. The same cosine as the kNN
measure (utils/eval/knn.py): features L2-normalised, similarity <h_q, h_i>; among equal similarities the
lower train index comes first.

    from utils.eval.neighbours import query_indices, nearest_neighbours, plot_neighbours
    idx, sim = nearest_neighbours(train_h, test_h[query_indices(test_y)], k=6)   # (Q, k) each

Run its tests with `python -m pytest tests/test_neighbours.py -q`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

NUM_QUERIES = 8  # rows of the picture: the first test image of each of the first 8 classes
NUM_NEIGHBOURS = 6  # neighbours per row


def query_indices(test_labels: np.ndarray | torch.Tensor, num_queries: int = NUM_QUERIES) -> list[int]:
    """The fixed queries: for each class in order, the first test image of that class, up to num_queries."""
    labels = np.asarray(torch.as_tensor(test_labels).cpu())
    out = []
    for cls in sorted(set(labels.tolist())):
        out.append(int(np.flatnonzero(labels == cls)[0]))
        if len(out) == num_queries:
            break
    return out


@torch.no_grad()
def nearest_neighbours(train_h: torch.Tensor, query_h: torch.Tensor, k: int = NUM_NEIGHBOURS
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(indices (Q, k) into train_h (N, D), cosine similarities (Q, k)), most similar first, ties by index."""
    k = min(k, train_h.shape[0])
    sim = F.normalize(query_h.float(), dim=1) @ F.normalize(train_h.float(), dim=1).T  # (Q, N)
    # a stable sort on -similarity keeps the lower index first among equal similarities
    order = torch.sort(-sim, dim=1, stable=True).indices[:, :k]
    return order.cpu(), torch.gather(sim, 1, order.to(sim.device)).cpu()


def plot_neighbours(path: Path, query_images: np.ndarray, neighbour_images: np.ndarray, query_labels: Sequence[int],
                    neighbour_labels: np.ndarray, classes: Sequence[str], title: str) -> Path:
    """The picture: query_images (Q, H, W, 3) uint8, neighbour_images (Q, k, H, W, 3), labels (Q,) and (Q, k)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, k = neighbour_labels.shape
    fig, axes = plt.subplots(q, k + 1, figsize=(1.1 * (k + 1) + 0.6, 1.15 * q + 0.6), squeeze=False)
    for row in range(q):
        _tile(axes[row][0], query_images[row], "black", f"query: {classes[query_labels[row]]}")
        for col in range(k):
            same = neighbour_labels[row, col] == query_labels[row]
            _tile(axes[row][col + 1], neighbour_images[row, col], "tab:green" if same else "tab:red",
                  classes[neighbour_labels[row, col]])
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _tile(ax, image: np.ndarray, colour: str, label: str) -> None:
    ax.imshow(image if image.shape[-1] == 3 else image[..., 0], cmap="gray", interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3)
    ax.set_title(label[:14], fontsize=6, color=colour if colour != "black" else "black")
