r"""Reverse-time integration in continuous time: the λ-family from the probability-flow ODE to the
reverse SDE, and the probability-flow ODE run forwards (encoding).

For a forward process dx = f(t) x dt + g(t) dW with marginals p_t (see :mod:`companion.sde`), every
member of the family (lecture "Score and diffusion models"; Song et al. 2021, Anderson 1982)

.. math::  dx = \Big[f(t)\,x - \tfrac12 (1 + \lambda^2)\, g(t)^2 \nabla_x \log p_t(x)\Big] dt
              + \lambda\, g(t)\, d\bar W ,\qquad t: 1 \to 0,

has the same marginals p_t: λ = 0 is the deterministic probability-flow ODE (DDIM-like), λ = 1 the
reverse SDE of Anderson (DDPM-like). Run *forwards* in time the same family reads
``dx = [f x − ½(1 − λ²) g² ∇log p_t] dt + λ g dW`` (λ = 1 is the forward SDE itself), so one
drift ``f x − ½(1 − d λ²) g² ∇log p_t`` with ``d = sign(dt)`` covers both directions.

The score of the VE/VP marginals blows up as t → 0 (p_0 may have no density at all), so
integration stops at a small ``t_end`` (default ``1e-3``) instead of 0.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import trange

from ._checks import as_tensor, check_positive_int

__all__ = ["integrate", "encode", "mixture_marginal", "mixture_score"]

METHODS = ("euler", "heun")


def _t64(t) -> torch.Tensor:
    """A time as a float64 tensor: the process coefficients are then computed in float64 (a Python
    float would give float32 values, with a relative error of ~6e-8)."""
    return torch.as_tensor(t, dtype=torch.float64)


def mixture_marginal(gmm, process, t: float):
    """The exact marginal p_t of ``process`` started at the mixture ``gmm``: the law of
    ``s(t)(x0 + σ(t) ε)``, i.e. ``gmm.noised(σ(t), scale=s(t))`` (a :class:`~companion.gmm.GaussianMixture`)."""
    t = _t64(t)
    return gmm.noised(float(process.sigma(t)), scale=float(process.s(t)))


def mixture_score(gmm, process) -> Callable:
    r"""The exact score ``score(x, t) = ∇_x log p_t(x)`` of a Gaussian mixture under a forward process.

    Uses ``∇ log p_t(x) = score_σ(x / s) / s`` with ``s = s(t)``, ``σ = σ(t)`` and ``score_σ`` the
    mixture's variance-exploding score (:meth:`~companion.gmm.GaussianMixture.score`).
    The returned function takes x ``(B, D)`` and a float t and returns ``(B, D)`` in x's dtype.
    """

    def score(x, t):
        t = _t64(t)
        s, sig = float(process.s(t)), float(process.sigma(t))
        return (gmm.score(x / s, sig) / s).to(x.dtype)

    return score


def integrate(
    score: Callable,
    process,
    x1,
    n_steps: int,
    lam: float = 0.0,
    method: str = "euler",
    t_start: float = 1.0,
    t_end: float = 1e-3,
    generator: torch.Generator | None = None,
    return_path: bool = False,
    noise: float | None = None,
    callback: Callable | None = None,
    progress: bool = False,
):
    r"""Integrate the λ-family from ``t_start`` to ``t_end`` with ``n_steps`` equal time steps.

    Each step (``Δt = t_{k+1} − t_k``, negative when going back in time, ``d = sign(Δt)``) with drift
    ``b(x, t) = f(t) x − ½ (1 − d λ²) g(t)² score(x, t)``:

    * ``"euler"`` (Euler–Maruyama): ``x ← x + b(x, t_k) Δt + λ g(t_k) √|Δt| z``, ``z ~ N(0, I)``;
    * ``"heun"`` (λ = 0 only): ``x' = x + b(x, t_k) Δt``, ``x ← x + ½[b(x, t_k) + b(x', t_{k+1})] Δt``.

    ``noise`` (default λ) replaces λ in the noise term only: ``lam=1, noise=0`` integrates the reverse
    SDE's drift without its noise, the mode-tracking ODE ``dy = [f y − g² ∇log p_t] dt`` of Karczewski
    et al. (2025). ``callback(x, t, dt, score, dw)`` is called at every Euler step with the state
    ``x`` before the step, ``t = t_k``, ``dt = Δt``, the score ``score(x, t_k)`` used in the drift and
    the Brownian increment ``dw = √|Δt| z`` that drives the step (zeros when ``noise = 0``), so a quantity
    driven by the *same* noise (the log-density of :mod:`companion.density_tracking`) can be carried along.

    Args:
        score: ``score(x, t)`` with x ``(B, D)`` and a float t, returning ``∇ log p_t(x)`` ``(B, D)``
            (e.g. :func:`mixture_score`).
        process: a forward process of :mod:`companion.sde`.
        x1: start points ``(B, D)``, e.g. samples of N(0, s(1)²σ(1)² I) at ``t_start = 1``.
        n_steps: number of steps N.
        lam: λ ≥ 0; 0 = probability-flow ODE (DDIM-like), 1 = reverse SDE (DDPM-like).
        method: ``"euler"`` or ``"heun"``.
        t_start, t_end: times in [0, 1], different; ``t_end < t_start`` runs backwards (generation).
            The default ``t_end = 1e-3`` stops before the score blows up at t = 0.
        generator: optional ``torch.Generator`` for the noise (λ > 0).
        return_path: also return the times ``(N + 1,)`` and the path ``(N + 1, B, D)``.
        noise: the noise scale ζ ≥ 0 (default λ): the noise term is ``ζ g √|Δt| z``.
        callback: optional ``callback(x, t, dt, score, dw)`` (Euler only), see above.
        progress: show a tqdm bar over the steps.

    Returns:
        x at ``t_end`` ``(B, D)``, or ``(x, ts, path)`` when ``return_path``.
    """
    x = as_tensor(x1, "x1")
    if x.dim() != 2:
        raise ValueError(f"x1 must have shape (B, D), got {tuple(x.shape)}")
    check_positive_int(n_steps, "n_steps")
    if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "heun" and lam != 0:
        raise ValueError(f"method='heun' integrates the ODE only (lam = 0), got lam={lam!r}; use 'euler'")
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
    if t_start == t_end:
        raise ValueError("t_start and t_end must differ")
    noise = lam if noise is None else noise
    if not (isinstance(noise, (int, float)) and math.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be a finite number >= 0 or None, got {noise!r}")
    if method == "heun" and (noise != 0 or callback is not None):
        raise ValueError("method='heun' takes neither noise nor a callback; use method='euler'")
    direction = 1.0 if t_end > t_start else -1.0
    coef = 0.5 * (1.0 - direction * lam**2)

    def drift(x, t, sc):
        f, g = float(process.f(_t64(t))), float(process.g(_t64(t)))
        return f * x - coef * g**2 * sc

    ts = torch.linspace(t_start, t_end, n_steps + 1, dtype=torch.float64)
    path = [x] if return_path else None
    for k in trange(n_steps, disable=not progress, leave=False, desc="integrate"):
        t, t_next = float(ts[k]), float(ts[k + 1])
        dt = t_next - t
        sc = score(x, t)
        b = drift(x, t, sc)
        if method == "heun":
            x_pred = x + b * dt
            x = x + 0.5 * (b + drift(x_pred, t_next, score(x_pred, t_next))) * dt
        else:
            z = None
            if noise > 0:
                z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device="cpu").to(x.device)
            if callback is not None:
                callback(x, t, dt, sc, torch.zeros_like(x) if z is None else math.sqrt(abs(dt)) * z)
            x = x + b * dt
            if z is not None:
                x = x + noise * float(process.g(_t64(t))) * math.sqrt(abs(dt)) * z
        if return_path:
            path.append(x)
    if return_path:
        return x, ts.to(x.dtype), torch.stack(path)
    return x


def encode(score: Callable, process, x0, n_steps: int, method: str = "heun", t_start: float = 1e-3,
           t_end: float = 1.0, return_path: bool = False):
    """Run the probability-flow ODE forwards (λ = 0): data x0 ``(B, D)`` at ``t_start`` → latents at ``t_end``.

    The deterministic inverse of ``integrate(score, process, x1, n_steps, lam=0, method,
    t_start=t_end, t_end=t_start)`` (same time nodes, in reverse order). Each direction is
    accurate to order 1 (Euler) or 2 (Heun; two score evaluations per step). The round-trip
    error ``decode(encode(x0)) - x0`` falls like order 1 for Euler but order 3 for Heun: the
    leading local errors ``C h³`` of a Heun step and ``C (-h)³`` of the step back cancel, so a
    small round-trip error does not imply accurate samples. Same arguments as :func:`integrate`.
    """
    if not t_end > t_start:
        raise ValueError(f"encode runs forwards in time: need t_end > t_start, got {t_start!r} -> {t_end!r}")
    return integrate(score, process, x0, n_steps, lam=0.0, method=method, t_start=t_start, t_end=t_end,
                     return_path=return_path)
