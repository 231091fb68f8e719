"""Checkers for Chapter 6 (creativity from locality and equivariance)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import els
from ..els import local_weights
from .core import Verdict, compare

__all__ = ["check_local_weights", "check_circular_els"]


def _local_written(x, data, sigma, k, mean=False, channels=True):
    """The LS weights written out (a box sum of squared differences); the keywords make the typical slips."""
    sq = (x[:, None] - data[None]) ** 2                                          # (B, K, C, H, W)
    sq = sq.sum(2) if channels else sq[:, :, 0]                                  # (B, K, H, W)
    box = torch.ones(1, 1, k, k, dtype=sq.dtype) / (k * k if mean else 1)
    d2 = F.conv2d(sq.flatten(0, 1)[:, None], box, padding=k // 2).reshape(sq.shape)
    return torch.softmax(-d2 / (2 * sigma**2), dim=1)


_LOCAL_MISTAKES = [
    ("a mean over the patch (e.g. avg_pool2d): the squared distance of two patches is the *sum* of the "
     "per-pixel squared differences (a box filter of ones).", lambda *a: _local_written(*a, mean=True)),
    ("the distance uses one channel only: sum the squared differences over the channels too.",
     lambda *a: _local_written(*a, channels=False)),
]


def check_local_weights(fn, n_cases: int = 5, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(x, data, sigma, patch_size) -> w``: the local-score (LS) machine's Bayes weights.

    ``x`` ``(B, C, H, W)`` and ``data`` ``(K, C, H, W)`` are float64, ``sigma`` a float, ``patch_size``
    an odd int. The answer ``w`` ``(B, K, H, W)`` must be, for every pixel i, the softmax over the
    training images k of :math:`-\|x_{\Omega_i} - x^{(k)}_{0,\Omega_i}\|^2/2\sigma^2`, where
    :math:`\Omega_i` is the zero-padded k×k patch around i (as :func:`companion.els.local_weights`).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for c in range(n_cases):
        C = 1 + c % 2
        H, W = 5 + c % 3, 6
        K = 4 + c
        data = torch.rand(K, C, H, W, generator=g, dtype=torch.float64) * 2 - 1
        x = data[:2] + 0.5 * torch.randn(2, C, H, W, generator=g, dtype=torch.float64)
        sigma = float(0.2 + torch.rand((), generator=g))
        k = (1, 3, 5, 3, 5)[c % 5]
        cases.append(((x, data, sigma, k), {}))
    return compare(fn, local_weights, cases, rtol=1e-6, atol=1e-9, name="local Bayes weights", quiet=quiet,
                   forbid=[(els, "local_weights")], forbid_source=[r"\bels\.\w+", r"import\s+local_weights"],
                   mistakes=_LOCAL_MISTAKES)


def _els_reference(x, data, sigma, patch_size):
    return els.equivariant_local(data, patch_size, padding="circular", tol=0.0)(x, sigma)


def _all_positions(x, data, sigma, k, mode="circular", centre=True):
    """ELS over every patch of every training image, written out, with switches for two typical slips."""
    B, C, H, W = x.shape
    pad = lambda im: F.pad(im, (k // 2,) * 4, mode=mode) if k > 1 else im  # noqa: E731
    q, cand = F.unfold(pad(x), k), F.unfold(pad(data), k)                   # (B, Ck², L), (K, Ck², L)
    cand = cand.transpose(0, 1).reshape(C * k * k, -1)                        # (Ck², K·L)
    d2 = (q.transpose(1, 2)[:, :, :, None] - cand[None, None]).pow(2).sum(2)  # (B, L, K·L)
    w = torch.softmax(-d2 / (2 * sigma**2), dim=2)
    values = cand.reshape(C, k * k, -1)[:, (k * k) // 2] if centre else cand.reshape(C, k * k, -1).mean(1)
    return torch.einsum("blm,cm->bcl", w, values).reshape(B, C, H, W)


_ELS_MISTAKES = [
    ("zero padding: the circular machine wraps the image around (F.pad(..., mode='circular')).",
     lambda x, d, s, k: _all_positions(x, d, s, k, mode="constant")),
    ("σ where σ² belongs: the weights are softmax(−‖·‖²/2σ²), with the variance σ².",
     lambda x, d, s, k: _els_reference(x, d, s**0.5, k)),
    ("a factor 2 in the exponent: the weights are softmax(−‖·‖²/2σ²), not softmax(−‖·‖²/σ²).",
     lambda x, d, s, k: _els_reference(x, d, s / 2**0.5, k)),
    ("only the training patches at the pixel's own position: that is the LS machine; ELS compares with "
     "the patches at every position.", lambda x, d, s, k: els.local(d, k, padding="circular")(x, s)),
    ("the mean of each candidate patch: the estimate is the weighted mean of the patches' centre pixels.",
     lambda x, d, s, k: _all_positions(x, d, s, k, centre=False)),
]


def check_circular_els(fn, n_cases: int = 5, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(x, data, sigma, patch_size) -> x0_hat``: the circular equivariant local-score (ELS) machine.

    For every pixel i of ``x`` ``(B, C, H, W)``, the posterior runs over the k×k patches at *all* positions of
    all training images ``data`` ``(K, C, H, W)`` (circularly padded), with weights
    :math:`\mathrm{softmax}(-\|x_{\Omega_i} - y\|^2 / 2\sigma^2)`, and the estimate of pixel i is the weighted
    mean of the candidates' centre pixels (Kamb & Ganguli 2025;
    ``companion.els.equivariant_local(data, k, padding="circular")``, which the answer must not call).
    float64; ``sigma`` a float (the last case small, 0.01); ``patch_size`` an odd int.
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for c in range(n_cases):
        C, H, W, K = 1 + c % 2, 5 + c % 3, 6, 3 + c
        data = torch.rand(K, C, H, W, generator=g, dtype=torch.float64) * 2 - 1
        x = data[:2] + 0.5 * torch.randn(2, C, H, W, generator=g, dtype=torch.float64)
        sigma = 0.01 if c == n_cases - 1 else float(0.2 + torch.rand((), generator=g))
        cases.append(((x, data, sigma, (3, 5, 1, 3, 5)[c % 5]), {}))
    return compare(fn, _els_reference, cases, rtol=1e-6, atol=1e-9, name="circular ELS machine", quiet=quiet,
                   forbid=[(els.ScoreMachine, "__call__"), (els, "equivariant_local"), (els, "local")],
                   forbid_source=[r"\bels\.\w+", r"\bScoreMachine\b", r"\bequivariant_local\b"],
                   mistakes=_ELS_MISTAKES)
