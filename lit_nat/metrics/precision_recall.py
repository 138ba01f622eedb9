"""Improved precision and recall (Kynkäänniemi et al. 2019) as ADM's evaluator computes them: k = 3 nearest neighbours
in Inception pool features.

Each set's manifold is the union of balls around its points, a ball's (squared) radius being the squared distance to
the point's k-th nearest neighbour in its own set (the point itself, at distance 0, is not counted). Precision is the
share of generated points inside the real manifold, recall the share of real points inside the generated one.

Distances are squared Euclidean distances from norms and a matrix product (``|a|^2 - 2 a.b + |b|^2``, clamped at 0),
in float32 blocks on the extractor's device. ADM computes the same in float16 with a float32 fall-back; the values can
differ where a distance ties a radius to that precision, which is rare on 2048-d features.
"""

from __future__ import annotations

import torch

__all__ = ["NEAREST_K", "manifold_radii", "precision_recall", "within_any"]

#: ADM's neighbourhood size (``nhood_sizes=(3,)``)
NEAREST_K = 3


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(len(a), len(b))`` squared Euclidean distances in float32, never negative."""
    a, b = a.float(), b.float()
    dist = a.square().sum(1, keepdim=True) - 2 * a @ b.T + b.square().sum(1)[None, :]
    return dist.clamp_min_(0)


def manifold_radii(features: torch.Tensor, k: int = NEAREST_K, block: int = 1024) -> torch.Tensor:
    """The squared distance of every point to its k-th nearest other point of ``features`` (N, D); needs N > k."""
    n = len(features)
    if n <= k:
        raise ValueError(f"precision/recall with k = {k} nearest neighbours needs more than {k} points, got {n}")
    radii = torch.empty(n, dtype=torch.float32, device=features.device)
    for start in range(0, n, block):
        dist = squared_distances(features[start : start + block], features)
        # the k+1-th smallest: the smallest is the point itself (ADM partitions at index k of a row holding it)
        radii[start : start + block] = dist.kthvalue(k + 1, dim=1).values
    return radii


def within_any(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """For every point, whether some ball (``centres[i]``, squared radius ``radii[i]``) holds it (a boolean (N,))."""
    inside = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    for start in range(0, len(points), block):
        for cstart in range(0, len(centres), block):
            dist = squared_distances(points[start : start + block], centres[cstart : cstart + block])
            inside[start : start + block] |= (dist <= radii[None, cstart : cstart + block]).any(dim=1)
    return inside


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = NEAREST_K) -> tuple[float, float]:
    """``(precision, recall)`` of generated features ``fake`` against real features ``real`` (both (N, D))."""
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"precision/recall: features must be (N, D) alike, got {tuple(real.shape)} and "
                         f"{tuple(fake.shape)}")  # fmt: skip
    real_radii, fake_radii = manifold_radii(real, k), manifold_radii(fake, k)
    precision = within_any(fake, real, real_radii).double().mean()
    recall = within_any(real, fake, fake_radii).double().mean()
    return float(precision), float(recall)
