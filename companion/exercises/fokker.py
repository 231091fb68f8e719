"""Checkers for Chapter 2 (Fokker–Planck, the probability-flow ODE and the reverse-time family)."""
from __future__ import annotations

import torch

from ..gmm import GaussianMixture
from .. import reverse
from ..reverse import integrate, mixture_score
from ..sde import VE, VP
from .core import Verdict, compare

__all__ = ["check_reverse_drift", "check_reverse_sampler"]


def _reference(x, t, process, score, lam):
    """``f(t) x − ½ (1 + λ²) g(t)² score(x, t)``: the drift of the λ-family run backwards in time."""
    return float(process.f(t)) * x - 0.5 * (1 + lam**2) * float(process.g(t)) ** 2 * score(x, t)


def _drift(x, t, process, score, lam, lam_sign=1.0, score_sign=1.0, g_power=2):
    """The drift written out; the keywords make the typical slips (defaults: the reference)."""
    g2 = float(process.g(t)) ** g_power
    return float(process.f(t)) * x - score_sign * 0.5 * (1 + lam_sign * lam**2) * g2 * score(x, t)


_DRIFT_MISTAKES = [
    ("½(1 − λ²) belongs to the forward-time family; run backwards the score term is ½(1 + λ²) g² ∇log p_t.",
     lambda *a: _drift(*a, lam_sign=-1.0)),
    ("the score term has the wrong sign: b = f x − ½(1 + λ²) g² ∇log p_t.",
     lambda *a: _drift(*a, score_sign=-1.0)),
    ("g is not squared: the score term is ½(1 + λ²) g(t)² ∇log p_t.", lambda *a: _drift(*a, g_power=1)),
]


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
    return compare(fn, _reference, cases, rtol=1e-5, atol=1e-6, name="reverse-time drift", quiet=quiet,
                   mistakes=_DRIFT_MISTAKES)


def _sampler_reference(score, process, x1, n_steps, lam, seed):
    """:func:`companion.reverse.integrate` (Euler–Maruyama from t = 1 to 1e-3) with a generator seeded by ``seed``."""
    return integrate(score, process, x1, n_steps, lam=lam, generator=torch.Generator().manual_seed(seed))


def _em(score, process, x1, n_steps, lam, seed, sqrt_dt=True, dt_sign=1.0, at_end=False, noise_lam=True):
    """The Euler–Maruyama loop written out; the keywords make the typical mistakes (all off: the reference)."""
    gen, x = torch.Generator().manual_seed(seed), x1
    ts = torch.linspace(1.0, 1e-3, n_steps + 1, dtype=torch.float64)
    for a, b in zip(ts[:-1], ts[1:]):
        u = b if at_end else a
        dt = dt_sign * (b - a).item()
        x = x + _reference(x, u, process, score, lam) * dt
        z = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        x = x + (lam if noise_lam else 1.0) * float(process.g(u)) * ((a - b).item() ** 0.5 if sqrt_dt else 1.0) * z
    return x


_SAMPLER_MISTAKES = [
    ("the noise of a step is λ g(t) √|Δt| z: yours lacks the √|Δt| (a Brownian increment has variance |Δt|).",
     lambda *a: _em(*a, sqrt_dt=False)),
    ("the drift is multiplied by |Δt| > 0: going from t = 1 back to 0 the time step Δt = t_(k+1) − t_k is "
     "negative.", lambda *a: _em(*a, dt_sign=-1.0)),
    ("Euler–Maruyama evaluates the drift and g at the start t_k of each step; yours uses the end t_(k+1).",
     lambda *a: _em(*a, at_end=True)),
    ("the noise is not multiplied by λ (the probability-flow ODE, λ = 0, has no noise).",
     lambda *a: _em(*a, noise_lam=False)),
]


def check_reverse_sampler(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(score, process, x1, n_steps, lam, seed) -> x``: Euler–Maruyama for the reverse-time λ-family

    .. math::

       x_{k+1} = x_k + b(x_k, t_k)\,\Delta t + \lambda\, g(t_k) \sqrt{|\Delta t|}\, z_k,

       b = f x - \tfrac12(1 + \lambda^2) g^2 \nabla\log p_t,

    on ``torch.linspace(1, 1e-3, n_steps + 1)`` (float64; ``Δt = t_{k+1} − t_k < 0``), with
    ``z_k = torch.randn(x.shape, generator=gen, dtype=x.dtype)`` drawn after the drift from
    ``gen = torch.Generator().manual_seed(seed)``. Reference: :func:`companion.reverse.integrate` with that
    generator (it draws no noise when λ = 0). ``x1``: ``(B, D)`` float64; ``score(x, t)`` an exact mixture
    score; ``process`` VP or VE; λ in {1, 0, ½}. It must not call ``reverse.integrate``.
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        gmm = GaussianMixture(3 * torch.randn(3, 2, generator=g, dtype=torch.float64),
                              0.2 + torch.rand(3, generator=g, dtype=torch.float64))
        process = VP() if i % 2 == 0 else VE(0.01, 10.0)
        x1 = float(process.std(torch.tensor(1.0, dtype=torch.float64))) * torch.randn(
            6 + i, 2, generator=g, dtype=torch.float64)
        lam = (1.0, 0.0, 0.5)[i % 3]
        cases.append(((mixture_score(gmm, process), process, x1, 10 + 5 * i, lam, 100 + i), {}))
    return compare(fn, _sampler_reference, cases, rtol=1e-7, atol=1e-9, name="reverse-time sampler", quiet=quiet,
                   forbid=[(reverse, "integrate")], forbid_source=[r"\bintegrate\("],
                   mistakes=_SAMPLER_MISTAKES)
