"""Checkers for Chapter 8 (diffusion as approximate projection)."""
from __future__ import annotations

import math

import torch

from .. import samplers
from ..gmm import GaussianMixture
from .core import Verdict, compare

__all__ = ["check_gradient_estimation"]


def _reference(D, sigmas, x):
    return _SAMPLE(D, sigmas, x, gamma=2.0, mu=0.0)


_SAMPLE = samplers.sample  # bound at import: the watch on samplers.sample below cannot see the reference


def check_gradient_estimation(fn, n_cases: int = 5, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(D, sigmas, x) -> x0``: the gradient-estimation sampler (Permenter & Yuan, Algorithm 2).

    ``D(x, sigma) -> x0_hat`` is a denoiser (here the ideal denoiser of a small random 2-D data set,
    in float64), ``sigmas`` a descending 1-D tensor :math:`σ_N > \dots > σ_0` (σ_0 > 0 as in the
    paper, or σ_0 = 0) and ``x`` the start :math:`x_N` of shape ``(B, 2)``. The first step is a DDIM
    step; after it every step, the last included, uses
    :math:`\bar ε_t = 2 ε_θ(x_t, σ_t) - ε_θ(x_{t+1}, σ_{t+1})` in place of :math:`ε_θ(x_t, σ_t)`, with
    :math:`ε_θ(x, σ) = (x - D(x, σ))/σ`. The answer must match
    ``companion.samplers.sample(D, sigmas, x, gamma=2)`` without calling ``companion.samplers``; the
    first case has several steps (a one-step case cannot tell it from DDIM).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        data = 3 * torch.randn(int(torch.randint(2, 9, (), generator=g)), 2, generator=g, dtype=torch.float64)
        D = GaussianMixture(data, 0.0).denoise
        n = [5, 2, 1, 10, 20][i % 5]
        sigma_min, sigma_max = 0.01 * (1 + i), 20.0 + 10 * i
        sigmas = torch.logspace(math.log10(sigma_max), math.log10(sigma_min), n + 1, dtype=torch.float64)
        if i % 2 and n > 1:  # every other case ends at sigma_0 = 0
            sigmas[-1] = 0.0
        x = sigma_max * torch.randn(16, 2, generator=g, dtype=torch.float64)
        cases.append(((D, sigmas, x), {}))
    return compare(fn, _reference, cases, rtol=1e-6, atol=1e-8, name="gradient-estimation sampler", quiet=quiet,
                   forbid=[(samplers, "sample"), (samplers, "step")], forbid_source=[r"\bsamplers\.\w+"])
