r"""Grid solver for the Fokker–Planck equation of the book's forward processes (1-D and 2-D).

A forward process dx = f(t) x dt + g(t) dW (see :mod:`companion.sde`) moves each sample; its
density obeys the Fokker–Planck (Kolmogorov forward) equation (lecture "Score and diffusion
models"; Risken 1989)

.. math::  \partial_t p = -\nabla\!\cdot\!\big[f(t)\,x\,p\big] + \tfrac12 g(t)^2 \Delta p
           = -\nabla\!\cdot\! J,\qquad J = f(t)\,x\,p - \tfrac12 g(t)^2 \nabla p .

Discretisation (finite volumes on a uniform grid of cell centres, zero flux through the ends):

* the flux through each cell face is the Scharfetter–Gummel (exponentially fitted) flux
  ``J = (D/h) [B(-P) p_left - B(P) p_right]`` with ``D = g²/2``, Péclet number ``P = v h / D``,
  face velocity ``v = f(t) x_face`` and Bernoulli function ``B(z) = z / (e^z - 1)``. It is central
  differencing when ``|P|`` is small (second order in ``h``) and upwinding when drift dominates;
  the off-diagonal couplings are ``≥ 0`` for every ``P``;
* in time, backward (implicit) Euler: ``(I - Δt A) p_{k+1} = p_k``, where ``dp/dt = A p`` is the
  semi-discrete equation (``A[i, j] ≥ 0`` for ``j = i ± 1`` is the rate of flow from cell j into
  cell i, ``A[j, j]`` minus the total outflow rate of cell j, so the columns of A sum to zero).
  ``I - Δt A`` is a Z-matrix (non-positive off-diagonals) that is strictly diagonally dominant by
  columns, hence a nonsingular M-matrix: its inverse is entrywise non-negative (positivity for
  any ``Δt``). Its columns sum to one, ``1ᵀ(I - Δt A) = 1ᵀ``, so ``Σ p`` is unchanged (mass
  conserved to round-off);
* time steps are uniform in ``log(w² + σ(t)²)``, with ``w`` the width of p0's narrowest feature:
  short while the density is sharp, long once it is wide, so the error is spread evenly;
* in 2-D the drift is coordinatewise and the diffusion isotropic, so the operator is
  ``A_x ⊗ I + I ⊗ A_y`` with commuting parts; each step applies the 1-D implicit step along
  each axis (exact splitting of commuting operators up to the O(Δt²) of the Euler step itself).

Everything is float64 (NumPy/SciPy inside, torch tensors in and out).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg.lapack import dgtsv

from ._checks import as_tensor, check_positive_int

__all__ = ["uniform_grid", "mixture_density", "solve", "mass", "l1_error"]

#: the largest change between neighbouring cells, relative to the maximum, that counts as resolved
MAX_JUMP = 0.25
#: the bulk of the solution (p0's mass between the quantiles TAIL_MASS and 1 - TAIL_MASS, widened
#: by TAIL_STDS noise std's) must stay inside the grid
TAIL_STDS = 5.0
TAIL_MASS = 1e-7


def uniform_grid(half_width: float, n: int) -> torch.Tensor:
    """Centres of ``n`` equal cells covering ``[-half_width, half_width]``; float64, shape ``(n,)``."""
    check_positive_int(n, "n")
    if not (isinstance(half_width, (int, float)) and half_width > 0):
        raise ValueError(f"half_width must be a positive number, got {half_width!r}")
    h = 2.0 * half_width / n
    return -half_width + h * (torch.arange(n, dtype=torch.float64) + 0.5)


def mixture_density(gmm, grid, process=None, t: float = 0.0) -> torch.Tensor:
    """Exact density of a Gaussian mixture's forward marginal p_t evaluated on a grid.

    p_t is the law of ``s(t) (x0 + σ(t) ε)``: the mixture ``gmm.noised(σ(t), scale=s(t))``.

    Args:
        gmm: a :class:`companion.gmm.GaussianMixture` of dimension 1 or 2.
        grid: ``(N,)`` cell centres (the same grid on both axes in 2-D).
        process: a forward process of :mod:`companion.sde`; ``None`` means t = 0 (the data).
        t: time in [0, 1].

    Returns:
        ``(N,)`` in 1-D, ``(N, N)`` indexed ``[i_x, i_y]`` in 2-D; float64.
    """
    grid = _check_grid(grid)
    if process is not None and t > 0:
        t64 = _t64(t)  # float64 times: a float32 σ(t) would carry a relative error of ~6e-8
        gmm = gmm.noised(float(process.sigma(t64)), scale=float(process.s(t64)))
    gmm = gmm.to(dtype=torch.float64)
    if gmm.dim == 1:
        return torch.exp(gmm.log_prob(grid[:, None]))
    if gmm.dim == 2:
        xx, yy = torch.meshgrid(grid, grid, indexing="ij")
        pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
        return torch.exp(gmm.log_prob(pts)).reshape(len(grid), len(grid))
    raise ValueError(f"gmm must have dimension 1 or 2, got {gmm.dim}")


def mass(p, grid) -> float:
    """``∫ p``: the sum of the cell values times the cell volume ``h^d``."""
    grid = _check_grid(grid)
    p = as_tensor(p, "p", dtype=torch.float64)
    return float(p.sum() * _spacing(grid) ** p.dim())


def l1_error(p, q, grid) -> float:
    """``∫ |p - q|`` on the grid (2 × the total-variation distance for densities)."""
    grid = _check_grid(grid)
    p = as_tensor(p, "p", dtype=torch.float64)
    q = as_tensor(q, "q", dtype=torch.float64)
    if p.shape != q.shape:
        raise ValueError(f"p and q must have the same shape, got {tuple(p.shape)} and {tuple(q.shape)}")
    return float((p - q).abs().sum() * _spacing(grid) ** p.dim())


def solve(p0, grid, process, times, t0: float = 0.0, n_steps: int = 4000) -> torch.Tensor:
    r"""Evolve a density on a grid by the Fokker–Planck equation of ``process`` from ``t0``.

    Args:
        p0: the density at ``t0`` on the grid: ``(N,)`` (1-D) or ``(N, N)`` indexed ``[i_x, i_y]``
            (2-D, the same grid on both axes). Non-negative, finite, positive mass; it need not be
            normalised (mass is conserved, whatever it is).
        grid: ``(N,)`` uniform, increasing cell centres (see :func:`uniform_grid`), ``N ≥ 8``.
        process: a forward process of :mod:`companion.sde` (anything with ``f, g, sigma``).
        times: increasing times in ``[t0, 1]`` at which to return the density.
        t0: the start time.
        n_steps: number of implicit Euler steps from ``t0`` to ``max(times)``; they are placed
            uniformly in ``log(w² + σ(t)²)`` (``w``: the width of p0's narrowest feature) and the
            output times are added to them. The time error is first order: ``∝ 1/n_steps``.

    Returns:
        float64 tensor ``(len(times), *p0.shape)``.

    Raises:
        ValueError: a non-uniform or too small grid; ``p0`` negative, non-finite, of zero mass or
            too sharp for the grid (it changes by more than ``MAX_JUMP`` of its maximum between
            neighbouring cells: refine the grid); a grid too narrow for the requested times
            (the solution would reach the ends: its noise std ``s(t)σ(t)`` must fit
            ``TAIL_STDS`` times between the occupied region and the ends); bad times.
    """
    grid = _check_grid(grid)
    check_positive_int(n_steps, "n_steps")
    p = as_tensor(p0, "p0", dtype=torch.float64)
    N = len(grid)
    if p.dim() not in (1, 2) or any(n != N for n in p.shape):
        raise ValueError(f"p0 must have shape ({N},) or ({N}, {N}) to match the grid, got {tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise ValueError("p0 must be finite")
    if (p < 0).any():
        raise ValueError(f"p0 must be non-negative (a density), got a minimum of {p.min().item():.3g}")
    if p.sum() <= 0:
        raise ValueError("p0 must have positive mass")
    jump = max((p.diff(dim=d).abs().max() / p.max()).item() for d in range(p.dim()))
    if jump > MAX_JUMP:
        raise ValueError(
            f"grid too coarse for p0: it changes by {jump:.2f} of its maximum between neighbouring cells "
            f"(at most {MAX_JUMP} allowed); use a finer grid (smaller spacing) or a smoother density"
        )
    ts = as_tensor(times, "times", dtype=torch.float64).reshape(-1)
    if ts.numel() == 0:
        raise ValueError("times must not be empty")
    if (ts.diff() < 0).any() or ts[0] < t0 or ts[-1] > 1 or not (0 <= t0 <= 1):
        raise ValueError(f"times must be increasing and lie in [t0, 1] = [{t0}, 1], got {ts.tolist()}")
    h = _spacing(grid)
    _check_room(p, grid, process, t0, float(ts[-1]))

    nodes = _time_nodes(process, t0, float(ts[-1]), n_steps, _feature_width(p, grid) / float(process.s(_t64(t0))))
    nodes = np.unique(np.concatenate([nodes, ts.numpy()]))
    tn = torch.from_numpy(nodes[1:])
    fs, gs = process.f(tn).numpy(), process.g(tn).numpy()
    x = grid.numpy()
    faces = 0.5 * (x[1:] + x[:-1])
    out, cur, j = [], p.numpy().copy(), 0
    while j < len(ts) and ts[j] <= nodes[0]:
        out.append(cur.copy())
        j += 1
    for k, b in enumerate(nodes[1:]):
        lower, diag, upper = _implicit_tridiagonal(float(fs[k]), float(gs[k]), b - nodes[k], faces, h)
        cur = _solve_tridiagonal(lower, diag, upper, cur)
        if cur.ndim == 2:  # second axis: solve along rows of the transpose
            cur = _solve_tridiagonal(lower, diag, upper, cur.T).T
        while j < len(ts) and ts[j] <= b:
            out.append(cur.copy())
            j += 1
    return torch.from_numpy(np.stack(out))


# ---------------------------------------------------------------------------- internals
def _t64(t) -> torch.Tensor:
    """A time as a float64 tensor, so that the process coefficients are computed in float64."""
    return torch.as_tensor(t, dtype=torch.float64)


def _spacing(grid: torch.Tensor) -> float:
    return float(grid[1] - grid[0])


def _check_grid(grid) -> torch.Tensor:
    grid = as_tensor(grid, "grid", dtype=torch.float64)
    if grid.dim() != 1 or grid.numel() < 8:
        raise ValueError(f"grid must be a 1-D tensor of at least 8 cell centres, got shape {tuple(grid.shape)}")
    d = grid.diff()
    if not torch.isfinite(grid).all() or (d <= 0).any():
        raise ValueError("grid must be finite and strictly increasing")
    if (d - d.mean()).abs().max() > 1e-9 * d.mean() + 1e-12 * grid.abs().max():
        raise ValueError(
            f"grid must be uniform (equal spacing), got spacings from {d.min().item():.4g} to {d.max().item():.4g}"
        )
    return grid


def _check_room(p, grid, process, t0, t1):
    """The bulk of p0, widened by TAIL_STDS noise std's, must stay inside the grid."""
    lo, hi = math.inf, -math.inf
    for d in range(p.dim()):
        marginal = p.sum(dim=1 - d) if p.dim() == 2 else p
        cdf = torch.cumsum(marginal, 0) / marginal.sum()
        lo = min(lo, grid[torch.searchsorted(cdf, torch.tensor(TAIL_MASS, dtype=cdf.dtype))].item())
        hi = max(hi, grid[min(torch.searchsorted(cdf, torch.tensor(1 - TAIL_MASS, dtype=cdf.dtype)), len(grid) - 1)].item())
    # in the scaled variable y = x / s(t) the process is pure noise of variance σ(t)² - σ(t0)²
    s0, s1 = float(process.s(_t64(t0))), float(process.s(_t64(t1)))
    spread = math.sqrt(max(float(process.sigma(_t64(t1))) ** 2 - float(process.sigma(_t64(t0))) ** 2, 0.0))
    need_lo = s1 * (lo / s0 - TAIL_STDS * spread)
    need_hi = s1 * (hi / s0 + TAIL_STDS * spread)
    h = _spacing(grid)
    if need_lo < grid[0].item() - h / 2 or need_hi > grid[-1].item() + h / 2:
        raise ValueError(
            f"grid too narrow for t = {t1:g}: the density would reach [{need_lo:.3g}, {need_hi:.3g}] "
            f"(noise std s(t)σ(t) = {s1 * spread:.3g}) but the grid covers "
            f"[{grid[0].item() - h / 2:.3g}, {grid[-1].item() + h / 2:.3g}]; widen it"
        )


def _feature_width(p: torch.Tensor, grid: torch.Tensor) -> float:
    """Width of p's narrowest feature, ``max(-∂² log p)^(-1/2)`` over the cells holding p's bulk
    (``τ`` for a Gaussian of std ``τ``); never below the grid spacing."""
    h = _spacing(grid)
    curv = 0.0
    for d in range(p.dim()):
        q = p.movedim(d, 0)
        inner = q[1:-1] > 1e-6 * p.max()
        lp = torch.log(q.clamp_min(1e-300))
        c = -(lp[2:] - 2 * lp[1:-1] + lp[:-2]) / h**2
        if inner.any():
            curv = max(curv, c[inner].max().item())
    return max(h, curv ** -0.5) if curv > 0 else 10 * h


def _time_nodes(process, t0: float, t1: float, n: int, w: float) -> np.ndarray:
    """``n + 1`` times from t0 to t1, uniform in ``log(w² + σ(t)²)``: the relative growth of the
    variance of a feature of width ``w`` (in the scaled variable x / s(t)) is the same each step."""
    if t1 <= t0:
        return np.array([t0])
    sig0, sig1 = float(process.sigma(_t64(t0))), float(process.sigma(_t64(t1)))
    u = np.linspace(math.log(w * w + sig0**2), math.log(w * w + sig1**2), n + 1)
    sig = np.sqrt(np.clip(np.exp(u) - w * w, 0.0, None))
    t = process.t_of_sigma(torch.as_tensor(sig, dtype=torch.float64)).numpy()
    t = np.clip(t, t0, t1)
    t[0], t[-1] = t0, t1
    return np.maximum.accumulate(t)


def _bernoulli(z: np.ndarray) -> np.ndarray:
    """``B(z) = z / (e^z - 1)`` with ``B(0) = 1``, stable for large ``|z|``."""
    small = np.abs(z) < 1e-6
    zs = np.where(small, 1.0, z)
    with np.errstate(over="ignore"):
        return np.where(small, 1.0 - 0.5 * z, zs / np.expm1(zs))


def _implicit_tridiagonal(f: float, g: float, dt: float, faces: np.ndarray, h: float):
    """Sub-, main and super-diagonal of ``I - dt A`` for the Scharfetter–Gummel finite-volume
    operator A of drift ``f x`` and diffusion ``g²/2`` with zero flux at both ends."""
    D = 0.5 * g * g
    v = f * faces  # velocity at the N-1 interior faces
    if D > 0:
        P = v * h / D  # the cell Péclet number
        right = D / h**2 * _bernoulli(P)  # A[i, i+1]: inflow from cell i+1 (≥ 0)
        left = D / h**2 * _bernoulli(-P)  # A[i+1, i]: inflow from cell i (≥ 0)
    else:  # pure transport: upwinding
        right = np.maximum(-v, 0.0) / h
        left = np.maximum(v, 0.0) / h
    diag = np.ones(len(faces) + 1)
    diag[:-1] += dt * left  # outflow of cell i to the right
    diag[1:] += dt * right  # outflow of cell i+1 to the left
    return -dt * left, diag, -dt * right


def _solve_tridiagonal(lower, diag, upper, rhs: np.ndarray) -> np.ndarray:
    """Solve the tridiagonal system for ``rhs`` of shape ``(N,)`` or ``(N, K)`` (LAPACK ``gtsv``)."""
    *_, x, info = dgtsv(lower, diag, upper, rhs)
    if info != 0:  # pragma: no cover - an M-matrix is never singular
        raise RuntimeError(f"tridiagonal solve failed (LAPACK info = {info})")
    return x
