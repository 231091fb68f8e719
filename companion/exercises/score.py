"""Checkers for Chapter 3 (score estimation): the ideal denoiser, one step of the (γ, μ) sampler, the DDPM step,
the exact denoiser of a Gaussian mixture."""
from __future__ import annotations


import torch

from ..denoisers import IdealDenoiser
from ..gmm import GaussianMixture
from .. import samplers
from ..samplers import step
from .core import Verdict, compare, noisy_points

__all__ = ["check_ideal_denoiser", "check_sampler_step", "check_ddpm_step", "check_mixture_denoiser"]


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
        x, data = noisy_points(g, M, B, D)
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


def _ddpm_written(x, x0_hat, sigma, sigma_next, z, ratio=2, noise="posterior"):
    """The DDPM draw written out; the keywords make the typical slips (defaults: the reference)."""
    r = (sigma_next / sigma) ** ratio
    std = {"posterior": sigma_next * (1 - (sigma_next / sigma) ** 2) ** 0.5,
           "variance": sigma_next**2 * (1 - (sigma_next / sigma) ** 2),
           "forward": (sigma**2 - sigma_next**2) ** 0.5, "sigma_next": sigma_next}[noise]
    return x0_hat + r * (x - x0_hat) + std * z


_DDPM_MISTAKES = [
    ("the mean uses DDIM's ratio σ'/σ; the DDPM posterior mean is x0_hat + (σ'²/σ²)(x − x0_hat).",
     lambda *a: _ddpm_written(*a, ratio=1)),
    ("a variance used as a standard deviation: the noise is σ' √(1 − σ'²/σ²) z (the square root of "
     "the posterior variance).", lambda *a: _ddpm_written(*a, noise="variance")),
    ("the noise of the forward increment, √(σ² − σ'²) z: the posterior's standard deviation is "
     "σ' √(1 − σ'²/σ²).", lambda *a: _ddpm_written(*a, noise="forward")),
    ("the noise σ' z is that of a fresh draw at level σ'; the posterior's standard deviation is "
     "σ' √(1 − σ'²/σ²).", lambda *a: _ddpm_written(*a, noise="sigma_next")),
]


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
                   forbid=[(samplers, "step")], forbid_source=[r"\bsamplers\.\w+"], mistakes=_DDPM_MISTAKES)


def _mixture_denoiser(x, sigma, means, stds, weights):
    """The reference: :meth:`GaussianMixture.denoise`."""
    return GaussianMixture(means, stds, weights).denoise(x, sigma)


def _denoiser_written(x, sigma, means, stds, weights, resp_var="tau2+sigma2", shrink="tau2", log_det=True):
    """``E[x0 | x0 + σ ε = x]`` written out; the keywords make the typical mistakes (all default: the reference)."""
    var = stds**2 + sigma**2                                                      # (K,)
    rvar = var if resp_var == "tau2+sigma2" else torch.full_like(var, sigma**2)
    d2 = ((x[:, None, :] - means[None]) ** 2).sum(-1)                             # (B, K)
    logits = torch.log(weights) - d2 / (2 * rvar) - (0.5 * x.shape[1] * torch.log(rvar) if log_det else 0)
    r = torch.softmax(logits, dim=1)                                              # (B, K)
    gain = (stds**2 if shrink == "tau2" else sigma**2 + 0 * stds) / var           # (K,)
    post = means[None] + gain[None, :, None] * (x[:, None, :] - means[None])      # (B, K, D)
    return (r[:, :, None] * post).sum(1)


_DENOISER_MISTAKES = [
    ("the responsibilities use the noise variance σ² alone: under p_σ component j has variance τ_j² + σ².",
     lambda *a: _denoiser_written(*a, resp_var="sigma2")),
    ("the shrinkage is upside down: given component j, E[x0 | x] = μ_j + τ_j²/(τ_j² + σ²) (x − μ_j).",
     lambda *a: _denoiser_written(*a, shrink="sigma2")),
    ("the responsibilities miss the normaliser −(d/2) log(τ_j² + σ²) (d = x.shape[1]), which matters when the "
     "τ_j differ.",
     lambda *a: _denoiser_written(*a, log_det=False)),
    ("the weights are missing from the responsibilities: r_j ∝ w_j N(x; μ_j, (τ_j² + σ²) I).",
     lambda x, s, m, t, w: _denoiser_written(x, s, m, t, torch.full_like(w, 1 / len(w)))),
]


def check_mixture_denoiser(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(x, sigma, means, stds, weights) -> x0_hat``: the exact denoiser of mixture data,

    .. math::

       D(x;\sigma) = \sum_j r_j(x)\Big(\mu_j + \frac{\tau_j^2}{\tau_j^2 + \sigma^2}(x - \mu_j)\Big),

       r_j(x) \propto w_j\,\mathcal N(x; \mu_j, (\tau_j^2 + \sigma^2) I)

    for :math:`x_0 \sim \sum_j w_j \mathcal N(\mu_j, \tau_j^2 I)` and :math:`x = x_0 + \sigma\varepsilon`
    (Chapter 3, §3.2–3.3; :meth:`companion.gmm.GaussianMixture.denoise`). ``x``: ``(B, D)``; ``sigma``: a
    positive float; ``means``: ``(K, D)``; ``stds`` (τ_j) and ``weights``: ``(K,)``; all float64. The last
    case has narrow components and σ = 1e-3, where normalising ``exp`` by hand gives 0/0 (use
    ``torch.softmax``). Typical mistakes are named; the companion's mixtures and denoisers must not be used.
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        K, D, B = 2 + i % 3, 1 + (i + 1) % 3, 4 + i
        last = i == n_cases - 1
        sigma = 1e-3 if last else [0.5, 2.0, 0.1, 1.0, 5.0][i % 5]
        means = 3 * torch.randn(K, D, generator=g, dtype=torch.float64)
        stds = (0.005 if last else 0.2) + torch.rand(K, generator=g, dtype=torch.float64) * (0.005 if last else 1.0)
        weights = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
        x = means[torch.randint(0, K, (B,), generator=g)] + torch.randn(B, D, generator=g, dtype=torch.float64)
        cases.append(((x, sigma, means, stds, weights), {}))
    return compare(fn, _mixture_denoiser, cases, rtol=1e-7, atol=1e-9, name="mixture denoiser", quiet=quiet,
                   forbid=[(GaussianMixture, "denoise"), (GaussianMixture, "score"),
                           (GaussianMixture, "responsibilities"), (GaussianMixture, "log_prob"),
                           (IdealDenoiser, "__call__")],
                   forbid_source=[r"\bgmm\.", r"\bGaussianMixture\b", r"\bIdealDenoiser\b", r"\.denoise\(",
                                  r"\bmixture_score\b"], mistakes=_DENOISER_MISTAKES)
