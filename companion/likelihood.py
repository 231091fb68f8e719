r"""Likelihoods of diffusion models: PF-ODE log-likelihood, continuous-time ELBO, bits per dimension,
and the KL ≤ ∫ΔMSE σ⁻³ dσ bound (Chapter 4; Chapter 5 builds on it).

Everything is written for a denoiser ``D(x, sigma) -> x0_hat`` in the book's convention
``x_σ = x0 + σ ε``; ``x`` is a batch of points ``(B, D)`` or images ``(B, C, H, W)`` and
"dim" below is the number of coordinates of one element (``D`` or ``C·H·W``).

**PF-ODE likelihood** (Song et al. 2021; Chen et al. 2018's instantaneous change of variables).
In the variable ``s = log σ`` the probability-flow ODE ``dx/dσ = −σ ∇ log p_σ = (x − D(x, σ))/σ`` reads

.. math::  \frac{dx}{ds} = v(x, s) = x - D(x, e^s),

           \frac{d}{ds}\log p_{e^s}(x_s) = -\nabla\!\cdot v = -\bigl(\dim - \operatorname{tr} \partial_x D\bigr),

so ``log p_{σ_min}(x) = log p_{σ_max}(x_{σ_max}) + ∫_{log σ_min}^{log σ_max} ∇·v ds``. The divergence
is exact (one reverse-mode pass per coordinate, batched) or Hutchinson's estimate ``u^T J u`` with
Rademacher probes ``u`` held fixed along the trajectory (Grathwohl et al. 2019).

**ELBO** (Kingma et al. 2021, VDM, in the σ form): with ``SNR = σ⁻²``,

.. math::  \log p(x_0) \ge -\underbrace{\frac{\|x_0\|^2}{2\sigma_{\max}^2}}_{\text{prior}}
           - \underbrace{\int_{\sigma_{\min}}^{\sigma_{\max}} \mathbb E_\varepsilon
             \|x_0 - D(x_0 + \sigma\varepsilon, \sigma)\|^2 \sigma^{-3}\, d\sigma}_{\text{diffusion}}

           \qquad + \underbrace{\mathbb E_\varepsilon \log p(x_0 \mid x_0 + \sigma_{\min}\varepsilon)}_{\text{reconstruction}}.

**KL bound** (Song et al. 2021, Theorem 1; Kadkhodaie et al. 2024, eq. 3):
``KL(p ‖ p_θ) ≤ ∫ (MSE(D_θ, σ) − MSE(D*, σ)) σ⁻³ dσ`` with MSE summed over coordinates.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from ._checks import as_tensor, check_batch, check_positive_int

__all__ = [
    "jacobian_quadratic_forms", "exact_divergence", "hutchinson_divergence", "rademacher",
    "ODELikelihood", "pf_ode_log_likelihood", "gaussian_log_prob", "dequantize",
    "Estimate", "ELBO", "diffusion_loss", "diffusion_loss_t", "elbo", "discrete_decoder_log_prob",
    "bits_per_dim", "kl_bound", "FIXED_METHODS", "ADAPTIVE_METHODS", "SIGMA_LAWS",
]

#: explicit Runge–Kutta tableaus (a, b, c) of the fixed-step integrators
_TABLEAUS = {
    "euler": ([[]], [1.0], [0.0]),
    "heun": ([[], [1.0]], [0.5, 0.5], [0.0, 1.0]),
    "rk4": ([[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]], [1 / 6, 1 / 3, 1 / 3, 1 / 6], [0.0, 0.5, 0.5, 1.0]),
}
FIXED_METHODS = tuple(_TABLEAUS)
ADAPTIVE_METHODS = ("RK45", "RK23", "DOP853")
SIGMA_LAWS = ("loguniform", "lognormal", "quadrature")


# ------------------------------------------------------------------------------------------ checks
def _check_data(x, name="x") -> torch.Tensor:
    x = check_batch(x, name)
    if x.dim() < 2 or x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"{name} must have shape (B, D) or (B, C, H, W) with B >= 1, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite")
    return x


def _check_scale(v, name) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
    return float(v)


def _check_range(sigma_min, sigma_max):
    lo, hi = _check_scale(sigma_min, "sigma_min"), _check_scale(sigma_max, "sigma_max")
    if lo >= hi:
        raise ValueError(f"sigma_min must be < sigma_max, got sigma_min={sigma_min!r} >= sigma_max={sigma_max!r}")
    return lo, hi


def _call(denoiser, x, sigma, name="denoiser"):
    out = denoiser(x, sigma)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} must return a tensor of the input's shape {tuple(x.shape)}, got {got}")
    return out


def _sqnorm(x):
    return x.flatten(1).pow(2).sum(1)


# -------------------------------------------------------------------------------------- divergences
def jacobian_quadratic_forms(f: Callable, x: torch.Tensor, probes: torch.Tensor, chunk: int | None = None):
    r"""``u^T J_f(x) u`` for each probe ``u``, with one reverse-mode pass on a batch of ``P·B`` copies.

    Args:
        f: a map acting row by row, ``(N, *shape) -> (N, *shape)`` for any N (e.g. ``lambda y: D(y, σ)``
            at a scalar σ).
        x: ``(B, *shape)``.
        probes: ``(P, B, *shape)``.
        chunk: at most this many probes per pass (memory); all at once when None.

    Returns:
        ``(quad, fx)``: quadratic forms ``(P, B)`` and ``f(x)`` ``(B, *shape)`` (detached).
    With the P = dim basis vectors as probes, ``quad.sum(0)`` is the exact trace of the Jacobian.
    """
    P, B = probes.shape[:2]
    chunk = P if chunk is None else check_positive_int(chunk, "chunk")
    quads, fx = [], None
    for start in range(0, P, chunk):
        u = probes[start:start + chunk]
        p = u.shape[0]
        with torch.enable_grad():
            y = x.detach().unsqueeze(0).expand(p, *x.shape).reshape(p * B, *x.shape[1:]).requires_grad_(True)
            out = f(y)
            if out.shape != y.shape:
                raise ValueError(f"f must return its input's shape {tuple(y.shape)}, got {tuple(out.shape)}")
            (g,) = torch.autograd.grad(out, y, grad_outputs=u.reshape(y.shape))
        quads.append((g.reshape(p, B, -1) * u.reshape(p, B, -1)).sum(-1).detach())
        if fx is None:
            fx = out.detach()[:B]
    return torch.cat(quads), fx


def _basis(x):
    d = x[0].numel()
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    return eye.reshape(d, 1, *x.shape[1:]).expand(d, x.shape[0], *x.shape[1:])


def exact_divergence(f: Callable, x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """The exact divergence ``tr J_f(x)`` ``(B,)`` of a row-wise map f, from ``dim`` basis-vector probes
    (:func:`jacobian_quadratic_forms`); cost: ``dim`` batched passes (``chunk`` at a time)."""
    x = _check_data(x)
    return jacobian_quadratic_forms(f, x, _basis(x), chunk)[0].sum(0)


def rademacher(n_probes: int, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n_probes, *x.shape)`` independent ±1 entries (Rademacher probes), x's dtype and device."""
    n_probes = check_positive_int(n_probes, "n_probes")
    bits = torch.randint(0, 2, (n_probes, *x.shape), generator=generator)
    return (2 * bits - 1).to(dtype=x.dtype, device=x.device)


