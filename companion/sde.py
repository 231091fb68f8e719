r"""Forward noising processes dx = f(t) x dt + g(t) dW on t ∈ [0, 1].

Every process has the closed-form marginal (lecture "Score and diffusion models"; Song et al. 2021)

.. math::  p_t(x \mid x_0) &= \mathcal N\big(x;\ s(t)\,x_0,\ s(t)^2\sigma(t)^2 I\big),

           s(t) &= e^{\int_0^t f},\qquad \sigma(t)^2 = \int_0^t g(\xi)^2 / s(\xi)^2\, d\xi ,

so ``x_t = s(t) (x0 + σ(t) ε)``: dividing by ``s(t)`` gives the book's canonical variance-exploding
variable ``x0 + σ ε`` that every denoiser ``D(x, sigma)`` takes.

Sign convention: the lecture writes the drift as ``-f(t) x`` with ``f > 0`` ("shrink towards the
origin"); here, as in Song et al., the drift is ``+f(t) x`` and a shrinking process has ``f < 0``.
"""
from __future__ import annotations

import math

import torch

from ._checks import as_tensor, check_positive_int

__all__ = ["ForwardProcess", "VE", "VP"]


def _as_time(t, like: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` as a tensor, checked to lie in [0, 1].

    A Python number becomes a float64 tensor (``vp.s(0.5)`` is as precise as ``vp.s(tensor(0.5,
    dtype=float64))``; a float32 time would carry a relative error of 6e-8 into every coefficient);
    a tensor keeps its dtype, or takes that of ``like``.
    """
    if like is not None and like.is_floating_point():
        dtype = like.dtype
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        dtype = torch.float64
    else:
        dtype = None
    tt = as_tensor(t, "t", dtype=dtype, device=like.device if like is not None else None)
    if not torch.isfinite(tt).all() or (tt < 0).any() or (tt > 1).any():
        raise ValueError(f"t must lie in [0, 1], got values in [{tt.min().item():.4g}, {tt.max().item():.4g}]")
    return tt


class ForwardProcess:
    """Base class: subclasses define ``s``, ``sigma``, ``f``, ``g`` and ``t_of_sigma``.

    All four coefficient functions take ``t`` (float or tensor, values in [0, 1]) and return a
    tensor of the same shape. ``marginal`` and ``simulate`` are shared.
    """

    name = "process"

    def s(self, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma(self, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def f(self, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def g(self, t) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def t_of_sigma(self, sigma) -> torch.Tensor:  # pragma: no cover - abstract
        """The time at which ``sigma(t) == sigma`` (the inverse of the noise schedule)."""
        raise NotImplementedError

    def std(self, t) -> torch.Tensor:
        """Standard deviation of x_t given x0: ``s(t) * sigma(t)``."""
        return self.s(t) * self.sigma(t)

    def marginal(self, x0, t, generator: torch.Generator | None = None):
        """Sample ``x_t ~ p_t(· | x0)`` in closed form.

        Args:
            x0: data, shape ``(B, *dims)``.
            t: a float, a 0-d tensor or a ``(B,)`` tensor of times in [0, 1].
            generator: optional ``torch.Generator`` for the noise.

        Returns:
            ``(x_t, eps)`` with ``x_t = s(t) * (x0 + sigma(t) * eps)``, both shaped like ``x0``.
        """
        x0 = as_tensor(x0, "x0")
        if x0.dim() == 0:
            raise ValueError("x0 must have a batch dimension, got a scalar")
        tt = _as_time(t, x0)
        if tt.dim() == 1 and tt.shape[0] != x0.shape[0]:
            raise ValueError(f"t must be a scalar or have shape ({x0.shape[0]},), got {tuple(tt.shape)}")
        if tt.dim() > 1:
            raise ValueError(f"t must be a scalar or a (B,) tensor, got shape {tuple(tt.shape)}")
        shape = (-1,) + (1,) * (x0.dim() - 1) if tt.dim() == 1 else ()
        s, sig = self.s(tt).reshape(shape), self.sigma(tt).reshape(shape)
        eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
        return s * (x0 + sig * eps), eps

    def simulate(self, x0, n_steps: int, generator: torch.Generator | None = None, t_end: float = 1.0,
                 every: int = 1):
        """Euler–Maruyama simulation of dx = f(t) x dt + g(t) dW from t = 0 to ``t_end``.

        ``x_{k+1} = x_k + f(t_k) x_k Δt + g(t_k) √Δt z_k`` with ``z_k ~ N(0, I)``.

        Args:
            x0: initial points, shape ``(B, *dims)``.
            n_steps: number of equal time steps.
            generator: optional ``torch.Generator``.
            t_end: final time in (0, 1].
            every: keep the state every ``every`` steps (and always the first and the last);
                ``every=n_steps`` keeps only ``x0`` and the final state, so memory does not grow
                with ``n_steps`` (200,000 particles × 3,000 steps would otherwise hold 3,001 copies).

        Returns:
            ``(ts, xs)``: the kept times ``(K,)`` and states ``(K, B, *dims)`` with ``xs[0] == x0`` and
            ``xs[-1]`` the state at ``t_end``; ``K = n_steps + 1`` for ``every=1``.
        """
        x0 = as_tensor(x0, "x0")
        if x0.dim() == 0:
            raise ValueError("x0 must have a batch dimension, got a scalar")
        check_positive_int(n_steps, "n_steps")
        check_positive_int(every, "every")
        if not (0 < t_end <= 1):
            raise ValueError(f"t_end must lie in (0, 1], got {t_end!r}")
        ts = torch.linspace(0.0, t_end, n_steps + 1, dtype=x0.dtype, device=x0.device)
        dt = t_end / n_steps
        kept, xs = [0], [x0]
        x = x0
        for k in range(n_steps):
            z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device="cpu").to(x0.device)
            x = x + self.f(ts[k]) * x * dt + self.g(ts[k]) * math.sqrt(dt) * z
            if (k + 1) % every == 0 or k + 1 == n_steps:
                kept.append(k + 1)
                xs.append(x)
        return ts[kept], torch.stack(xs)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({params})"


class VE(ForwardProcess):
    r"""Variance-exploding process (Song et al. 2021, "SMLD"): f = 0, s = 1.

    ``sigma(t)^2 = sigma_min^2 (r^{2t} - 1)`` with ``r = sigma_max / sigma_min``, which is exactly
    ``∫_0^t g^2`` for ``g(t) = sigma_min r^t sqrt(2 log r)``. Hence ``sigma(0) = 0`` and
    ``sigma(1) = sqrt(sigma_max^2 - sigma_min^2) ≈ sigma_max``.
    """

    name = "VE"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        if not (isinstance(sigma_min, (int, float)) and sigma_min > 0):
            raise ValueError(f"sigma_min must be a positive number, got {sigma_min!r}")
        if not (isinstance(sigma_max, (int, float)) and sigma_max > sigma_min):
            raise ValueError(f"sigma_max must be a number > sigma_min = {sigma_min}, got {sigma_max!r}")
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    @property
    def _log_r(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def s(self, t):
        return torch.ones_like(_as_time(t))

    def f(self, t):
        return torch.zeros_like(_as_time(t))

    def g(self, t):
        t = _as_time(t)
        return self.sigma_min * torch.exp(t * self._log_r) * math.sqrt(2 * self._log_r)

    def sigma(self, t):
        t = _as_time(t)
        return self.sigma_min * torch.sqrt(torch.expm1(2 * t * self._log_r))

    def t_of_sigma(self, sigma):
        sig = as_tensor(sigma, "sigma")
        if (sig < 0).any():
            raise ValueError("sigma must be >= 0")
        return torch.log1p((sig / self.sigma_min) ** 2) / (2 * self._log_r)


class VP(ForwardProcess):
    r"""Variance-preserving process (Ho et al. 2020; Song et al. 2021) with a linear β(t).

    ``β(t) = beta_min + t (beta_max - beta_min)``, ``f(t) = -β(t)/2``, ``g(t) = sqrt(β(t))``.
    With ``B(t) = ∫_0^t β`` the closed forms are ``s(t) = exp(-B(t)/2)`` and
    ``sigma(t)^2 = exp(B(t)) - 1``, so the total variance ``s^2 sigma^2 = 1 - s^2`` of the noise
    plus ``s^2`` of unit-variance data stays 1 (hence "variance preserving").
    """

    name = "VP"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        if not (isinstance(beta_min, (int, float)) and beta_min > 0):
            raise ValueError(f"beta_min must be a positive number, got {beta_min!r}")
        if not (isinstance(beta_max, (int, float)) and beta_max >= beta_min):
            raise ValueError(f"beta_max must be a number >= beta_min = {beta_min}, got {beta_max!r}")
        self.beta_min = float(beta_min)
        self.beta_max = float(beta_max)

    def beta(self, t):
        t = _as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def B(self, t):
        """``∫_0^t β(ξ) dξ``."""
        t = _as_time(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def s(self, t):
        return torch.exp(-0.5 * self.B(t))

    def f(self, t):
        return -0.5 * self.beta(t)

    def g(self, t):
        return torch.sqrt(self.beta(t))

    def sigma(self, t):
        return torch.sqrt(torch.expm1(self.B(t)))

    def t_of_sigma(self, sigma):
        sig = as_tensor(sigma, "sigma")
        if (sig < 0).any():
            raise ValueError("sigma must be >= 0")
        target = torch.log1p(sig**2)  # B(t) = log(1 + sigma^2): solve a t^2/2 + b t - target = 0
        a, b = self.beta_max - self.beta_min, self.beta_min
        if a == 0:
            return target / b
        return (-b + torch.sqrt(b * b + 2 * a * target)) / a
