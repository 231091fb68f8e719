"""Checkers for Chapter 3 (score estimation): the ideal denoiser, one step of the (γ, μ) sampler, the DDPM step."""
from __future__ import annotations

import torch

from ..denoisers import IdealDenoiser
from ..gmm import GaussianMixture
from .. import samplers
from ..samplers import step
from .core import Verdict, compare

__all__ = ["check_ideal_denoiser", "check_sampler_step", "check_ddpm_step"]


def _ideal_reference(x, sigma, data):
    return IdealDenoiser(data)(x, sigma)


def check_ideal_denoiser(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    """Check ``fn(x, sigma, data) -> x0_hat``, the ideal denoiser of a finite data set.

    ``data`` is ``(M, D)``, ``x`` is ``(B, D)`` and ``sigma`` a positive float; all tensors are
    float64. The answer must be the posterior mean ``Σ_i softmax_i(−‖x − x_i‖²/2σ²) x_i``
    (:class:`companion.denoisers.IdealDenoiser`). The last cases use small σ (down to 1e-4), where a naive
    ``exp`` underflows to 0/0: use log-sum-exp (``torch.softmax`` does it for you). The answer must
    not call the companion's ``IdealDenoiser`` or ``GaussianMixture.denoise``.
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    n_cases = max(n_cases, 3)
    sigmas = [[2.0, 0.7, 0.3, 5.0][i % 4] for i in range(n_cases - 2)] + [0.02, 1e-4]  # small σ last
    for i, sigma in enumerate(sigmas):
        M, B, D = 3 + 5 * i, 4 + i, 1 + i % 3
        data = torch.randn(M, D, generator=g, dtype=torch.float64)
        x = data[torch.randint(0, M, (B,), generator=g)] + torch.randn(B, D, generator=g, dtype=torch.float64)
        cases.append(((x, sigma, data), {}))
    return compare(fn, _ideal_reference, cases, rtol=1e-6, atol=1e-9, name="ideal denoiser", quiet=quiet,
                   forbid=[(IdealDenoiser, "__call__"), (GaussianMixture, "denoise")],
                   forbid_source=[r"\bIdealDenoiser\b", r"\.denoise\("])


def _step_draws(n_cases, seed):
    """Per case: three float64 ``(3 + i, 2)`` normal tensors, then ``sigma`` in [0.1, 10.1) and
    ``0.1 sigma ≤ sigma_next < 0.9 sigma`` — the random inputs of the two sampler-step checkers."""
    g = torch.Generator().manual_seed(seed)
    for i in range(n_cases):
        a, b, c = (torch.randn(3 + i, 2, generator=g, dtype=torch.float64) for _ in range(3))
        sigma = float(0.1 + 10 * torch.rand((), generator=g, dtype=torch.float64))
        sigma_next = sigma * float(0.1 + 0.8 * torch.rand((), generator=g, dtype=torch.float64))
        yield a, b, c, sigma, sigma_next


def check_sampler_step(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    """Check ``fn(x, eps, sigma, sigma_next, mu, z) -> x_next``, one update of Permenter & Yuan's sampler.

    ``x_next = x + (σ_p − σ) eps + η z`` with ``σ_p = (σ_next/σ^μ)^{1/(1−μ)}`` and
    ``η = sqrt(σ_next² − σ_p²)`` (:func:`companion.samplers.step`); μ = 0 is DDIM, μ = ½ is DDPM.
    ``x, eps, z`` are float64 ``(B, D)`` tensors, the rest floats.
    """
    mus = [0.0, 0.5, 0.25, 0.9]
    cases = [((x, eps, sigma, sigma_next, mus[i % len(mus)], z), {})
             for i, (x, eps, z, sigma, sigma_next) in enumerate(_step_draws(n_cases, seed))]
    return compare(fn, step, cases, rtol=1e-7, atol=1e-10, name="sampler step", quiet=quiet,
                   forbid=[(samplers, "step")], forbid_source=[r"\bsamplers\.\w+"])


def _ddpm_reference(x, x0_hat, sigma, sigma_next, z):
    return step(x, (x - x0_hat) / sigma, sigma, sigma_next, mu=0.5, z=z)


def check_ddpm_step(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(x, x0_hat, sigma, sigma_next, z) -> x_next``: a draw from the DDPM posterior.

    In the canonical variables, :math:`x_{\sigma'} \mid x_\sigma, x_0` is Gaussian with mean
    :math:`x_0 + (\sigma'^2/\sigma^2)(x_\sigma - x_0)` and variance :math:`\sigma'^2(1 - \sigma'^2/\sigma^2)\,I`
    (Ho et al. 2020, eq. 7, divided by the scale); the answer is that draw with ``x0_hat`` for
    :math:`x_0` and ``z`` as the standard normal noise, which is :func:`companion.samplers.step` with
    μ = ½. ``x, x0_hat, z``: float64 ``(B, D)``; ``sigma > sigma_next > 0`` floats. The usual slips — the
    DDIM ratio σ'/σ in the mean, a standard deviation without the square root, noise of σ' or of
    :math:`\sqrt{\sigma^2 - \sigma'^2}` — are rejected.
    """
    cases = [((x * sigma, x0_hat, sigma, sigma_next, z), {})
             for x, x0_hat, z, sigma, sigma_next in _step_draws(n_cases, seed)]
    return compare(fn, _ddpm_reference, cases, rtol=1e-7, atol=1e-10, name="DDPM posterior step", quiet=quiet,
                   forbid=[(samplers, "step")], forbid_source=[r"\bsamplers\.\w+"])