def hutchinson_divergence(f: Callable, x: torch.Tensor, n_probes: int = 1, generator=None) -> torch.Tensor:
    """Hutchinson's estimates ``u^T J_f(x) u`` ``(n_probes, B)`` with Rademacher ``u``: each row is an
    unbiased estimate of ``tr J_f(x)`` (Hutchinson 1989); average over rows, standard error
    ``std/sqrt(n_probes)``."""
    x = _check_data(x)
    return jacobian_quadratic_forms(f, x, rademacher(n_probes, x, generator))[0]


# ------------------------------------------------------------------------------------- PF-ODE
class ODELikelihood(NamedTuple):
    """What :func:`pf_ode_log_likelihood` returns (all ``(B,)`` unless stated).

    ``log_prob``: estimate of ``log p_{σ_min}(x)`` (nats); ``stderr``: its Hutchinson standard error
    (0 for the exact divergence, NaN with one probe); ``log_prior``: ``log p_{σ_max}(x_T)``;
    ``delta``: ``∫ ∇·v ds`` per probe ``(P, B)``; ``x_T``: the end point ``(B, *shape)``; ``nfe``: number
    of divergence evaluations (each costs ``P`` denoiser passes forward and backward).
    """

    log_prob: torch.Tensor
    stderr: torch.Tensor
    log_prior: torch.Tensor
    delta: torch.Tensor
    x_T: torch.Tensor
    nfe: int


