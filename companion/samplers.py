r"""σ schedules and the samplers of the book: one loop with two parameters (γ, μ), Heun, and guidance.

**Schedules** return a descending 1-D float tensor of noise levels :math:`\sigma_0 > \sigma_1 > \dots`.
By default the last one is 0: ``n`` positive levels then 0, so a sampler takes ``n`` steps and makes
``n`` denoiser calls (NFE = ``len(sigmas) − 1``), the last one at the smallest positive level. With
``append_zero=False`` the schedule ends at its smallest positive level, and the sampler's output is
the iterate there (``n`` levels: ``n − 1`` steps and calls).

**The sampler** :func:`sample` is one update rule, applied on every step including the last; it is
Algorithm 2 of Permenter & Yuan (2024) generalised by a stochasticity parameter μ (the same
two-parameter loop as smalldiffusion's ``samples``). At each step, with
:math:`\hat\varepsilon_t = (x - D(x,\sigma_t))/\sigma_t`,

.. math::
    \bar\varepsilon_t = \gamma\,\hat\varepsilon_t + (1-\gamma)\,\hat\varepsilon_{t+1}, \quad
    \sigma_p = \big(\sigma_{t-1}/\sigma_t^{\mu}\big)^{1/(1-\mu)},

    \eta = \sqrt{\sigma_{t-1}^2 - \sigma_p^2}, \quad
    x \leftarrow x + (\sigma_p - \sigma_t)\,\bar\varepsilon_t + \eta\, z,

where :math:`\hat\varepsilon_{t+1}` is the previous step's (raw) estimate
(:math:`\bar\varepsilon = \hat\varepsilon` at the first step). γ = 1, μ = 0 is DDIM (the Euler step of
the probability-flow ODE); γ = 1, μ = ½ is DDPM's ancestral step (the exact Gaussian posterior
:math:`q(x_{\sigma_{t-1}} \mid x_{\sigma_t}, \hat x_0)`); γ = 2, μ = 0 is Permenter & Yuan's gradient-
estimation sampler. A step to :math:`\sigma_{t-1} = 0` has σ_p = η = 0, i.e. :math:`x \leftarrow
x - \sigma_t\bar\varepsilon_t`: for γ = 1 that is the denoised estimate :math:`D(x,\sigma_t)`
(up to rounding), for γ ≠ 1 it is Algorithm 2's extrapolated step, with no special case.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ._checks import as_tensor, check_positive_int

__all__ = [
    "loglinear", "ddpm", "cosine", "karras", "check_sigmas",
    "step", "sample", "heun", "cfg",
]


# --------------------------------------------------------------------------- schedules
def _check_range(sigma_min, sigma_max):
    for name, v in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    if not sigma_min < sigma_max:
        raise ValueError(f"need sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")


def _finish(sig: torch.Tensor, append_zero: bool) -> torch.Tensor:
    sig = sig.to(torch.get_default_dtype())
    return torch.cat([sig, sig.new_zeros(1)]) if append_zero else sig


def loglinear(n: int, sigma_min: float = 0.02, sigma_max: float = 80.0, append_zero: bool = True) -> torch.Tensor:
    r"""``n`` noise levels evenly spaced in log σ from ``sigma_max`` down to ``sigma_min`` (then 0).

    :math:`\sigma_i = \sigma_{\max} (\sigma_{\min}/\sigma_{\max})^{i/(n-1)}`, i = 0..n−1 (a geometric
    sequence, as in Song & Ermon's NCSN), followed by σ = 0 unless ``append_zero=False``. Returns
    shape ``(n + 1,)`` (``(n,)`` without the zero).

    With the zero, a sampler makes ``n`` calls and its last one, at ``sigma_min``, takes the step to
    σ = 0. Without it, ``n`` levels give ``n − 1`` steps that *end at* ``sigma_min`` with no call
    there: the schedule of Permenter & Yuan's Algorithm 2 (σ_N > … > σ_0 > 0), and what smalldiffusion
    samples from its ``ScheduleLogLinear`` (a 1000-level log-linear table from which ``steps + 1``
    levels are picked, ending at ``sigma_min``; up to that table's rounding). For NFE = N with no
    call at σ_min use ``loglinear(N + 1, sigma_min, sigma_max, append_zero=False)``.
    """
    check_positive_int(n, "n")
    _check_range(sigma_min, sigma_max)
    t = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    return _finish(torch.exp(math.log(sigma_max) + t * (math.log(sigma_min) - math.log(sigma_max))), append_zero)


def karras(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0,
           append_zero: bool = True) -> torch.Tensor:
    r"""EDM's schedule (Karras et al. 2022, eq. 5): evenly spaced in :math:`\sigma^{1/\rho}`, then 0.

    :math:`\sigma_i = \big(\sigma_{\max}^{1/\rho} + \tfrac{i}{n-1}(\sigma_{\min}^{1/\rho} -
    \sigma_{\max}^{1/\rho})\big)^{\rho}`, i = 0..n−1; ρ = 7 concentrates steps at small σ.
    Returns shape ``(n + 1,)``.
    """
    check_positive_int(n, "n")
    _check_range(sigma_min, sigma_max)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not rho > 0:
        raise ValueError(f"rho must be a positive number, got {rho!r}")
    t = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return _finish((a + t * (b - a)) ** rho, append_zero)


def cosine(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, append_zero: bool = True) -> torch.Tensor:
    r"""The cosine schedule in σ: :math:`\sigma(t) = \tan(\pi t/2)`, t evenly spaced, then 0.

    Nichol & Dhariwal's cosine schedule has :math:`\bar\alpha(t) = \cos^2(\tfrac{\pi}{2}\tfrac{t+s}{1+s})`,
    i.e. :math:`\sigma = \sqrt{1/\bar\alpha - 1} = \tan(\tfrac{\pi}{2}\tfrac{t+s}{1+s})`; the offset s
    and the clipping only fix the end points, which here are set by ``sigma_min``/``sigma_max``
    directly: t runs evenly from :math:`\tfrac{2}{\pi}\arctan\sigma_{\max}` to
    :math:`\tfrac{2}{\pi}\arctan\sigma_{\min}`. Returns shape ``(n + 1,)``.
    """
    check_positive_int(n, "n")
    _check_range(sigma_min, sigma_max)
    t = torch.linspace(0, 1, n, dtype=torch.float64) if n > 1 else torch.zeros(1, dtype=torch.float64)
    a, b = math.atan(sigma_max), math.atan(sigma_min)
    return _finish(torch.tan(a + t * (b - a)), append_zero)


def ddpm(n: int, n_train: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02,
         spacing: str = "trailing", append_zero: bool = True) -> torch.Tensor:
    r"""DDPM's discrete noise levels, subsampled uniformly in the timestep ("DDIM" schedule), then 0.

    DDPM (Ho et al. 2020) uses :math:`\beta_t` linear from ``beta_start`` to ``beta_end`` over
    :math:`t = 1, \dots, n_{\mathrm{train}}`, :math:`\bar\alpha_t = \prod_{s\le t}(1-\beta_s)`;
    in the variance-exploding
    convention :math:`\sigma_t = \sqrt{(1-\bar\alpha_t)/\bar\alpha_t}` (σ_1 ≈ 0.01, σ_1000 ≈ 157 for the
    defaults). ``n`` of the T = ``n_train`` timesteps are used, evenly spaced (DDIM's subsampling,
    Song et al. 2021):

    * ``spacing="trailing"`` (default): :math:`t_k = \mathrm{round}(T(1 - k/n))`, k = 0..n−1, so sampling
      starts at t = T (as in smalldiffusion and Lin et al. 2024, Table 2);
    * ``spacing="leading"``: DDIM's original :math:`t = 1 + jT/n` (integer division), j = n−1..0, which
      starts below T (σ_901 ≈ 61 for n = 10) and ends at t = 1 (σ_1 ≈ 0.01).

    With ``n = n_train`` both use every timestep. Returns shape ``(n + 1,)``.
    """
    check_positive_int(n, "n")
    check_positive_int(n_train, "n_train")
    if n > n_train:
        raise ValueError(f"n must be <= n_train = {n_train}, got {n}")
    if not (0 < beta_start <= beta_end < 1):
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got {beta_start!r}, {beta_end!r}")
    betas = torch.linspace(beta_start, beta_end, n_train, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    sig_all = torch.sqrt((1 - alpha_bar) / alpha_bar)  # sig_all[t - 1] = σ_t
    if spacing == "trailing":
        t = torch.round(n_train * (1 - torch.arange(n, dtype=torch.float64) / n)).long()
    elif spacing == "leading":
        t = 1 + torch.arange(n - 1, -1, -1) * (n_train // n)
    else:
        raise ValueError(f"spacing must be 'trailing' or 'leading', got {spacing!r}")
    return _finish(sig_all[t - 1], append_zero)


def check_sigmas(sigmas, name: str = "sigmas") -> torch.Tensor:
    """``sigmas`` as a 1-D tensor of ≥ 2 finite, strictly decreasing values ≥ 0 (only the last may be 0)."""
    s = as_tensor(sigmas, name)
    if s.dim() != 1 or s.shape[0] < 2:
        raise ValueError(f"{name} must be a 1-D tensor of at least 2 noise levels, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite")
    if not (s[1:] < s[:-1]).all():
        raise ValueError(f"{name} must be strictly decreasing, got {s.tolist()[:6]}...")
    if not s[-1] >= 0 or not s[-2] > 0:
        raise ValueError(f"{name} must be > 0 except possibly the last, which may be 0; got last {s[-1].item()!r}")
    return s


# --------------------------------------------------------------------------- one step
def step(x: torch.Tensor, eps: torch.Tensor, sigma: float, sigma_next: float, mu: float = 0.0,
         z: torch.Tensor | None = None) -> torch.Tensor:
    r"""One update of :func:`sample` given the (averaged) noise estimate ``eps`` = :math:`\bar\varepsilon`.

    :math:`\sigma_p = (\sigma_{\rm next}/\sigma^{\mu})^{1/(1-\mu)}`, :math:`\eta = \sqrt{\sigma_{\rm next}^2
    - \sigma_p^2}`, returns :math:`x + (\sigma_p - \sigma)\,\bar\varepsilon + \eta z` (Permenter & Yuan
    2024). ``x``, ``eps``, ``z``: same shape; ``z`` (standard normal) is needed only when η > 0.
    μ = 0: DDIM (η = 0); μ = ½: DDPM (σ_p = σ_next²/σ).
    """
    if not 0 <= mu < 1:
        raise ValueError(f"mu must be in [0, 1), got {mu!r}")
    if not sigma > sigma_next >= 0:
        raise ValueError(f"need sigma > sigma_next >= 0, got sigma={sigma!r}, sigma_next={sigma_next!r}")
    sigma_p = (sigma_next / sigma**mu) ** (1 / (1 - mu))
    eta = math.sqrt(max(sigma_next**2 - sigma_p**2, 0.0))
    x = x + (sigma_p - sigma) * eps
    if eta > 0:
        if z is None:
            raise ValueError(f"z (standard normal noise) is needed when eta > 0 (mu={mu!r})")
        x = x + eta * z
    return x


def _randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else x.device
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=dev).to(x.device)


def _progress(n: int, progress: bool, desc: str):
    if progress:
        from tqdm.auto import tqdm

        return tqdm(range(n), desc=desc)
    return range(n)


def sample(D: Callable, sigmas, x, gamma: float = 1.0, mu: float = 0.0,
           generator: torch.Generator | None = None, progress: bool = False, return_path: bool = False):
    r"""Sample by iterating :func:`step` over consecutive pairs of ``sigmas`` (Permenter & Yuan 2024, Alg. 2).

    For each pair (σ, σ_next), the last included: :math:`\hat\varepsilon = (x - D(x, \sigma))/\sigma`;
    :math:`\bar\varepsilon = \gamma\hat\varepsilon + (1-\gamma)\hat\varepsilon_{\rm prev}` (just
    :math:`\hat\varepsilon` at the first step); then ``x = step(x, ε̄, σ, σ_next, mu, z)``. The same
    rule applies when σ_next = 0 (then x ← x − σ ε̄, which for γ = 1 is D(x, σ) up to rounding).
    NFE = ``len(sigmas) − 1``.

    γ = 1, μ = 0: DDIM (deterministic). γ = 1, μ = ½: DDPM (ancestral). γ = 2, μ = 0: gradient estimation.

    Args:
        D: denoiser ``D(x, sigma) -> x0_hat`` (``sigma`` is passed as a Python float).
        sigmas: descending 1-D schedule (see :func:`check_sigmas`), e.g. from :func:`loglinear`.
        x: the starting point, ``(B, *shape)``, typically ``sigmas[0] * randn``.
        gamma: the ε-averaging parameter γ (> 0).
        mu: the stochasticity parameter μ ∈ [0, 1).
        generator: ``torch.Generator`` for the noise z (used only where η > 0).
        progress: show a tqdm progress bar.
        return_path: also return the iterates, a tensor ``(len(sigmas), B, *shape)`` starting with ``x``.

    Returns:
        ``x0`` of shape ``(B, *shape)`` (and the path if asked).
    """
    sig = check_sigmas(sigmas).tolist()
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}")
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 <= mu < 1:
        raise ValueError(f"mu must be a number in [0, 1), got {mu!r}")
    x = as_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a scalar")
    path = [x] if return_path else None
    eps_prev = None
    for i in _progress(len(sig) - 1, progress, "sampling"):
        s, s_next = sig[i], sig[i + 1]
        eps = (x - D(x, s)) / s
        eps_bar = eps if eps_prev is None else gamma * eps + (1 - gamma) * eps_prev
        z = _randn_like(x, generator) if mu > 0 and s_next > 0 else None
        x = step(x, eps_bar, s, s_next, mu, z)
        eps_prev = eps
        if return_path:
            path.append(x)
    return (x, torch.stack(path)) if return_path else x


def heun(D: Callable, sigmas, x, progress: bool = False, return_path: bool = False):
    r"""EDM's deterministic 2nd-order sampler (Karras et al. 2022, Algorithm 1 without churn).

    The probability-flow ODE :math:`dx/d\sigma = (x - D(x,\sigma))/\sigma`, integrated with Heun's
    method (trapezoidal correction), falling back to an Euler step when σ_next = 0.
    NFE = ``2(len(sigmas) − 1) − 1`` when the schedule ends with 0, else ``2(len(sigmas) − 1)``.

    Args/Returns: as :func:`sample`.
    """
    sig = check_sigmas(sigmas).tolist()
    x = as_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a scalar")
    path = [x] if return_path else None
    for i in _progress(len(sig) - 1, progress, "heun"):
        s, s_next = sig[i], sig[i + 1]
        d = (x - D(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d_next = (x_next - D(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d_next)
        x = x_next
        if return_path:
            path.append(x)
    return (x, torch.stack(path)) if return_path else x


# --------------------------------------------------------------------------- guidance
def cfg(D: Callable, labels, w: float) -> Callable:
    r"""Classifier-free guidance (Ho & Salimans 2022): a denoiser ``(x, sigma) -> x0_hat``.

    :math:`D_w(x,\sigma) = D(x,\sigma,\varnothing) + w\,[D(x,\sigma,c) - D(x,\sigma,\varnothing)]`, the
    lecture's form: w = 0 is the unconditional model, w = 1 the conditional one (only that model is
    called then), w > 1 extrapolates away from the unconditional prediction. ``D(x, sigma, None)`` must
    be the unconditional (null-label) prediction, as for :class:`companion.nets.Denoiser` and
    :class:`companion.denoisers.IdealDenoiser`.

    Args:
        D: a conditional denoiser ``D(x, sigma, labels)``.
        labels: ``(B,)`` integer class labels c (the batch size of the ``x`` it will be called with).
        w: guidance weight (a finite number).
    """
    if not callable(D):
        raise TypeError(f"D must be callable, got {type(D).__name__}")
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
        raise ValueError(f"w must be a finite number, got {w!r}")
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.is_floating_point():
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")

    def guided(x, sigma):
        if x.shape[0] != labels.shape[0]:
            raise ValueError(f"x has batch size {x.shape[0]} but labels has {labels.shape[0]}")
        if w == 1:
            return D(x, sigma, labels.to(x.device))
        d_u = D(x, sigma, None)
        if w == 0:
            return d_u
        return d_u + w * (D(x, sigma, labels.to(x.device)) - d_u)

    return guided
