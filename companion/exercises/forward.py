"""Checkers for Chapter 1 (forward SDEs): the VP coefficients and the exact marginal of mixture data."""
from __future__ import annotations

import math

import torch

from ..gmm import GaussianMixture
from ..sde import VP
from .core import Verdict, compare

__all__ = ["check_vp_coefficients", "check_vp_mixture_log_prob"]


def _vp_reference(t, beta_min, beta_max):
    p = VP(beta_min, beta_max)
    return p.s(t), p.sigma(t)


def check_vp_coefficients(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    """Check ``fn(t, beta_min, beta_max) -> (s, sigma)``: the VP process's closed-form s(t), σ(t).

    ``t`` is a float64 tensor of times in [0, 1]; the answer must match :class:`companion.sde.VP` to a
    relative 1e-9. Every case includes tiny times (down to 1e-12), where ``σ(t)² = e^{B(t)} − 1`` computed
    as ``exp(B) − 1`` loses most of its digits to cancellation (``torch.expm1`` keeps them), so that
    answer is rejected, as are the usual slips: a wrong sign or a missing ½ in ``B`` or in ``s``.
    It must not use ``companion.sde`` (the exercise is to write it).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n_cases):
        t = torch.rand(7, generator=g, dtype=torch.float64)
        t[0] = 0.0
        t[1:3] = torch.tensor([1e-12, 1e-8], dtype=torch.float64)
        beta_min = float(0.05 + 0.5 * torch.rand((), generator=g))
        beta_max = float(beta_min + 25 * torch.rand((), generator=g))
        cases.append(((t, beta_min, beta_max), {}))
    return compare(fn, _vp_reference, cases, rtol=1e-9, atol=1e-300, name="VP coefficients (s, sigma)",
                   quiet=quiet, forbid=[(VP, "s"), (VP, "sigma"), (VP, "B")],
                   forbid_source=[r"\bsde\.", r"\bVP\("])


def _mixture_log_prob(x, t, means, stds, weights, beta_min, beta_max):
    """The reference: ``log p_t(x)`` from :meth:`GaussianMixture.noised` with the VP's ``s(t)``, ``σ(t)``."""
    p = VP(beta_min, beta_max)
    return GaussianMixture(means, stds, weights).noised(float(p.sigma(t)), scale=float(p.s(t))).log_prob(x)


def _mixture_written(x, t, means, stds, weights, beta_min, beta_max, mean_scale=True, width="right",
                     norm_dim=True):
    """The same formula written out; the keywords make the typical mistakes (all default: the reference)."""
    p = VP(beta_min, beta_max)
    s, sig = p.s(t), p.sigma(t)
    var = {"right": s**2 * (stds**2 + sig**2), "tau2+s2sigma2": stds**2 + s**2 * sig**2,
           "s(tau+sigma)": (s * (stds + sig)) ** 2}[width]                               # (K,)
    mu = s * means if mean_scale else means                                             # (K, D)
    d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)                                      # (B, K)
    log_norm = 0.5 * (x.shape[1] if norm_dim else 1) * torch.log(2 * math.pi * var)
    return torch.logsumexp(torch.log(weights) - d2 / (2 * var) - log_norm, dim=1)


_MIXTURE_MISTAKES = [
    ("the means are not scaled: component j of p_t has mean s(t) μ_j.",
     lambda *a: _mixture_written(*a, mean_scale=False)),
    ("only the noise is scaled: the variance is s(t)² (τ_j² + σ(t)²), not τ_j² + s(t)² σ(t)².",
     lambda *a: _mixture_written(*a, width="tau2+s2sigma2")),
    ("standard deviations added instead of variances: the std is s(t) √(τ_j² + σ(t)²).",
     lambda *a: _mixture_written(*a, width="s(tau+sigma)")),
    ("the normaliser of a d-dimensional Gaussian is −(d/2) log(2π v_j), d = x.shape[1]; yours lacks the "
     "factor d.",
     lambda *a: _mixture_written(*a, norm_dim=False)),
    ("the weights are missing: log p_t = logsumexp_j (log w_j + log N(x; s μ_j, v_j I)).",
     lambda x, t, m, s, w, *b: _mixture_written(x, t, m, s, torch.ones_like(w), *b)),
]


def check_vp_mixture_log_prob(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(x, t, means, stds, weights, beta_min, beta_max) -> (B,)``: the exact log-density
    :math:`\log p_t(x)` of the VP process started at the mixture :math:`\sum_j w_j \mathcal N(\mu_j, \tau_j^2 I)`,

    .. math::  p_t = \sum_j w_j\, \mathcal N\big(s(t)\mu_j,\; s(t)^2(\tau_j^2 + \sigma(t)^2) I\big)

    (Chapter 1, §1.4). ``x``: ``(B, D)``; ``t``: a 0-d tensor in (0, 1]; ``means``: ``(K, D)``; ``stds``
    (τ_j) and ``weights``: ``(K,)``; all float64. Reference: ``GaussianMixture.noised(σ(t), s(t)).log_prob``.
    Each case has a point far from every component at a small time, where ``log(sum(exp(...)))`` gives
    ``-inf`` (``torch.logsumexp`` does not). Typical mistakes are named; the companion's mixtures and
    processes must not be used (the exercise is to write it).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        K, D, B = 2 + i % 3, 1 + i % 3, 5 + i
        t = torch.tensor([1e-3, 0.3, 0.05, 0.8, 0.01, 1.0][i % 6], dtype=torch.float64)
        means = 3 * torch.randn(K, D, generator=g, dtype=torch.float64)
        stds = 0.05 + torch.rand(K, generator=g, dtype=torch.float64)
        weights = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
        x = means[torch.randint(0, K, (B,), generator=g)] + torch.randn(B, D, generator=g, dtype=torch.float64)
        x[0] = 40.0  # far from every component: exp underflows at small t
        beta_min = float(0.05 + 0.5 * torch.rand((), generator=g))
        beta_max = float(beta_min + 25 * torch.rand((), generator=g))
        cases.append(((x, t, means, stds, weights, beta_min, beta_max), {}))
    return compare(fn, _mixture_log_prob, cases, rtol=1e-8, atol=1e-8, name="mixture log p_t", quiet=quiet,
                   forbid=[(GaussianMixture, "log_prob"), (GaussianMixture, "noised"), (VP, "s"), (VP, "sigma")],
                   forbid_source=[r"\bgmm\.", r"\bGaussianMixture\b", r"\bsde\.", r"\bVP\(", r"\.log_prob\("],
                   mistakes=_MIXTURE_MISTAKES)
