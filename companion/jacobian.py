r"""Jacobians of denoisers and their eigen-analysis (Chapter 7; Kadkhodaie, Guth, Simoncelli & Mallat 2024).

A denoiser ``D`` maps a noisy image ``y`` (``d`` pixels) to ``D(y)``; its Jacobian
``J(y) = ∂D/∂y`` is a ``d × d`` matrix with ``J[i, j] = ∂D_i/∂y_j``.

* :func:`jacobian` computes ``J`` at a batch of inputs with batched vector–Jacobian products
  (``torch.func.vjp`` under ``vmap``, ``chunk_size`` rows at a time, so memory stays bounded);
  :func:`jacobian_loop` is the straightforward one-backward-per-pixel reference it is tested and
  benchmarked against (``benchmarks/jacobian.py``).
* For a *bias-free* network (no additive constants, ReLU), ``D`` is positively homogeneous and
  piecewise linear, so ``D(y) = J(y) y`` (Mohan et al. 2020): :func:`homogeneity_error` measures it.
* :func:`eigen` diagonalises the symmetric part ``(J + Jᵀ)/2`` (``torch.linalg.eigh``) and reports
  the relative size of the antisymmetric part it drops, ``‖(J − Jᵀ)/2‖_F / ‖J‖_F``: the ideal
  denoiser's Jacobian is exactly symmetric (0), the paper's trained networks nearly so.
* :func:`effective_dimension` is the trace ``Σ_k λ_k`` — the sum of the shrinkage factors, i.e. the
  dimension of the subspace the denoiser keeps when the λ_k are 0 or 1.
* :func:`ideal_jacobian` is the exact ``J*(y) = Cov[x | y] / σ²`` of the ideal denoiser
  ``E[x | y]`` (Tweedie; Kadkhodaie et al. 2024, Eq. 4) for the empirical distribution of a data set
  (:class:`companion.denoisers.IdealDenoiser`) or a Gaussian mixture (:class:`companion.gmm.GaussianMixture`).
  Its trace gives the optimal error: ``MSE* = σ² E_y tr J*(y)``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from ._checks import as_sigma, as_tensor, check_positive_int

__all__ = ["jacobian", "jacobian_loop", "homogeneity_error", "Eigen", "eigen", "effective_dimension",
           "ideal_jacobian"]


def _inputs(D, y, sigma):
    if not callable(D):
        raise TypeError(f"D must be callable (a denoiser D(x, sigma)), got {type(D).__name__}")
    y = as_tensor(y, "y")
    if y.dim() < 2 or y[0].numel() == 0:
        raise ValueError(f"y must have shape (B, ...) with B >= 1, got {tuple(y.shape)}")
    if sigma is not None:
        as_sigma(sigma, y)  # validates: > 0, finite, float or (B,)
    return y


def _call(D, x, sigma):
    return D(x) if sigma is None else D(x, sigma)


def jacobian(D: Callable, y, sigma=None, chunk_size: int = 128) -> torch.Tensor:
    r"""The Jacobians ``J(y_b) = ∂D/∂y`` of a denoiser at each input of a batch: ``(B, d, d)``, ``d = y[0].numel()``.

    Args:
        D: a denoiser ``D(x)`` (blind; ``sigma=None``) or ``D(x, sigma)`` acting on ``(B, *shape)`` batches
            *independently per sample* (eval mode: no batch statistics).
        y: ``(B, *shape)`` inputs.
        sigma: None (blind denoiser), a float or a 0-d tensor (the same σ for every input) — a ``(B,)``
            tensor is taken per input.
        chunk_size: how many rows (output pixels) are computed by one batched backward pass.

    For each input the forward pass runs once (``torch.func.vjp``) and the ``d`` rows
    ``e_iᵀ J`` are pulled back ``chunk_size`` at a time by ``torch.func.vmap`` over the cotangents
    ``e_i``. Row ``i`` of the result is ``∇_y D_i(y)``. The result has ``y``'s dtype and device.
    """
    y = _inputs(D, y, sigma)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    B, shape, d = y.shape[0], y.shape[1:], y[0].numel()
    sig = None if sigma is None else as_tensor(sigma, "sigma", dtype=y.dtype, device=y.device)
    rows = torch.empty(B, d, d, dtype=y.dtype, device=y.device)
    eye = torch.eye(d, dtype=y.dtype, device=y.device).reshape(d, *shape)
    with torch.enable_grad():
        for b in range(B):
            s = None if sig is None else (sig if sig.dim() == 0 else sig[b:b + 1])
            _, pull = torch.func.vjp(lambda x: _call(D, x[None], s)[0], y[b])
            for start in range(0, d, chunk_size):
                (grads,) = torch.func.vmap(pull)(eye[start:start + chunk_size])
                rows[b, start:start + chunk_size] = grads.reshape(-1, d).detach()
    return rows


def jacobian_loop(D: Callable, y, sigma=None) -> torch.Tensor:
    """Reference: the same ``(B, d, d)`` Jacobians by one ``torch.autograd.grad`` call per output pixel.

    Slow (``B·d`` backward passes) and obviously right: row ``i`` is the gradient of ``D(y)_i``.
    """
    y = _inputs(D, y, sigma)
    B, d = y.shape[0], y[0].numel()
    out = torch.empty(B, d, d, dtype=y.dtype, device=y.device)
    for b in range(B):
        s = None if sigma is None else (sigma if as_tensor(sigma, "sigma").dim() == 0 else sigma[b:b + 1])
        x = y[b:b + 1].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            flat = _call(D, x, s).reshape(-1)
            for i in range(d):
                (g,) = torch.autograd.grad(flat[i], x, retain_graph=i < d - 1)
                out[b, i] = g.reshape(-1)
    return out


def homogeneity_error(D: Callable, y, J=None, sigma=None) -> torch.Tensor:
    r"""Relative error ``‖D(y) − J(y) y‖ / ‖D(y)‖`` per input ``(B,)``: zero for a bias-free ReLU network.

    ``J`` (``(B, d, d)``, from :func:`jacobian`) is computed when not given.
    """
    y = _inputs(D, y, sigma)
    if J is None:
        J = jacobian(D, y, sigma)
    with torch.no_grad():
        out = _call(D, y, sigma).reshape(y.shape[0], -1)
    lin = torch.einsum("bij,bj->bi", J, y.reshape(y.shape[0], -1))
    return (out - lin).norm(dim=1) / out.norm(dim=1).clamp_min(torch.finfo(out.dtype).tiny)


class Eigen(NamedTuple):
    """What :func:`eigen` returns: eigenvalues ``(B, d)`` in decreasing order, eigenvectors ``(B, d, d)``
    (column ``k`` of ``vectors[b]`` goes with ``values[b, k]``) and the ``asymmetry`` ``(B,)``
    ``‖A‖_F / ‖J‖_F`` of the antisymmetric part ``A = (J − Jᵀ)/2`` (in [0, 1]; ``‖J‖² = ‖S‖² + ‖A‖²``)."""

    values: torch.Tensor
    vectors: torch.Tensor
    asymmetry: torch.Tensor


def _check_square(J, name="J"):
    J = as_tensor(J, name)
    if J.dim() != 3 or J.shape[1] != J.shape[2] or J.shape[1] == 0:
        raise ValueError(f"{name} must have shape (B, d, d), got {tuple(J.shape)}")
    return J


def eigen(J) -> Eigen:
    r"""Eigendecomposition of the symmetric part ``S = (J + Jᵀ)/2`` of Jacobians ``(B, d, d)``.

    ``S = V diag(λ) Vᵀ`` with orthonormal ``V`` (``torch.linalg.eigh``, sorted so that λ decreases), so
    that near ``y`` the denoiser acts as a shrinkage ``D(y) ≈ Σ_k λ_k ⟨y, v_k⟩ v_k`` in the adaptive basis
    ``v_k`` (Kadkhodaie et al. 2024, Eq. 5). The antisymmetric part ``A = (J − Jᵀ)/2`` is dropped; its
    relative size ``‖A‖_F / ‖J‖_F`` is returned as ``asymmetry``.
    """
    J = _check_square(J)
    S = 0.5 * (J + J.transpose(1, 2))
    values, vectors = torch.linalg.eigh(S)
    asym = 0.5 * (J - J.transpose(1, 2)).flatten(1).norm(dim=1) / J.flatten(1).norm(dim=1).clamp_min(1e-30)
    return Eigen(values.flip(-1), vectors.flip(-1), asym)


def effective_dimension(values) -> torch.Tensor:
    r"""Effective dimension ``Σ_k λ_k`` (= ``tr J``) of eigenvalues ``(B, d)`` (or ``(d,)``) → ``(B,)`` (or ``()``).

    For a projection onto a k-dimensional subspace (λ ∈ {0, 1}) it is k; for the ideal denoiser it is
    ``tr Cov[x|y] / σ²``, the posterior variance in units of the noise variance.
    """
    values = as_tensor(values, "values")
    if values.dim() not in (1, 2) or values.shape[-1] == 0:
        raise ValueError(f"values must have shape (B, d) or (d,), got {tuple(values.shape)}")
    return values.sum(-1)


def ideal_jacobian(prior, y, sigma) -> torch.Tensor:
    r"""Exact Jacobian ``J*(y) = Cov[x | y] / σ²`` of the ideal denoiser ``E[x | y]``, ``y = x + σ ε``: ``(B, d, d)``.

    Args:
        prior: a :class:`companion.denoisers.IdealDenoiser` (the empirical distribution of its data:
            ``Cov = Σ_i w_i (x_i − m)(x_i − m)ᵀ`` with the posterior weights ``w_i`` and mean ``m``) or a
            :class:`companion.gmm.GaussianMixture` (``Cov = Σ_k r_k (C_k + (m_k − m)(m_k − m)ᵀ)`` with
            responsibilities ``r_k``, per-component posterior means ``m_k = μ_k + τ_k²/(τ_k²+σ²)(y − μ_k)``
            and covariances ``C_k = diag(τ_k² σ²/(τ_k² + σ²))``).
        y: ``(B, *shape)`` noisy inputs (``(B, D)`` for a mixture).
        sigma: the noise level, a float, 0-d or ``(B,)`` tensor (> 0).

    Computed in the prior's dtype (float64 for ground truth) and returned in it, on ``y``'s device.
    """
    from .denoisers import IdealDenoiser
    from .gmm import GaussianMixture

    y = as_tensor(y, "y")
    if isinstance(prior, IdealDenoiser):
        w = prior.weights(y, sigma)  # (B, M), validates shapes and σ
        X = prior.data  # centred data (M, d)
        mean = w @ X  # (B, d)
        Xw = X[None] * w[:, :, None].sqrt()
        cov = Xw.transpose(1, 2) @ Xw - mean[:, :, None] * mean[:, None, :]
        s = as_sigma(sigma, mean)
    elif isinstance(prior, GaussianMixture):
        r = prior.responsibilities(y, sigma)  # (B, K), validates shapes and σ
        yd = as_tensor(y, "y", dtype=prior.means.dtype, device=prior.means.device)
        s = as_sigma(sigma, yd)
        s2 = (s.reshape(-1, 1, 1) if s.dim() else s) ** 2  # broadcast over (B, K, D)
        if (s2 <= 0).any():
            raise ValueError("sigma must be > 0")
        tau2 = prior.stds[None] ** 2
        post_mean = prior.means[None] + tau2 / (tau2 + s2) * (yd[:, None, :] - prior.means[None])  # (B, K, D)
        post_var = tau2 * s2 / (tau2 + s2)  # (B|1, K, D)
        mean = (r[:, :, None] * post_mean).sum(1)
        dev = (post_mean - mean[:, None, :]) * r[:, :, None].sqrt()
        cov = dev.transpose(1, 2) @ dev + torch.diag_embed((r[:, :, None] * post_var).sum(1))
    else:
        raise TypeError(f"prior must be an IdealDenoiser or a GaussianMixture, got {type(prior).__name__}")
    s = s.reshape(-1, 1, 1) if s.dim() else s
    return (cov / s ** 2).to(y.device)