def gaussian_log_prob(x: torch.Tensor, std: float) -> torch.Tensor:
    """``log N(x; 0, std² I)`` summed over all coordinates, ``(B,)``: the VE prior at σ_max."""
    std, d = _check_scale(std, "std"), x[0].numel()
    return -0.5 * _sqnorm(x) / std**2 - 0.5 * d * math.log(2 * math.pi * std**2)


def pf_ode_log_likelihood(denoiser: Callable, x, sigma_min: float, sigma_max: float, steps: int = 64,
                          method: str = "heun", divergence: str = "exact", n_probes: int = 1,
                          prior: Callable | None = None, rtol: float = 1e-5, atol: float = 1e-5,
                          chunk: int | None = None, generator: torch.Generator | None = None,
                          progress: bool = False) -> ODELikelihood:
    r"""``log p_{σ_min}(x)`` of a diffusion model by the probability-flow ODE (instantaneous change of variables).

    Integrates ``dx/ds = x − D(x, e^s)`` and ``dℓ/ds = ∇·v = dim − tr ∂_x D`` from ``s = log σ_min``
    (where ``x`` is given) to ``log σ_max`` and returns ``log prior(x_T) + ℓ`` (module docstring;
    Song et al. 2021, eq. 39, in log σ).

    Args:
        denoiser: ``D(x, sigma) -> x0_hat`` with a float sigma; batch elements must not interact.
        x: ``(B, D)`` or ``(B, C, H, W)`` points at noise level σ_min (for data on a grid, dequantize
            first: :func:`dequantize`). Its dtype is used throughout (float64 for ground truth).
        sigma_min, sigma_max: the integration range, ``0 < sigma_min < sigma_max``.
        steps: number of steps, uniform in log σ, of a fixed-step method.
        method: ``"euler"``, ``"heun"``, ``"rk4"`` (fixed step) or scipy's adaptive ``"RK45"``, ``"RK23"``,
            ``"DOP853"`` (``scipy.integrate.solve_ivp`` with ``rtol``, ``atol``, in float64).
        divergence: ``"exact"`` (``dim`` probe passes per evaluation) or ``"hutchinson"`` (``n_probes``
            Rademacher probes, fixed along the trajectory).
        prior: ``prior(x_T) -> (B,)`` log-density at σ_max; default ``N(0, σ_max² I)``.
        chunk: probes per backward pass (memory); generator: for the probes; progress: tqdm bar.

    Returns:
        :class:`ODELikelihood`.
    """
    x = _check_data(x)
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    if divergence not in ("exact", "hutchinson"):
        raise ValueError(f"divergence must be 'exact' or 'hutchinson', got {divergence!r}")
    if method not in FIXED_METHODS + ADAPTIVE_METHODS:
        raise ValueError(f"method must be one of {FIXED_METHODS + ADAPTIVE_METHODS}, got {method!r}")
    steps = check_positive_int(steps, "steps")
    probes = _basis(x) if divergence == "exact" else rademacher(n_probes, x, generator)
    nfe = 0

    def field(s, y):  # (v, divergence per probe (P', B)); the exact trace is summed into one row
        nonlocal nfe
        nfe += 1
        sig = math.exp(s)
        quad, fy = jacobian_quadratic_forms(lambda z: z - _call(denoiser, z, sig), y, probes, chunk)
        if divergence == "exact":
            quad = quad.sum(0, keepdim=True)
        return fy, quad  # fy = f(y) = v(y, s)

    s0, s1 = math.log(sigma_min), math.log(sigma_max)
    if method in FIXED_METHODS:
        a, b, c = _TABLEAUS[method]
        h = (s1 - s0) / steps
        y, ell = x.detach().clone(), 0.0
        for i in tqdm(range(steps), desc="PF-ODE", disable=not progress, leave=False):
            ks = []
            for j in range(len(b)):
                yj = y + h * sum(a[j][m] * ks[m][0] for m in range(j)) if j else y
                ks.append(field(s0 + (i + c[j]) * h, yj))
            y = y + h * sum(bj * k[0] for bj, k in zip(b, ks))
            ell = ell + h * sum(bj * k[1] for bj, k in zip(b, ks))
    else:
        y, ell = _solve_adaptive(field, x, s0, s1, method, rtol, atol, probes.shape[0] if divergence != "exact"
                                 else 1)
    log_prior = (prior or (lambda z: gaussian_log_prob(z, sigma_max)))(y)
    P = ell.shape[0]
    stderr = ell.std(0) / math.sqrt(P) if P > 1 else torch.full_like(log_prior, 0.0 if divergence == "exact"
                                                                       else float("nan"))
    return ODELikelihood(log_prior + ell.mean(0), stderr, log_prior, ell, y, nfe)


