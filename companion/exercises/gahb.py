"""Checker for Chapter 7 (generalization and geometry-adaptive harmonic bases): the ideal Jacobian."""
from __future__ import annotations

import torch

from .. import jacobian
from ..denoisers import IdealDenoiser
from ..gmm import GaussianMixture
from ..jacobian import ideal_jacobian
from .core import Verdict, compare, noisy_points

__all__ = ["check_ideal_jacobian", "check_mixture_jacobian"]

# the answer must not call the companion's Jacobians (exact or by autograd) or its ideal denoisers
_FORBID = [(jacobian, "ideal_jacobian"), (jacobian, "jacobian"), (jacobian, "jacobian_loop"),
           (IdealDenoiser, "__call__"), (IdealDenoiser, "weights"), (GaussianMixture, "denoise"),
           (GaussianMixture, "responsibilities")]
_FORBID_SOURCE = [r"\bideal_jacobian\b", r"\bjacobian\.\w+", r"\bIdealDenoiser\b", r"\bGaussianMixture\b",
                  r"\bgmm\.\w+"]


def _reference(data, y, sigma):
    return ideal_jacobian(IdealDenoiser(data), y, sigma)


def _ideal_written(data, y, sigma, sigma_power=2, centred=True):
    """Σ_i π_i (x_i − m)(x_i − m)ᵀ / σ² written out; the keywords make the typical slips."""
    w = torch.softmax(-torch.cdist(y, data) ** 2 / (2 * sigma**2), dim=1)                # (B, M)
    dev = data[None] - ((w @ data)[:, None] if centred else 0)                           # (B, M, D)
    return torch.einsum("bm,bmi,bmj->bij", w, dev, dev) / sigma**sigma_power


_IDEAL_MISTAKES = [
    ("divided by σ instead of σ²: J = Cov[x | y]/σ² (a variance, not a standard deviation).",
     lambda *a: _ideal_written(*a, sigma_power=1)),
    ("the second moment Σ_i π_i x_i x_iᵀ is not the covariance: subtract the posterior mean m = Σ_i π_i x_i "
     "(use x_i − m).", lambda *a: _ideal_written(*a, centred=False)),
]


