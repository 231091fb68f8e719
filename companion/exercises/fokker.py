"""Checkers for Chapter 2 (Fokker–Planck, the probability-flow ODE and the reverse-time family)."""
from __future__ import annotations

import torch

from ..gmm import GaussianMixture
from ..reverse import mixture_score
from ..sde import VE, VP
from .core import Verdict, compare

__all__ = ["check_reverse_drift"]


def _reference(x, t, process, score, lam):
    """``f(t) x − ½ (1 + λ²) g(t)² score(x, t)``: the drift of the λ-family run backwards in time."""
    return float(process.f(t)) * x - 0.5 * (1 + lam**2) * float(process.g(t)) ** 2 * score(x, t)


def check_reverse_drift(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(x, t, process, score, lam) -> drift``: the drift of the reverse-time λ-family

    .. math::  b(x, t) = f(t)\,x - \tfrac12 (1 + \lambda^2)\, g(t)^2\, \nabla_x \log p_t(x)

    (λ = 0: the probability-flow ODE; λ = 1: the reverse SDE). ``x`` is ``(B, D)`` float64, ``t`` a
    float, ``process`` a VP or VE process, ``score(x, t)`` a function, ``lam`` a float; the answer
    must match the reference to 1e-6 (absolute) / 1e-5 (relative).
    """
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(4, 2, generator=g, dtype=torch.float64)
    gmm = GaussianMixture(means, 0.2 + torch.rand(4, generator=g, dtype=torch.float64))
    cases = []
    for i in range(n_cases):
        process = VP() if i % 2 == 0 else VE(0.01, 20.0)
        t = float(0.02 + 0.96 * torch.rand((), generator=g, dtype=torch.float64))
        x = float(process.std(t)) * torch.randn(5, 2, generator=g, dtype=torch.float64)
        lam = (0.0, 0.5, 1.0)[i % 3]
        cases.append(((x, t, process, mixture_score(gmm, process), lam), {}))
    return compare(fn, _reference, cases, rtol=1e-5, atol=1e-6, name="reverse-time drift", quiet=quiet)
