"""Checkers for Chapter 4 (likelihood): the exact divergence of a row-wise map and the PF-ODE log-likelihood."""
from __future__ import annotations

import math

import torch

from .. import likelihood
from ..gmm import GaussianMixture
from ..likelihood import exact_divergence, pf_ode_log_likelihood
from .core import Verdict, compare

__all__ = ["check_divergence", "check_ode_log_likelihood"]

#: the companion's divergences and likelihoods: an answer must not call them (the exercises are to write them)
_FORBID = [(likelihood, name) for name in ("exact_divergence", "hutchinson_divergence", "jacobian_quadratic_forms",
                                           "pf_ode_log_likelihood", "gaussian_log_prob")]
_FORBID_SOURCE = [r"\bL\.\w+", r"\blikelihood\.\w+"]


def _rowwise_map(shape, generator):
    """A nonlinear map acting on each element of a batch of shape ``(B, *shape)`` separately."""
    d = int(torch.tensor(shape).prod())
    W = torch.randn(d, d, generator=generator, dtype=torch.float64) / d**0.5
    b = torch.randn(d, generator=generator, dtype=torch.float64)

    def f(x):
        y = x.reshape(x.shape[0], d)
        return (torch.tanh(y @ W + b) + 0.5 * y**2).reshape(x.shape)
    return f


def _sum_of_partials(f, x):
    """A typical slip: Σ_ij ∂f_i/∂x_j (the gradient of the summed output) instead of the trace Σ_i ∂f_i/∂x_i."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(f(x).sum(), x)
    return grad.flatten(1).sum(1)


_DIVERGENCE_MISTAKES = [
    ("the gradient of the summed output gives Σ_ij ∂f_i/∂x_j, every entry of the Jacobian; the divergence is "
     "the trace Σ_i ∂f_i/∂x_i (one gradient per output coordinate i, keep its coordinate i).", _sum_of_partials),
]


def check_divergence(fn, n_cases: int = 5, seed: int = 0, quiet: bool = False) -> Verdict:
    """Check ``fn(f, x) -> (B,)``, the exact divergence ``tr ∂f/∂x`` of a row-wise map at each of the B
    elements of ``x`` (points ``(B, d)`` or images ``(B, C, H, W)``, float64). Reference:
    :func:`companion.likelihood.exact_divergence` (one autograd pass per coordinate). The answer must not
    call the companion's divergences (``exact_divergence``, ``hutchinson_divergence``,
    ``jacobian_quadratic_forms``) or likelihoods; a full Jacobian from ``torch.func`` is accepted.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = [(1,), (2,), (5,), (1, 2, 3), (3, 2, 2)]
    cases = []
    for i in range(n_cases):
        shape = shapes[i % len(shapes)]
        x = torch.randn(2 + i, *shape, generator=g, dtype=torch.float64)
        cases.append(((_rowwise_map(shape, g), x), {}))
    return compare(fn, exact_divergence, cases, rtol=1e-7, atol=1e-9, name="divergence", quiet=quiet,
                   forbid=_FORBID, forbid_source=_FORBID_SOURCE, mistakes=_DIVERGENCE_MISTAKES)


def _ode_reference(D, x, sigma_min, sigma_max, steps):
    return pf_ode_log_likelihood(D, x, sigma_min, sigma_max, steps=steps, method="euler").log_prob


def _ode(D, x, sigma_min, sigma_max, steps, div_sign=1.0, div_of_b=True, prior_norm=True, prior_var_sq=True,
         at_end=False):
    """Euler in log σ written out (exact divergence); the keywords make the typical mistakes."""
    d, h = x[0].numel(), (math.log(sigma_max) - math.log(sigma_min)) / steps
    y, ell = x.detach(), torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(steps):
        sigma = math.exp(math.log(sigma_min) + (k + at_end) * h)
        tr_D = exact_divergence(lambda z: D(z, sigma), y)
        ell = ell + h * ((d - tr_D) if div_of_b else tr_D)
        y = y + h * (y - D(y, sigma))
    var = sigma_max**2 if prior_var_sq else sigma_max
    prior = -0.5 * y.flatten(1).pow(2).sum(1) / var - (0.5 * d * math.log(2 * math.pi * var) if prior_norm else 0)
    return prior + div_sign * ell


_ODE_MISTAKES = [
    ("the divergence term has the wrong sign: log p_σmin(x) = log p_σmax(x_T) + ∫ ∇·b d log σ.",
     lambda *a: _ode(*a, div_sign=-1.0)),
    ("the divergence is that of D, not of the velocity b = x − D: ∇·b = d − tr ∂D/∂x.",
     lambda *a: _ode(*a, div_of_b=False)),
    ("the prior lacks its normaliser −(d/2) log(2π σ_max²).",
     lambda *a: _ode(*a, prior_norm=False)),
    ("the prior N(0, σ_max² I) has variance σ_max², not σ_max.",
     lambda *a: _ode(*a, prior_var_sq=False)),
    ("Euler evaluates D (for the velocity and its divergence) at the start σ_k = σ_min e^(kh) of each step; "
     "yours uses the end σ_(k+1).", lambda *a: _ode(*a, at_end=True)),
]


def check_ode_log_likelihood(fn, n_cases: int = 4, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(D, x, sigma_min, sigma_max, steps) -> (B,)``: :math:`\log p_{\sigma_{\min}}(x)` by the
    probability-flow ODE in :math:`s = \log\sigma` (Chapter 4, eq. ch4-cov), with ``steps`` Euler steps of size
    :math:`h = (\log\sigma_{\max} - \log\sigma_{\min})/\text{steps}` from σ_min to σ_max,

    .. math::

       x_{k+1} = x_k + h\,b(x_k;\sigma_k),\quad \ell_{k+1} = \ell_k + h\,\nabla\!\cdot b(x_k;\sigma_k),

       b = x - D(x;\sigma),\quad \sigma_k = \sigma_{\min} e^{kh},

    and the answer :math:`\log\mathcal N(x_{\text{steps}}; 0, \sigma_{\max}^2 I) + \ell_{\text{steps}}`, with the
    exact divergence :math:`\nabla\!\cdot b = d - \operatorname{tr}\partial_x D`. ``D(x, sigma)``: the exact
    denoiser of a small Gaussian mixture (float ``sigma``); ``x``: ``(B, d)`` float64. Reference:
    :func:`companion.likelihood.pf_ode_log_likelihood` with ``method="euler"``. The answer must not call
    the companion's likelihoods or divergences (use your own divergence).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        K, d = 2 + i % 2, 1 + i % 3
        gmm = GaussianMixture(2 * torch.randn(K, d, generator=g, dtype=torch.float64),
                              0.3 + torch.rand(K, generator=g, dtype=torch.float64))
        x = gmm.sample(3 + i, generator=g)
        sigma_min, sigma_max = [0.01, 0.05, 0.002, 0.1][i % 4], [20.0, 5.0, 50.0, 10.0][i % 4]
        cases.append(((gmm.denoise, x, sigma_min, sigma_max, 6 + 2 * i), {}))
    return compare(fn, _ode_reference, cases, rtol=1e-8, atol=1e-8, name="PF-ODE log-likelihood", quiet=quiet,
                   forbid=_FORBID, forbid_source=_FORBID_SOURCE, mistakes=_ODE_MISTAKES)