def check_ideal_jacobian(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    """Check ``fn(data, y, sigma) -> J`` ``(B, D, D)``: the Jacobian of the ideal denoiser of ``data`` ``(M, D)``.

    ``J[b] = Cov[x | y_b] / σ² = Σ_i π_i (x_i − m)(x_i − m)ᵀ / σ²`` with the posterior weights
    ``π_i = softmax_i(−‖y_b − x_i‖²/2σ²)`` and posterior mean ``m = Σ_i π_i x_i``
    (:func:`companion.jacobian.ideal_jacobian`). ``y`` is ``(B, D)``, ``sigma`` a positive float; float64
    throughout. The last case has σ = 1e-3 and inputs far from the data, where an unnormalised ``exp``
    underflows: use ``torch.softmax`` (log-sum-exp).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    sigmas = [[0.5, 1.0, 2.0, 0.3][i % 4] for i in range(max(n_cases, 2) - 1)] + [1e-3]
    for i, sigma in enumerate(sigmas):
        M, B, D = 4 + 3 * i, 2 + i % 3, 2 + i % 4
        y, data = noisy_points(g, M, B, D, scale=sigma)
        if sigma < 0.01:  # far from the data on the scale of σ: exp(−‖y − x_i‖²/2σ²) underflows for every i
            y = y + 0.2
        cases.append(((data, y, sigma), {}))
    return compare(fn, _reference, cases, rtol=1e-6, atol=1e-9, name="ideal Jacobian", quiet=quiet,
                   forbid=_FORBID, forbid_source=_FORBID_SOURCE, mistakes=_IDEAL_MISTAKES)


def _mixture_reference(means, stds, weights, y, sigma):
    return ideal_jacobian(GaussianMixture(means, stds, weights), y, sigma)


def _mixture_written_out(means, stds, weights, y, sigma, normalise=True, within=True, sigma_power=2):
    """Law of total covariance for isotropic components, with switches that reproduce typical slips."""
    D, t2, s2 = means.shape[1], stds**2, sigma**2
    logits = -torch.cdist(y, means) ** 2 / (2 * (t2 + s2)) + weights.log()
    if normalise:
        logits = logits - 0.5 * D * torch.log(t2 + s2)
    r = torch.softmax(logits, dim=1)                                           # (B, K)
    m_k = means + (t2 / (t2 + s2))[:, None] * (y[:, None] - means)            # (B, K, D)
    dev = m_k - (r[:, :, None] * m_k).sum(1, keepdim=True)
    cov = torch.einsum("bk,bki,bkj->bij", r, dev, dev)
    if within:
        cov = cov + (r @ (t2 * s2 / (t2 + s2)))[:, None, None] * torch.eye(D, dtype=y.dtype)
    return cov / sigma**sigma_power


_MIXTURE_MISTAKES = [
    ("the responsibilities lack the normalising factor (τ_k² + σ²)^(−d/2) of each component's Gaussian: "
     "with unequal widths it matters.", lambda *a: _mixture_written_out(*a, normalise=False)),
    ("the within-component term is missing: Cov[x|y] = E[Cov[x|y, k]] + Cov[E[x|y, k]] (law of total "
     "covariance), and Cov[x|y, k] = τ_k²σ²/(τ_k² + σ²) I.", lambda *a: _mixture_written_out(*a, within=False)),
    ("divided by σ instead of σ²: J = Cov[x|y]/σ² (variance, not standard deviation).",
     lambda *a: _mixture_written_out(*a, sigma_power=1)),
]


def check_mixture_jacobian(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(means, stds, weights, y, sigma) -> J`` ``(B, d, d)``: the Jacobian of the ideal denoiser of an
    isotropic Gaussian mixture :math:`\sum_k w_k \mathcal N(\mu_k, \tau_k^2 I)`.

    ``J = Cov[x | y]/σ²`` (Tweedie) with, by the law of total covariance,
    :math:`\mathrm{Cov}[x|y] = \sum_k r_k\big(c_k I + (m_k - m)(m_k - m)^\top\big)`: responsibilities
    :math:`r_k \propto w_k \mathcal N(y; \mu_k, (\tau_k^2 + \sigma^2) I)`, component posterior means
    :math:`m_k = \mu_k + \tfrac{\tau_k^2}{\tau_k^2+\sigma^2}(y - \mu_k)`, variances
    :math:`c_k = \tfrac{\tau_k^2\sigma^2}{\tau_k^2+\sigma^2}` and :math:`m = \sum_k r_k m_k`
    (:func:`companion.jacobian.ideal_jacobian` of a :class:`companion.gmm.GaussianMixture`; Kadkhodaie et al.
    2024, Eq. 4). ``means`` ``(K, d)``, ``stds`` and ``weights`` ``(K,)``, ``y`` ``(B, d)``, float64; ``sigma``
    a positive float (the last case 1e-3, far from every component: use log-sum-exp).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    sigmas = [[0.5, 1.0, 2.0, 0.3][i % 4] for i in range(max(n_cases, 2) - 1)] + [1e-3]
    for i, sigma in enumerate(sigmas):
        K, B, D = 2 + i % 3, 2 + i % 2, 2 + i % 3
        means = 2 * torch.randn(K, D, generator=g, dtype=torch.float64)
        stds = 0.1 + torch.rand(K, generator=g, dtype=torch.float64)            # unequal widths
        weights = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
        y = means[torch.randint(0, K, (B,), generator=g)] + torch.randn(B, D, generator=g, dtype=torch.float64)
        if sigma < 0.01:
            y = 40 * y  # far from every component: the exponents are of order −10⁴
        cases.append(((means, stds, weights, y, sigma), {}))
    return compare(fn, _mixture_reference, cases, rtol=1e-6, atol=1e-9, name="mixture Jacobian", quiet=quiet,
                   forbid=_FORBID, forbid_source=_FORBID_SOURCE, mistakes=_MIXTURE_MISTAKES)
