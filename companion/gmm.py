r"""Gaussian mixtures with an *exact* noised density, score and denoiser at every noise level.

The ground truth most chapters check against. For data

.. math::  x_0 \sim \sum_k w_k\, \mathcal N(\mu_k, \operatorname{diag}(\tau_k^2)),

the variance-exploding variable ``x_σ = x0 + σ ε`` is again a mixture, with per-coordinate
variances ``τ_k² + σ²``. Hence (all in closed form, evaluated with log-sum-exp):

* ``log_prob(x, σ) = log Σ_k w_k N(x; μ_k, diag(τ_k² + σ²))``
* ``score(x, σ) = Σ_k r_k(x) (μ_k − x)/(τ_k² + σ²)`` with responsibilities ``r_k ∝ w_k N(x; ...)``
* ``denoise(x, σ) = E[x0 | x_σ = x] = Σ_k r_k(x) (μ_k + τ_k²/(τ_k² + σ²) (x − μ_k))``

and Tweedie's formula ``denoise = x + σ² score`` holds exactly. Components with τ_k = 0 are
point masses (the empirical distribution of a dataset); they need σ > 0.
"""
from __future__ import annotations

import math

import torch

from ._checks import as_sigma, as_tensor, check_positive_int, follow_device

__all__ = ["GaussianMixture", "ring"]


