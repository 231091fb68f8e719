"""Checker for Chapter 7 (generalization and geometry-adaptive harmonic bases): the ideal Jacobian."""
from __future__ import annotations

import torch

from ..denoisers import IdealDenoiser
from ..jacobian import ideal_jacobian
from .core import Verdict, compare

__all__ = ["check_ideal_jacobian"]


def _reference(data, y, sigma):
    return ideal_jacobian(IdealDenoiser(data), y, sigma)


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
        data = torch.randn(M, D, generator=g, dtype=torch.float64)
        y = data[torch.randint(0, M, (B,), generator=g)] + sigma * torch.randn(B, D, generator=g, dtype=torch.float64)
        if sigma < 0.01:  # far from the data on the scale of σ: exp(−‖y − x_i‖²/2σ²) underflows for every i
            y = y + 0.2
        cases.append(((data, y, sigma), {}))
    return compare(fn, _reference, cases, rtol=1e-6, atol=1e-9, name="ideal Jacobian", quiet=quiet)
