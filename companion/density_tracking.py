r"""Log-density along stochastic and deterministic sampling, its bias, and the high-density sampler
(Karczewski, Heinonen & Garg, "Diffusion models as cartoonists", ICLR 2025; Chapter 5).

**Tracking.** Along any member of the λ-family integrated by :func:`companion.reverse.integrate`,
``dx = [f x − c g² s] dt + ζ g dW`` with ``s = ∇log p_t``, ``c = ½(1 − d λ²)``, ``d = sign(dt)`` and
noise scale ζ (default λ), Itô's formula for ``log p_t(x_t)`` and the Fokker–Planck equation
``∂_t log p = −f D − f x·s + ½ g² (div s + ‖s‖²)`` give

.. math::  d\log p_t(x_t) = \Big[-f D + \tfrac12 (1 + d\zeta^2)\, g^2 \operatorname{div} s
           + (\tfrac12 - c)\, g^2 \|s\|^2\Big] dt + \zeta\, g\, s\cdot dW .

For the reverse SDE (d = −1, λ = ζ = 1) the divergence drops out: ``d log p = [−f D − ½ g²‖s‖²] dt + g s·dW``
with the *same* Brownian increment that moves x (the paper's theorem): tracking costs the score alone.
For the probability-flow ODE (λ = ζ = 0) it is the familiar ``[−f D + ½ g² div s] dt`` (Chen et al. 2018).
:func:`track` integrates x with :func:`companion.reverse.integrate` and carries ``log p`` along through its
per-step callback (one Euler step of the formula above, with the score the x step used).

**Bias.** With an approximate score the reverse SDE samples some p^SDE_t ≠ p_t and the tracked value is
``log p_0^SDE(x_0) + X`` with ``E X = ½ ∫ g² E‖s_θ − ∇log p^SDE_t‖² dt``; :func:`track` accumulates the path
integral ``½ Σ g² ‖s_θ − s_ref‖² |Δt|`` for a given reference score, and :func:`gaussian_euler_law` gives
the exact law of the Euler chain (hence ∇log p^SDE) when the score is that of a Gaussian.

**High density.** :func:`high_density_sample` follows the λ-family down to a threshold time and then the
high-density ODE ``dy = [f y − g² ∇log p_t] dt`` (the reverse SDE's drift without its noise). It is the exact
curve of the denoising mode ``argmax p_{s|t}(· | x_t)`` only when ``log p_s`` is quadratic (Gaussian data); in
general the mode curve has a further term with third derivatives of ``log p_s``, which the paper's practical
sampler drops (Chapter 5, eq. ch5-mode).
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from . import reverse
from ._checks import as_tensor, check_positive_int

__all__ = ["Tracked", "log_density_increment", "track", "mixture_divergence", "divergence", "denoiser_score", "prior_log_prob",
           "high_density_sample", "gaussian_euler_law"]


class Tracked(NamedTuple):
    """What :func:`track` returns: final points ``x`` ``(B, D)``, tracked ``log_p`` ``(B,)`` (float64),
    ``bias`` ``(B,)`` (the path integral ``½ Σ g²‖s − s_ref‖²|Δt|``, zeros without a reference score),
    and with ``return_path`` the times ``ts`` ``(N + 1,)``, ``path`` ``(N + 1, B, D)`` and ``log_p_path``
    ``(N + 1, B)`` (else None)."""

    x: torch.Tensor
    log_p: torch.Tensor
    bias: torch.Tensor
    ts: torch.Tensor | None = None
    path: torch.Tensor | None = None
    log_p_path: torch.Tensor | None = None


def _number(v, name, positive=False):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 or (
            positive and v == 0):
        raise ValueError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")
    return float(v)


def log_density_increment(score, dw, f: float, g: float, dt: float, lam: float = 1.0, noise: float | None = None,
                          div=None) -> torch.Tensor:
    r"""One Euler–Maruyama step of ``log p_t(x_t)`` along the λ-family (module docstring), ``(B,)`` float64:

    ``[−f D + ½(1 + d ζ²) g² div + (½ − c) g² ‖s‖²] Δt + ζ g s·dw``, ``c = ½(1 − d λ²)``, ``d = sign(Δt)``.

    Args:
        score: ``s = ∇log p_t(x)`` ``(B, D)`` at the state before the step; dw: the step's Brownian increment
            ``√|Δt| z`` ``(B, D)``; f, g: the process's coefficients at ``t_k``; dt: Δt (negative backwards);
        lam, noise: λ and ζ (default λ); div: ``div s`` ``(B,)``, required unless ``1 + d ζ² = 0``.
    """
    d = 1.0 if dt > 0 else -1.0
    nu = lam if noise is None else noise
    c, a = 0.5 * (1.0 - d * lam**2), 0.5 * (1.0 + d * nu**2)
    s64 = score.double()
    inc = (-f * s64.shape[1] + (0.5 - c) * g**2 * (s64**2).sum(1)) * dt + nu * g * (s64 * dw.double()).sum(1)
    if a != 0:
        if div is None:
            raise ValueError(f"div is required: its coefficient ½(1 + d ζ²) = {a:g} is not 0")
        inc = inc + a * g**2 * torch.as_tensor(div).double() * dt
    return inc


def track(score: Callable, process, x1, log_p1, n_steps: int, lam: float = 1.0, noise: float | None = None,
          divergence: Callable | None = None, t_start: float = 1.0, t_end: float = 1e-3,
          generator: torch.Generator | None = None, reference_score: Callable | None = None,
          return_path: bool = False, progress: bool = False) -> Tracked:
    r"""Integrate the augmented system ``(x_t, log p_t(x_t))`` with Euler–Maruyama (module docstring).

    x moves exactly as in ``cp.reverse.integrate(score, process, x1, n_steps, lam=lam, noise=noise, ...)``
    (same steps, same noise for the same ``generator``); each step adds to ``log p``

    ``[−f D + ½(1 + d ζ²) g² div s(x, t_k) + (½ − c) g² ‖s(x, t_k)‖²] Δt + ζ g s(x, t_k)·√|Δt| z``.

    Args:
        score: ``score(x, t)`` ``(B, D)`` → ``(B, D)``.
        process: a forward process of :mod:`companion.sde`.
        x1: start points ``(B, D)`` at ``t_start``; log_p1: their ``log p_{t_start}`` ``(B,)`` (or a number).
        n_steps: number of equal time steps.
        lam: λ ≥ 0 of the drift (1: reverse SDE, 0: probability-flow ODE).
        noise: noise scale ζ (default λ); ``lam=1, noise=0`` is the mode-tracking ODE.
        divergence: ``divergence(x, t)`` → ``(B,)``, the divergence of ``score``; required unless its
            coefficient ``½(1 + d ζ²)`` vanishes (the reverse SDE with ζ = 1).
        t_start, t_end: as in :func:`companion.reverse.integrate` (either direction).
        generator: for the noise.
        reference_score: optional ``s_ref(x, t)``; accumulates ``½ Σ g² ‖s − s_ref‖² |Δt|`` (the bias integral).
        return_path: also return times, path and the tracked values along it.
        progress: show a tqdm bar over the steps.

    Returns:
        :class:`Tracked`.
    """
    x1 = as_tensor(x1, "x1")
    if x1.dim() != 2:
        raise ValueError(f"x1 must have shape (B, D), got {tuple(x1.shape)}")
    B, D = x1.shape
    log_p = as_tensor(log_p1, "log_p1", dtype=torch.float64, device=x1.device)
    if log_p.dim() == 0:
        log_p = log_p.expand(B)
    if log_p.shape != (B,):
        raise ValueError(f"log_p1 must be a number or have shape ({B},), got {tuple(log_p.shape)}")
    lam = _number(lam, "lam")
    nu = lam if noise is None else _number(noise, "noise")
    for name, v in (("t_start", t_start), ("t_end", t_end)):
        if not (isinstance(v, (int, float)) and 0 <= v <= 1):
            raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")
    d = 1.0 if t_end > t_start else -1.0
    c, a = 0.5 * (1.0 - d * lam**2), 0.5 * (1.0 + d * nu**2)
    if a != 0 and divergence is None:
        raise ValueError(f"divergence is required: its coefficient ½(1 + d ζ²) = {a:g} is not 0 "
                         "(only the reverse SDE with noise = 1 tracks log p without it)")
    state = {"log_p": log_p.clone(), "bias": torch.zeros(B, dtype=torch.float64, device=x1.device)}
    history = [state["log_p"]]

    def step(x, t, dt, s, dw):
        t64 = torch.tensor(t, dtype=torch.float64)
        f, g = float(process.f(t64)), float(process.g(t64))
        div = divergence(x, t) if a != 0 else None
        state["log_p"] = state["log_p"] + log_density_increment(s, dw, f, g, dt, lam, nu, div)
        if reference_score is not None:
            err = ((s.double() - reference_score(x, t).double()) ** 2).sum(1)
            state["bias"] = state["bias"] + 0.5 * g**2 * err * abs(dt)
        if return_path:
            history.append(state["log_p"])

    out = reverse.integrate(score, process, x1, n_steps, lam=lam, noise=nu, t_start=t_start, t_end=t_end,
                            generator=generator, return_path=return_path, callback=step, progress=progress)
    if return_path:
        x, ts, path = out
        return Tracked(x, state["log_p"], state["bias"], ts, path, torch.stack(history))
    return Tracked(out, state["log_p"], state["bias"])


def mixture_divergence(gmm, process) -> Callable:
    r"""Exact ``div ∇log p_t(x) = Δ log p_t(x)`` of a Gaussian mixture under a forward process.

    For ``p = Σ w_k N(m_k, diag(v_k))``, with responsibilities r_k and ``a_k = (m_k − x)/v_k``,
    ``Δ log p = Σ_k r_k (‖a_k‖² − Σ_i 1/v_{k,i}) − ‖∇log p‖²``; under the process
    ``p_t(x) = p_σ(x/s)/s^D`` so ``Δ log p_t(x) = Δ log p_σ(x/s)/s²``. Returns ``div(x, t)`` ``(B,)``.
    """

    def div(x, t):
        t64 = torch.as_tensor(t, dtype=torch.float64)
        s, sig = float(process.s(t64)), float(process.sigma(t64))
        y = as_tensor(x, "x", dtype=gmm.means.dtype, device=gmm.means.device) / s
        var = gmm.stds**2 + sig**2                                      # (K, D)
        r = gmm.responsibilities(y, sig)                                # (B, K)
        a_k = (gmm.means[None] - y[:, None]) / var[None]                 # (B, K, D)
        score = (r[:, :, None] * a_k).sum(1)
        lap = (r * ((a_k**2).sum(2) - (1 / var).sum(1)[None])).sum(1) - (score**2).sum(1)
        return (lap / s**2).to(x.dtype)

    return div


def divergence(score: Callable, method: str = "exact", n_probes: int = 1,
               generator: torch.Generator | None = None) -> Callable:
    r"""``div(x, t)`` ``(B,)`` of a score function ``score(x, t)`` ``(B, D)`` at fixed t, through Chapter 4's
    :func:`companion.likelihood.exact_divergence` (``"exact"``: D probe passes) or the mean of ``n_probes``
    :func:`companion.likelihood.hutchinson_divergence` estimates (``"hutchinson"``; fresh Rademacher probes
    at every call, Hutchinson 1989)."""
    from . import likelihood

    if method not in ("exact", "hutchinson"):
        raise ValueError(f"method must be 'exact' or 'hutchinson', got {method!r}")
    check_positive_int(n_probes, "n_probes")

    def div(x, t):
        f = lambda y: score(y, t)  # noqa: E731
        if method == "exact":
            return likelihood.exact_divergence(f, x)
        return likelihood.hutchinson_divergence(f, x, n_probes, generator).mean(0)

    return div


def denoiser_score(D: Callable, process, shape) -> Callable:
    r"""The score ``score(x, t)`` ``(B, prod(shape))`` of a denoiser ``D(x, sigma) -> x0_hat`` (book convention)
    under ``process``: with ``y = x/s(t)``, ``∇log p_t(x) = (D(y, σ(t)) − y)/(s σ²)`` (Tweedie).
    ``shape`` is the image shape, e.g. ``(1, 8, 8)``; points are flattened."""
    shape = tuple(shape)

    def score(x, t):
        t64 = torch.as_tensor(t, dtype=torch.float64)
        s, sig = float(process.s(t64)), float(process.sigma(t64))
        y = x / s
        x0 = D(y.reshape(x.shape[0], *shape), sig).reshape(x.shape[0], -1).to(x.dtype)
        return (x0 - y) / (s * sig**2)

    return score


def prior_log_prob(x, process, t: float = 1.0) -> torch.Tensor:
    """``log N(x; 0, s(t)²σ(t)² I)`` ``(B,)`` (float64): the usual stand-in for p_T at the start of sampling."""
    x = as_tensor(x, "x")
    t64 = torch.as_tensor(t, dtype=torch.float64)
    var = float(process.s(t64) * process.sigma(t64)) ** 2
    x = x.reshape(x.shape[0], -1).double()
    return -0.5 * ((x**2).sum(1) / var + x.shape[1] * math.log(2 * math.pi * var))


def high_density_sample(score: Callable, process, x1, n_steps: int, t_threshold: float, lam: float = 0.0,
                        t_start: float = 1.0, t_end: float = 1e-3, generator: torch.Generator | None = None):
    r"""The high-density sampler of Karczewski et al. (2025): the λ-family (λ = 0: PF-ODE start, 1: SDE start)
    from ``t_start`` down to ``t_threshold``, then the high-density ODE ``dy = [f y − g² ∇log p_t] dt``
    (``reverse.integrate(..., lam=1, noise=0)``; the exact denoising-mode curve for Gaussian data only, see the
    module docstring) down to ``t_end``.

    Both phases use the nodes of one grid ``linspace(t_start, t_end, n_steps + 1)``; the threshold is
    rounded to the nearest node (``t_threshold = t_end`` is ordinary sampling, ``= t_start`` pure mode
    tracking). Returns the points ``(B, D)`` at ``t_end``.
    """
    check_positive_int(n_steps, "n_steps")
    if not (isinstance(t_threshold, (int, float)) and min(t_start, t_end) <= t_threshold <= max(t_start, t_end)):
        raise ValueError(f"t_threshold must be a number between t_end={t_end} and t_start={t_start}, "
                         f"got {t_threshold!r}")
    ts = torch.linspace(t_start, t_end, n_steps + 1, dtype=torch.float64)
    k = int(torch.argmin((ts - t_threshold).abs()))
    x = as_tensor(x1, "x1")
    if k > 0:
        x = reverse.integrate(score, process, x, k, lam=lam, t_start=t_start, t_end=float(ts[k]),
                              generator=generator)
    if k < n_steps:
        x = reverse.integrate(score, process, x, n_steps - k, lam=1.0, noise=0.0, t_start=float(ts[k]),
                              t_end=t_end)
    return x


def gaussian_euler_law(process, mu, tau: float, mean1, var1: float, n_steps: int, t_start: float = 1.0,
                       t_end: float = 1e-3, score_scale: float = 1.0):
    r"""Exact law of the Euler–Maruyama reverse-SDE chain driven by ``score_scale`` times the score of Gaussian
    data ``N(mu, tau² I)`` (possibly *not* the data the chain starts from), started at ``N(mean1, var1 I)``.

    That score is linear, ``s(x, t) = −c (x − s_t mu)/(s_t²(tau² + σ_t²))`` with ``c = score_scale``, so every step
    ``x ← x + (f x − g² s) Δt + g √|Δt| z`` keeps the chain Gaussian, ``N(m_k, V_k I)`` with
    ``m_{k+1} = α m_k + β``, ``V_{k+1} = α² V_k + g²|Δt|``. Returns ``(ts, m, V)`` of shapes
    ``(N + 1,)``, ``(N + 1, D)``, ``(N + 1,)`` (float64): ∇log p^SDE at step k is ``−(x − m_k)/V_k``.
    """
    check_positive_int(n_steps, "n_steps")
    _number(tau, "tau")
    _number(var1, "var1", positive=True)
    _number(score_scale, "score_scale")
    mu = as_tensor(mu, "mu", dtype=torch.float64)
    m = as_tensor(mean1, "mean1", dtype=torch.float64).expand_as(mu).clone()
    V = float(var1)
    ts = torch.linspace(t_start, t_end, n_steps + 1, dtype=torch.float64)
    ms, Vs = [m], [V]
    for k in range(n_steps):
        t, dt = ts[k], float(ts[k + 1] - ts[k])
        s, sig, f, g = (float(v(t)) for v in (process.s, process.sigma, process.f, process.g))
        K = s**2 * (tau**2 + sig**2) / score_scale
        alpha = 1 + (f + g**2 / K) * dt
        m = alpha * m - g**2 * s * mu / K * dt
        V = alpha**2 * V + g**2 * abs(dt)
        ms.append(m)
        Vs.append(V)
    return ts, torch.stack(ms), torch.tensor(Vs, dtype=torch.float64)