def _solve_adaptive(field, x, s0, s1, method, rtol, atol, P):
    import numpy as np
    from scipy.integrate import solve_ivp

    shape, n = x.shape, x.numel()

    def rhs(s, state):
        y = torch.as_tensor(state[:n], dtype=x.dtype, device=x.device).reshape(shape)
        v, quad = field(s, y)
        return np.concatenate([v.detach().double().cpu().numpy().ravel(), quad.double().cpu().numpy().ravel()])

    state0 = np.concatenate([x.detach().double().cpu().numpy().ravel(), np.zeros(P * shape[0])])
    sol = solve_ivp(rhs, (s0, s1), state0, method=method, rtol=rtol, atol=atol)
    if not sol.success:  # pragma: no cover - message only
        raise RuntimeError(f"solve_ivp failed: {sol.message}")
    end = torch.as_tensor(sol.y[:, -1], dtype=x.dtype, device=x.device)
    return end[:n].reshape(shape), end[n:].reshape(P, shape[0])


def dequantize(x, bin_width: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform dequantization: ``x + bin_width (u − ½)``, u ~ U[0, 1)^dim, same shape as ``x``.

    For data on a grid of spacing Δ, ``log P(x) ≥ E_u log p(x + Δ(u − ½)) + dim·log Δ`` (Jensen; Theis et al.
    2016): a continuous density evaluated on dequantized data bounds the discrete likelihood.
    """
    x, bin_width = _check_data(x), _check_scale(bin_width, "bin_width")
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
    return x + bin_width * (u - 0.5)


# ------------------------------------------------------------------------------------------- ELBO
class Estimate(NamedTuple):
    """A Monte Carlo estimate: ``value`` and its standard error ``stderr`` (same shapes)."""

    value: torch.Tensor
    stderr: torch.Tensor


class ELBO(NamedTuple):
    """What :func:`elbo` returns, all ``(B,)`` and in nats: ``elbo = −prior − diffusion + reconstruction``
    with standard error ``stderr``; ``prior`` = KL(N(x0, σ_max² I) ‖ N(0, σ_max² I)) = ‖x0‖²/(2σ_max²);
    ``diffusion`` = ∫ E‖x0 − D‖² σ⁻³ dσ; ``reconstruction`` = E log p(x0 | x0 + σ_min ε)."""

    elbo: torch.Tensor
    stderr: torch.Tensor
    prior: torch.Tensor
    diffusion: Estimate
    reconstruction: Estimate


def _sigma_nodes(R, J, B, sigma_min, sigma_max, law, P_mean, P_std, generator, dtype, device):
    """σ ``(R, J, B)`` and weights ``(R, J, B)`` with ``Σ_j w g(σ_j) ≈ ∫ g(σ) dσ`` for each repetition r."""
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    if law == "quadrature":  # Gauss–Legendre in log σ; dσ = σ ds
        import numpy as np

        nodes, weights = np.polynomial.legendre.leggauss(J)
        s = torch.as_tensor(0.5 * (hi + lo) + 0.5 * (hi - lo) * nodes, dtype=dtype)
        sig = torch.exp(s)
        w = torch.as_tensor(0.5 * (hi - lo) * weights, dtype=dtype) * sig
        return sig.reshape(1, J, 1).expand(R, J, B).to(device), w.reshape(1, J, 1).expand(R, J, B).to(device)
    u = torch.rand(R, J, B, generator=generator, dtype=dtype)
    if law == "loguniform":  # q(σ) = 1/(σ (hi − lo))
        sig = torch.exp(lo + (hi - lo) * u)
        return sig.to(device), (sig * (hi - lo)).to(device)
    # truncated log-normal on [σ_min, σ_max] (the training law of Karras et al. 2022), by inverse CDF
    normal = torch.distributions.Normal(torch.tensor(P_mean, dtype=dtype), torch.tensor(P_std, dtype=dtype))
    a, b = normal.cdf(torch.tensor(lo, dtype=dtype)), normal.cdf(torch.tensor(hi, dtype=dtype))
    s = normal.icdf((a + (b - a) * u).clamp(1e-12, 1 - 1e-12)).clamp(lo, hi)
    sig = torch.exp(s)
    return sig.to(device), (sig * (b - a) / normal.log_prob(s).exp()).to(device)


def _sigma_integral(g: Callable, x0, sigma_min, sigma_max, n_samples, sigma_law, n_nodes, P_mean, P_std,
                    chunk, generator, progress, desc) -> torch.Tensor:
    """``n_samples`` independent estimates ``(n_samples, B)`` of ``∫ g(x0, x0 + σε, σ) σ⁻³ dσ`` per point.

    ``g(x0, x, sigma) -> (N,)`` acts on N = rows of a chunk (σ a ``(N,)`` tensor). Each estimate draws σ
    from ``sigma_law`` (one node, importance weight 1/q(σ)) or uses ``n_nodes`` Gauss–Legendre nodes in
    log σ ("quadrature"), with fresh ε at every node.
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    if sigma_law not in SIGMA_LAWS:
        raise ValueError(f"sigma_law must be one of {SIGMA_LAWS}, got {sigma_law!r}")
    if sigma_law == "lognormal" and not P_std > 0:
        raise ValueError(f"P_std must be > 0, got {P_std!r}")
    J = check_positive_int(n_nodes, "n_nodes") if sigma_law == "quadrature" else 1
    B = x0.shape[0]
    sig, w = _sigma_nodes(n_samples, J, B, sigma_min, sigma_max, sigma_law, P_mean, P_std, generator,
                          x0.dtype, x0.device)
    view = (-1,) + (1,) * (x0.dim() - 1)
    per = max(1, check_positive_int(chunk, "chunk") // (J * B))
    out = []
    for r in tqdm(range(0, n_samples, per), desc=desc, disable=not progress, leave=False):
        s = sig[r:r + per].reshape(-1)
        x0r = x0.unsqueeze(0).expand(s.shape[0] // B, *x0.shape).reshape(-1, *x0.shape[1:])
        eps = torch.randn(x0r.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        vals = g(x0r, x0r + s.reshape(view) * eps, s) * w[r:r + per].reshape(-1) / s**3
        out.append(vals.reshape(-1, J, B).sum(1))
    return torch.cat(out)


def _mse(denoiser, name="denoiser"):
    return lambda x0, x, s: _sqnorm(x0 - _call(denoiser, x, s, name))


def diffusion_loss(denoiser: Callable, x0, sigma_min: float, sigma_max: float, n_samples: int = 64,
                   sigma_law: str = "loguniform", n_nodes: int = 32, P_mean: float = -1.2, P_std: float = 1.2,
                   chunk: int = 8192, generator: torch.Generator | None = None,
                   progress: bool = False) -> Estimate:
    r"""The diffusion term of the ELBO, ``∫_{σ_min}^{σ_max} E_ε ‖x0 − D(x0 + σε, σ)‖² σ⁻³ dσ`` per point.

    Kingma et al. 2021 (VDM), eq. 17, ``−½ ∫ SNR'(t) ‖x − x̂‖² dt``, with ``SNR = σ⁻²``.

    Args:
        denoiser: ``D(x, sigma) -> x0_hat`` accepting a ``(N,)`` tensor of σ's.
        x0: clean data ``(B, D)`` or ``(B, C, H, W)``.
        sigma_min, sigma_max: the range, ``0 < sigma_min < sigma_max``.
        n_samples: Monte Carlo draws per point (the standard error comes from their spread).
        sigma_law: importance law of σ: ``"loguniform"`` (q ∝ 1/σ), ``"lognormal"`` (``log σ ~
            N(P_mean, P_std²)`` truncated to the range) or ``"quadrature"`` (``n_nodes`` Gauss–Legendre
            nodes in log σ per draw; ε stays random).
        chunk: rows per denoiser call. generator: for σ and ε. progress: tqdm bar.

    Returns:
        :class:`Estimate` of shapes ``(B,)``.
    """
    x0 = _check_data(x0, "x0")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    est = _sigma_integral(_mse(denoiser), x0, sigma_min, sigma_max, n_samples, sigma_law, n_nodes, P_mean,
                          P_std, chunk, generator, progress, "ELBO")
    return _estimate(est)


def _estimate(draws):
    n = draws.shape[0]
    se = draws.std(0) / math.sqrt(n) if n > 1 else torch.full_like(draws[0], float("nan"))
    return Estimate(draws.mean(0), se)


def diffusion_loss_t(denoiser: Callable, x0, process, sigma_min: float, sigma_max: float, n_samples: int = 64,
                     generator: torch.Generator | None = None) -> Estimate:
    r"""The same diffusion term in VDM's t form, ``−½ ∫_{t_0}^{t_1} SNR'(t) E‖x0 − x̂(z_t; t)‖² dt``.

    ``z_t = s(t)(x0 + σ(t) ε)`` for a forward ``process`` of :mod:`companion.sde` (VE or VP), ``x̂ =
    D(z_t/s(t), σ(t))``, ``SNR(t) = s²/(s σ)² = σ(t)⁻²`` (its t-derivative by autograd), t uniform on
    ``[t(σ_min), t(σ_max)]``. Equal to :func:`diffusion_loss` by the change of variables σ = σ(t): a
    check of the σ form. Returns :class:`Estimate` ``(B,)``.
    """
    x0 = _check_data(x0, "x0")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    n_samples = check_positive_int(n_samples, "n_samples")
    t0, t1 = (float(process.t_of_sigma(v)) for v in (sigma_min, sigma_max))
    if not 0 <= t0 < t1 <= 1:
        raise ValueError(f"[sigma_min, sigma_max] must lie in the process's range, got t in [{t0:.4g}, {t1:.4g}]")
    B = x0.shape[0]
    t = (t0 + (t1 - t0) * torch.rand(n_samples * B, generator=generator, dtype=x0.dtype)).requires_grad_(True)
    with torch.enable_grad():
        sig = process.sigma(t)
        (dsig,) = torch.autograd.grad(sig.sum(), t)
    sig, scale = sig.detach().to(x0.device), process.s(t.detach()).to(x0.device)
    snr_rate = (-2 * dsig / sig.cpu() ** 3).to(x0.device)  # d/dt σ⁻²
    view = (-1,) + (1,) * (x0.dim() - 1)
    x0r = x0.repeat(n_samples, *([1] * (x0.dim() - 1)))
    eps = torch.randn(x0r.shape, generator=generator, dtype=x0.dtype).to(x0.device)
    z = scale.reshape(view) * (x0r + sig.reshape(view) * eps)
    x0_hat = _call(denoiser, z / scale.reshape(view), sig)
    vals = -0.5 * snr_rate * _sqnorm(x0r - x0_hat) * (t1 - t0)
    return _estimate(vals.reshape(n_samples, B))


def discrete_decoder_log_prob(x0, z, sigma: float, levels) -> torch.Tensor:
    r"""``log p(x0 | z)`` ``(B,)`` of VDM's factorised discrete decoder (Kingma et al. 2021, App. A.1).

    For each coordinate, ``p(x0 = c_k | z) ∝ exp(−(z − c_k)²/(2σ²))`` over the grid ``levels`` ``(K,)``
    (e.g. 17 values in [−1, 1] for the digits, 256 for CIFAR-10); ``x0`` must lie on the grid.
    """
    x0, z, sigma = _check_data(x0, "x0"), _check_data(z, "z"), _check_scale(sigma, "sigma")
    if z.shape != x0.shape:
        raise ValueError(f"z must have x0's shape {tuple(x0.shape)}, got {tuple(z.shape)}")
    c = as_tensor(levels, "levels", dtype=x0.dtype, device=x0.device)
    if c.dim() != 1 or c.shape[0] < 2:
        raise ValueError(f"levels must be a (K,) tensor with K >= 2, got shape {tuple(c.shape)}")
    dist, idx = (x0.unsqueeze(-1) - c).abs().min(-1)
    if (dist > 1e-4 * (c.max() - c.min())).any():
        raise ValueError("x0 must lie on the grid of levels")
    logits = -((z.unsqueeze(-1) - c) ** 2) / (2 * sigma**2)
    return torch.log_softmax(logits, -1).gather(-1, idx.unsqueeze(-1)).flatten(1).sum(1)


def elbo(denoiser: Callable, x0, sigma_min: float, sigma_max: float, n_samples: int = 64,
         sigma_law: str = "loguniform", levels=None, n_nodes: int = 32, P_mean: float = -1.2,
         P_std: float = 1.2, chunk: int = 8192, generator: torch.Generator | None = None,
         progress: bool = False) -> ELBO:
    r"""The continuous-time ELBO ``≤ log p(x0)`` of a diffusion model, per point, in nats (module docstring).

    Prior term ``‖x0‖²/(2σ_max²)`` (the VE prior N(0, σ_max² I)); diffusion term :func:`diffusion_loss`
    (arguments as there); reconstruction at σ_min: with ``levels`` (data on a grid) the discrete decoder
    :func:`discrete_decoder_log_prob` averaged over ``n_samples`` draws, so the ELBO bounds the log
    *probability* of the grid point; without, the Gaussian decoder ``N(x0; z, σ_min² I)`` whose mean is the
    closed form ``−dim/2 · log(2πe σ_min²)``, so the ELBO bounds a log *density*.

    Returns:
        :class:`ELBO`, all ``(B,)``.
    """
    x0 = _check_data(x0, "x0")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    diff = diffusion_loss(denoiser, x0, sigma_min, sigma_max, n_samples, sigma_law, n_nodes, P_mean, P_std,
                          chunk, generator, progress)
    prior = 0.5 * _sqnorm(x0) / sigma_max**2
    if levels is None:
        value = torch.full_like(prior, -0.5 * x0[0].numel() * math.log(2 * math.pi * math.e * sigma_min**2))
        rec = Estimate(value, torch.zeros_like(prior))
    else:
        x0r = x0.repeat(n_samples, *([1] * (x0.dim() - 1)))
        z = x0r + sigma_min * torch.randn(x0r.shape, generator=generator, dtype=x0.dtype).to(x0.device)
        rec = _estimate(discrete_decoder_log_prob(x0r, z, sigma_min, levels).reshape(n_samples, -1))
    value = -prior - diff.value + rec.value
    return ELBO(value, torch.sqrt(diff.stderr**2 + rec.stderr**2), prior, diff, rec)


def bits_per_dim(log_likelihood, dim: int, bin_width: float | None = None):
    r"""Bits per dimension ``−(log L + dim·log Δ)/(dim ln 2)`` of a log-likelihood in nats.

    Without ``bin_width``, ``log_likelihood`` is a log *probability* of a grid point (a discrete decoder,
    a categorical model). With it, it is a log *density* of uniformly dequantized data on a grid of spacing
    Δ = ``bin_width`` and the result bounds the discrete bits/dim from above (Jensen). The constant is
    ``log₂(1/Δ)`` per dimension: 7 bits for 256 levels mapped to [−1, 1] (Δ = 2/256), 3 bits for the digits'
    17 levels (Δ = 1/8). Works on floats and tensors.
    """
    dim = check_positive_int(dim, "dim")
    shift = 0.0
    if bin_width is not None:
        shift = dim * math.log(_check_scale(bin_width, "bin_width"))
    return -(log_likelihood + shift) / (dim * math.log(2))


def kl_bound(denoiser: Callable, true_denoiser: Callable, x0, sigma_min: float, sigma_max: float,
             n_samples: int = 1, sigma_law: str = "loguniform", n_nodes: int = 32, P_mean: float = -1.2,
             P_std: float = 1.2, estimator: str = "gap", chunk: int = 8192,
             generator: torch.Generator | None = None, progress: bool = False) -> Estimate:
    r"""``∫_{σ_min}^{σ_max} (MSE(D_θ, σ) − MSE(D*, σ)) σ⁻³ dσ`` for samples ``x0`` of p (Kadkhodaie et al.
    2024, eq. 3; Song et al. 2021, Thm 1): an upper bound on ``KL(p ‖ p_θ)`` (nats) as σ_min → 0, σ_max → ∞.

    MSE(D, σ) = E‖x0 − D(x0 + σε, σ)‖² (summed over coordinates), both denoisers on the same (σ, ε).
    ``true_denoiser`` is the ideal denoiser D* = E[x0 | x_σ] of p, so that the MSE gap equals
    ``E‖D_θ − D*‖²`` (the error of D* is orthogonal to every function of x_σ). ``estimator="gap"``
    averages ``‖D_θ − D*‖²`` (non-negative, lower variance); ``"mse"`` the difference of the two squared
    errors as written in the paper. Other arguments as in :func:`diffusion_loss`.

    Returns:
        :class:`Estimate` of 0-d tensors: the mean over the B points and its standard error.
    """
    x0 = _check_data(x0, "x0")
    sigma_min, sigma_max = _check_range(sigma_min, sigma_max)
    if estimator not in ("gap", "mse"):
        raise ValueError(f"estimator must be 'gap' or 'mse', got {estimator!r}")
    mse, mse_star = _mse(denoiser), _mse(true_denoiser, "true_denoiser")

    def g(a, x, s):
        if estimator == "mse":
            return mse(a, x, s) - mse_star(a, x, s)
        return _sqnorm(_call(denoiser, x, s) - _call(true_denoiser, x, s, "true_denoiser"))
    est = _sigma_integral(g, x0, sigma_min, sigma_max, n_samples,
                          sigma_law, n_nodes, P_mean, P_std, chunk, generator, progress, "KL bound").mean(0)
    return Estimate(est.mean(), est.std() / math.sqrt(est.shape[0]))
