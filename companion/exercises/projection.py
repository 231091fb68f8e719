"""Checkers for Chapter 8 (diffusion as approximate projection)."""
from __future__ import annotations

import math

import torch

from .. import projection, samplers
from ..denoisers import IdealDenoiser
from ..gmm import GaussianMixture
from .core import Verdict, compare, noisy_points

__all__ = ["check_gradient_estimation", "check_smoothed_distance"]


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


def _distance_reference(x, data, sigma):
    return projection.smoothed_dist2(x, data, sigma), x - IdealDenoiser(data)(x, sigma)


def _distance_written_out(x, data, sigma, prefactor=2.0, power=2, offset=False):
    """Eqs. (ch8-smoothed) and (ch8-theorem) written out, with switches for typical slips."""
    q = torch.cdist(x, data) ** power
    d2 = -prefactor * sigma**2 * torch.logsumexp(-q / (2 * sigma**2), dim=1)
    if offset:
        d2 = d2 + prefactor * sigma**2 * math.log(data.shape[0])
    return d2, x - torch.softmax(-q / (2 * sigma**2), dim=1) @ data


_DISTANCE_MISTAKES = [
    ("the prefactor is −2σ², not −σ² (the slides' constant; with it ½∇ would be ½σε*).",
     lambda x, d, s: _distance_written_out(x, d, s, prefactor=1.0)),
    ("σ where σ² belongs: the exponent is −‖x − x0‖²/2σ², with the variance σ².",
     lambda x, d, s: (s * _distance_reference(x, d, s**0.5)[0], _distance_reference(x, d, s**0.5)[1])),
    ("a mean over the data set instead of a sum (an offset of 2σ² log M): the smoothed distance sums "
     "exp(−‖x − x0‖²/2σ²) without dividing by M.", lambda x, d, s: _distance_written_out(x, d, s, offset=True)),
    ("distances not squared: use ‖x − x0‖² (torch.cdist(...) ** 2).",
     lambda x, d, s: _distance_written_out(x, d, s, power=1)),
]


def check_smoothed_distance(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(x, data, sigma) -> (d2, half_grad)``: the σ-smoothed squared distance and half its gradient.

    ``d2`` ``(B,)`` is :math:`\operatorname{dist}^2_{\mathcal K}(x, σ) = -2σ^2 \log\sum_{x_0}
    \exp(-\|x_0 - x\|^2/2σ^2)` and ``half_grad`` ``(B, d)`` is
    :math:`\tfrac12\nabla_x\operatorname{dist}^2_{\mathcal K}(x, σ) = x - D^\star(x; σ)` (Permenter & Yuan 2024;
    :func:`companion.projection.smoothed_dist2` and :class:`companion.denoisers.IdealDenoiser`, which the
    answer must not call). ``x`` ``(B, d)`` and ``data`` ``(M, d)`` float64, ``sigma`` a positive float; the last
    cases have σ = 1e-2 and 1e-4, where a plain ``exp`` underflows: use log-sum-exp / softmax.
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    sigmas = [[1.0, 0.3, 3.0, 0.7][i % 4] for i in range(max(n_cases, 3) - 2)] + [1e-2, 1e-4]
    for i, sigma in enumerate(sigmas):
        M, B, D = 3 + 4 * i, 4 + i, 1 + i % 3
        x, data = noisy_points(g, M, B, D)
        cases.append(((x, data, sigma), {}))
    return compare(fn, _distance_reference, cases, rtol=1e-6, atol=1e-9, name="smoothed distance", quiet=quiet,
                   forbid=[(projection, "smoothed_dist2"), (IdealDenoiser, "__call__"), (GaussianMixture, "denoise")],
                   forbid_source=[r"\bsmoothed_dist2\b", r"\bIdealDenoiser\b", r"\.denoise\("],
                   mistakes=_DISTANCE_MISTAKES)
