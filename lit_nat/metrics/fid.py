"""FID against fixed reference statistics and an Inception Score, as torchmetrics ``Metric`` s that sync under DDP.

Only the *generated* side is accumulated: running float64 sums (feature sum, sum of outer products, count) with
``dist_reduce_fx="sum"``, so memory and DDP traffic do not grow with the number of samples, and the reference mean and
covariance (loaded once from an ``.npz``) are non-persistent float64 buffers that never sync and never enter a
checkpoint. The distance is computed as torchmetrics' FID computes it (the trace of the matrix square root from the
eigenvalues of ``sigma_ref @ sigma_gen`` in float64, no scipy), written here because torchmetrics exposes that formula
only as a private function, with the unbiased covariance torchmetrics' FID uses.

Why not ``torchmetrics.image.InceptionScore``: it keeps every logit and permutes them with the *global* torch RNG
before splitting, so its value depends on the RNG state (different on each rank) and it consumes training randomness.
:class:`InceptionScore` here is the single-split score from running sums: deterministic, exact, tiny to sync (it
equals torchmetrics' ``InceptionScore(splits=1)``). Papers (ADM's evaluator, hence AutoNAT and ENAT) report the
mean over 10 splits of 5,000 images; on 50k samples the single-split value is slightly higher (it pools the class
marginal over all images), so compare ours with published IS only as a trend.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

__all__ = ["FeatureStatistics", "InceptionScore", "ReferenceFID", "frechet_distance"]


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> torch.Tensor:
    """The Fréchet distance of two Gaussians in float64 (a 0-d tensor):
    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))``, the trace of the square root being the
    sum of the square roots of the eigenvalues of ``sigma1 @ sigma2`` (real and non-negative for covariances, up to
    rounding: the real part is kept), as torchmetrics' FID computes it."""
    mu1, sigma1, mu2, sigma2 = (t.double() for t in (mu1, sigma1, mu2, sigma2))
    mean_term = (mu1 - mu2).square().sum(dim=-1)
    sqrt_trace = torch.linalg.eigvals(sigma1 @ sigma2).sqrt().real.sum(dim=-1)
    return mean_term + sigma1.trace() + sigma2.trace() - 2 * sqrt_trace


class FeatureStatistics(Metric):
    """Running mean and (unbiased) covariance of feature vectors in float64; ``compute()`` -> ``(mu, sigma, n)``.

    Args:
        num_features: feature dimension D; ``update`` checks it.
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``, ...).
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = None

    def __init__(self, num_features: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        self.num_features = int(num_features)
        d = self.num_features
        self.add_state("feature_sum", torch.zeros(d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("feature_outer_sum", torch.zeros(d, d, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features ``(B, D)`` (any float dtype; accumulated in float64)."""
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expects features of shape (B, {self.num_features}), got {tuple(features.shape)}"
            )
        f = features.detach().to(torch.float64)
        self.feature_sum += f.sum(dim=0)
        self.feature_outer_sum += f.T @ f
        self.num_samples += f.shape[0]

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """``(mu, sigma, n)`` of the states as they are (no sync); needs n >= 2."""
        n = int(self.num_samples)
        if n < 2:
            raise ValueError(f"{type(self).__name__}: need at least 2 samples for a covariance, have {n}")
        mu = self.feature_sum / n
        sigma = (self.feature_outer_sum - n * torch.outer(mu, mu)) / (n - 1)
        return mu, sigma, n

    def compute(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.statistics()


class ReferenceFID(FeatureStatistics):
    """FID of the generated features against fixed reference statistics (``mu``, ``sigma`` from an ``.npz``).

    ``compute()`` (call it on *every* rank: it all-gathers the generated sums) returns the FID as a float64 0-d tensor.

    Args:
        reference_mu: reference mean ``(D,)``.
        reference_sigma: reference covariance ``(D, D)``.
        source: where the reference came from (a file name), used in error messages.
        **kwargs: torchmetrics ``Metric`` options.
    """

    higher_is_better = False

    def __init__(
        self, reference_mu: torch.Tensor, reference_sigma: torch.Tensor, source: str = "reference", **kwargs
    ) -> None:
        mu = torch.as_tensor(reference_mu, dtype=torch.float64)
        sigma = torch.as_tensor(reference_sigma, dtype=torch.float64)
        if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(
                f"{source}: reference mu must be (D,) and sigma (D, D), got {tuple(mu.shape)} and {tuple(sigma.shape)}"
            )
        super().__init__(mu.shape[0], **kwargs)
        self.source = source
        # Buffers, not states: never synced, never reset; persistent=False keeps them out of state_dict.
        self.register_buffer("reference_mu", mu, persistent=False)
        self.register_buffer("reference_sigma", sigma, persistent=False)

    def _apply(self, fn, *args, **kwargs):
        # Metric._apply converts floating states/buffers on .half()/.float(); the reference must stay float64.
        out = super()._apply(fn, *args, **kwargs)
        self.reference_mu = self.reference_mu.to(torch.float64)
        self.reference_sigma = self.reference_sigma.to(torch.float64)
        return out

    def compute(self) -> torch.Tensor:
        mu, sigma, _ = self.statistics()
        return frechet_distance(self.reference_mu, self.reference_sigma, mu, sigma)


class InceptionScore(Metric):
    """Inception Score exp(E_x KL(p(y|x) || p(y))) over all samples (one split), from running float64 sums.

    ``update`` takes class *logits* ``(B, K)`` (Inception: the unbiased logits, as in the original IS code; the digits
    classifier: its logits). ``compute()`` (on every rank) returns a float64 0-d tensor in [1, K].

    Args:
        num_classes: number of logits K; ``update`` checks it.
        **kwargs: torchmetrics ``Metric`` options.
    """

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.add_state("prob_sum", torch.zeros(self.num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("neg_entropy_sum", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_samples", torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor) -> None:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"InceptionScore expects logits (B, {self.num_classes}), got {tuple(logits.shape)}")
        log_p = torch.log_softmax(logits.detach().to(torch.float64), dim=1)
        p = log_p.exp()
        self.prob_sum += p.sum(dim=0)
        self.neg_entropy_sum += (p * log_p).sum()
        self.num_samples += logits.shape[0]

    def compute(self) -> torch.Tensor:
        n = int(self.num_samples)
        if n < 1:
            raise ValueError("InceptionScore: no samples")
        marginal = self.prob_sum / n
        # E_x sum_y p log p  -  sum_y p(y) log p(y)   (= E_x KL(p(y|x) || p(y)))
        mean_kl = self.neg_entropy_sum / n - torch.special.xlogy(marginal, marginal).sum()
        return mean_kl.exp()