class GaussianMixture:
    """A mixture of Gaussians with isotropic or diagonal covariances.

    Args:
        means: ``(K, D)`` component means μ_k.
        stds: component standard deviations τ_k: a number (shared), ``(K,)`` (isotropic) or
            ``(K, D)`` (diagonal). Zero is allowed (a point mass), negative is not.
        weights: ``(K,)`` non-negative weights summing to 1; uniform when omitted.

    The dtype of ``means`` is kept (use float64 for ground truth); inputs ``x`` are converted to
    it. The mixture computes on the device of its input ``x`` (its tensors move there).
    """

    def __init__(self, means, stds=1.0, weights=None):
        means = as_tensor(means, "means")
        if means.dim() != 2 or means.shape[0] == 0 or means.shape[1] == 0:
            raise ValueError(f"means must have shape (K, D) with K, D >= 1, got {tuple(means.shape)}")
        K, D = means.shape
        stds = as_tensor(stds, "stds", dtype=means.dtype, device=means.device)
        if stds.dim() == 0:
            stds = stds.expand(K, D)
        elif stds.dim() == 1:
            if stds.shape[0] != K:
                raise ValueError(f"stds of shape (K,) must have K = {K} entries, got {stds.shape[0]}")
            stds = stds[:, None].expand(K, D)
        elif stds.shape != (K, D):
            raise ValueError(f"stds must be a number, (K,) = ({K},) or (K, D) = ({K}, {D}), got {tuple(stds.shape)}")
        if not torch.isfinite(stds).all() or (stds < 0).any():
            raise ValueError("stds must be finite and non-negative")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=means.dtype, device=means.device)
        weights = as_tensor(weights, "weights", dtype=means.dtype, device=means.device)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape (K,) = ({K},), got {tuple(weights.shape)}")
        if (weights < 0).any():
            raise ValueError("weights must be non-negative")
        if abs(weights.sum().item() - 1.0) > 1e-6:
            raise ValueError(f"weights must sum to 1, got {weights.sum().item():.6g}")
        self.means = means
        self.stds = stds.contiguous()
        self.weights = weights

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def to(self, dtype=None, device=None) -> "GaussianMixture":
        """A copy with another dtype and/or device."""
        kw = dict(dtype=dtype, device=device)
        return GaussianMixture(self.means.to(**kw), self.stds.to(**kw), self.weights.to(**kw))

    def noised(self, sigma: float, scale: float = 1.0) -> "GaussianMixture":
        """The law of ``scale * (x0 + sigma * eps)``: means ``scale μ_k``, stds ``scale sqrt(τ_k² + σ²)``.

        With ``scale = s(t)``, ``sigma = σ(t)`` this is the exact marginal p_t of a forward process.
        """
        if sigma < 0 or scale <= 0:
            raise ValueError(f"need sigma >= 0 and scale > 0, got sigma={sigma!r}, scale={scale!r}")
        return GaussianMixture(scale * self.means, scale * torch.sqrt(self.stds**2 + sigma**2), self.weights)

    def sample(self, n: int, generator: torch.Generator | None = None, return_labels: bool = False):
        """``n`` samples of shape ``(n, D)`` (and component labels ``(n,)`` if asked)."""
        check_positive_int(n, "n")
        k = torch.multinomial(self.weights.cpu().double(), n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        k = k.to(self.means.device)
        x = self.means[k] + self.stds[k] * z.to(self.means.device)
        return (x, k) if return_labels else x

    # ----------------------------------------------------------- exact formulas
    def _prepare(self, x, sigma):
        x = as_tensor(x, "x", dtype=self.means.dtype)
        follow_device(self, ("means", "stds", "weights"), x.device)
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}")
        sig = as_sigma(sigma, x, allow_zero=True)  # () or (B, 1)
        var = self.stds[None] ** 2 + (sig.reshape(-1, 1, 1) if sig.dim() else sig) ** 2  # (B|1, K, D)
        if not var.is_meta and (var <= 0).any():
            raise ValueError("sigma must be > 0 when a component has zero std (a point mass)")
        return x, var

    def _log_components(self, x, var):
        """``log w_k + log N(x; μ_k, diag(var_k))`` of shape (B, K) and ``x - μ_k`` of shape (B, K, D)."""
        diff = x[:, None, :] - self.means[None]
        logn = -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.log(self.weights)[None] + logn, diff

    def log_prob(self, x, sigma=0.0) -> torch.Tensor:
        """Exact ``log p_σ(x)`` of ``x0 + σ ε``; x ``(B, D)``, σ float or ``(B,)``; returns ``(B,)``."""
        x, var = self._prepare(x, sigma)
        logc, _ = self._log_components(x, var)
        return torch.logsumexp(logc, dim=1)

    def responsibilities(self, x, sigma=0.0) -> torch.Tensor:
        """Posterior component probabilities ``P(k | x_σ = x)``, shape ``(B, K)``."""
        x, var = self._prepare(x, sigma)
        logc, _ = self._log_components(x, var)
        return torch.softmax(logc, dim=1)

    def score(self, x, sigma=0.0) -> torch.Tensor:
        """Exact score ``∇_x log p_σ(x)``, shape ``(B, D)``."""
        x, var = self._prepare(x, sigma)
        logc, diff = self._log_components(x, var)
        r = torch.softmax(logc, dim=1)
        return -(r[:, :, None] * diff / var).sum(1)

    def denoise(self, x, sigma) -> torch.Tensor:
        """Exact posterior mean ``E[x0 | x0 + σ ε = x]`` (the ideal denoiser), shape ``(B, D)``.

        Computed per component (``μ_k + τ_k²/(τ_k²+σ²)(x − μ_k)``) and averaged with the
        responsibilities; equals ``x + σ² score(x, σ)`` (Tweedie).
        """
        x, var = self._prepare(x, sigma)
        if not var.is_meta and (var - self.stds[None] ** 2 <= 0).any():
            raise ValueError("sigma must be > 0 for denoise")
        logc, diff = self._log_components(x, var)
        r = torch.softmax(logc, dim=1)
        post_mean = self.means[None] + (self.stds[None] ** 2 / var) * diff
        return (r[:, :, None] * post_mean).sum(1)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.n_components}, D={self.dim}, dtype={self.means.dtype})"


def ring(k: int = 8, radius: float = 4.0, std: float = 0.3, dtype=torch.float64) -> GaussianMixture:
    """``k`` equal-weight isotropic Gaussians with std ``std`` evenly spaced on a circle of ``radius``."""
    check_positive_int(k, "k")
    if radius < 0 or std < 0:
        raise ValueError(f"radius and std must be >= 0, got radius={radius!r}, std={std!r}")
    angle = torch.arange(k, dtype=dtype) * (2 * math.pi / k)
    means = radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return GaussianMixture(means, torch.full((k,), float(std), dtype=dtype))
