"""Checkers for Chapter 5 (log-density along stochastic sampling)."""
from __future__ import annotations

import math

import torch

from .. import density_tracking
from ..density_tracking import log_density_increment
from .core import Verdict, compare

__all__ = ["check_log_density_step", "check_log_density_step_family"]

# the answer must not call the companion's tracker: the exercise is to write its step
_FORBID = [(density_tracking, "log_density_increment"), (density_tracking, "track")]
_FORBID_SOURCE = [r"\blog_density_increment\b", r"\bdensity_tracking\.\w+", r"\bdtk\.\w+"]


def _reference(log_p, score, dw, f, g, dt):
    return log_p + log_density_increment(score, dw, f, g, dt)


def _step_written(log_p, score, dw, f, g, dt, dt_sign=1.0, norm=1.0, noise=1.0):
    """The λ = 1 step written out; the keywords make the typical slips (defaults: the reference)."""
    d = score.shape[1]
    drift = -f * d - norm * 0.5 * g**2 * (score**2).sum(1)
    return log_p + drift * dt_sign * dt + noise * g * (score * dw).sum(1)


_STEP_MISTAKES = [
    ("the drift is multiplied by |Δt|: sampling runs from t = 1 down to 0, so dt < 0 and the drift term is "
     "(−f d − ½ g² ‖score‖²) dt with that negative dt.", lambda *a: _step_written(*a, dt_sign=-1.0)),
    ("the ‖score‖² term has the wrong sign: with λ = 1 the rate is −f d − ½ g² ‖score‖².",
     lambda *a: _step_written(*a, norm=-1.0)),
    ("the noise term has the wrong sign: it is + g score·dw, with the same dw that moves x.",
     lambda *a: _step_written(*a, noise=-1.0)),
]


def check_log_density_step(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(log_p, score, dw, f, g, dt) -> log_p_next``: one Euler–Maruyama step of the log-density
    along the reverse SDE (Karczewski et al. 2025),

    .. math::  \log p \leftarrow \log p + \big(-f D - \tfrac12 g^2 \|s\|^2\big)\Delta t + g\, s\cdot dw ,

    with ``log_p`` ``(B,)``, ``score`` and ``dw`` ``(B, D)`` float64 (``dw = √|Δt| z``, the increment that also
    moves x), floats ``f``, ``g`` and ``dt < 0``. The answer must match to 1e-8 (absolute) / 1e-8 (relative).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        B, D = 3 + i, 2 + 3 * i
        dt = -float(10 ** (-1 - i % 3))
        args = (torch.randn(B, generator=g, dtype=torch.float64) * 10,
                torch.randn(B, D, generator=g, dtype=torch.float64) * 3,
                math.sqrt(-dt) * torch.randn(B, D, generator=g, dtype=torch.float64),
                -float(torch.rand((), generator=g)) * 5, 0.5 + 3 * float(torch.rand((), generator=g)), dt)
        cases.append((args, {}))
    return compare(fn, _reference, cases, rtol=1e-8, atol=1e-8, name="log-density step", quiet=quiet,
                   forbid=_FORBID, forbid_source=_FORBID_SOURCE, mistakes=_STEP_MISTAKES)


def _family_reference(log_p, score, div, dw, f, g, dt, a, zeta):
    """The step through the companion's λ-parametrisation: drift coefficient a = ½(1 + λ²)."""
    lam = math.sqrt(2 * a - 1)
    return log_p + log_density_increment(score, dw, f, g, dt, lam=lam, noise=zeta, div=div)


def _family_step(log_p, score, div, dw, f, g, dt, a, zeta, ito=-1.0, norm=1.0, d_axis=1, noise_power=1,
                 div_term=1.0):
    """The step written out, with switches that reproduce the typical slips (defaults: right)."""
    d = score.shape[d_axis]
    drift = (-f * d + div_term * 0.5 * (1 + ito * zeta**2) * g**2 * div
             + norm * (0.5 - a) * g**2 * (score**2).sum(1))
    return log_p + drift * dt + zeta**noise_power * g * (score * dw).sum(1)


_FAMILY_MISTAKES = [
    ("the Itô correction has the wrong sign: the divergence enters with ½(1 − ζ²) g² in reverse time "
     "(½(1 + ζ²) is the forward-time formula).", lambda *a: _family_step(*a, ito=1.0)),
    ("the ‖score‖² term has the wrong sign: its coefficient is (½ − a) g².",
     lambda *a: _family_step(*a, norm=-1.0)),
    ("the divergence term is missing: it is ½(1 − ζ²) g² div, which vanishes only for ζ = 1.",
     lambda *a: _family_step(*a, div_term=0.0)),
    ("d in −f d is the dimension (score.shape[1]), not the batch size.", lambda *a: _family_step(*a, d_axis=0)),
    ("the noise term is ζ g score·dw (the noise scale ζ, not its square).",
     lambda *a: _family_step(*a, noise_power=2)),
]


def check_log_density_step_family(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(log_p, score, div, dw, f, g, dt, a, zeta) -> log_p_next``: one Euler–Maruyama step of
    ``log p_t(x_t)`` along the reverse-time process with drift ``f x − a g² s`` and noise ``ζ g dW̄``
    (Chapter 5, exercise ``ch5-ex-family``; Karczewski et al. 2025 for a = ζ = 1):

    .. math::  \log p \leftarrow \log p + \big[-f d + \tfrac12(1-\zeta^2) g^2\,\mathrm{div} + (\tfrac12 - a) g^2\|s\|^2\big]
               \Delta t + \zeta g\, s\cdot dw .

    ``log_p`` and ``div`` (the divergence of the score) are ``(B,)``, ``score`` and ``dw = √|Δt| z`` ``(B, d)``,
    float64; ``f``, ``g``, ``dt < 0``, ``a ≥ ½`` and ``ζ ≥ 0`` are floats. The cases include the reverse SDE
    (a = ζ = 1), the mode-tracking ODE (a = 1, ζ = 0) and the probability-flow ODE (a = ½, ζ = 0). The reference
    is :func:`companion.density_tracking.log_density_increment` with λ = √(2a − 1); the answer must not call it.
    """
    gen = torch.Generator().manual_seed(seed)
    special = {1: (1.0, 1.0), 2: (1.0, 0.0), 3: (0.5, 0.0)}
    cases = []
    for i in range(n_cases):
        B, D = 3 + i, 2 + 3 * i
        dt = -float(10 ** (-1 - i % 3))
        r = torch.rand(4, generator=gen, dtype=torch.float64).tolist()
        a, zeta = special.get(i, (0.5 + 1.5 * r[0], 0.2 + 1.3 * r[1]))
        args = (torch.randn(B, generator=gen, dtype=torch.float64) * 10,
                torch.randn(B, D, generator=gen, dtype=torch.float64) * 3,
                torch.randn(B, generator=gen, dtype=torch.float64) * 20,
                math.sqrt(-dt) * torch.randn(B, D, generator=gen, dtype=torch.float64),
                -5 * r[2], 0.5 + 3 * r[3], dt, a, zeta)
        cases.append((args, {}))
    return compare(fn, _family_reference, cases, rtol=1e-8, atol=1e-8, name="log-density step (a, ζ)",
                   quiet=quiet, forbid=_FORBID, forbid_source=_FORBID_SOURCE, mistakes=_FAMILY_MISTAKES)
