"""Checkers for Chapter 6 (creativity from locality and equivariance)."""
from __future__ import annotations

import torch

from .. import els
from ..els import local_weights
from .core import Verdict, compare

__all__ = ["check_local_weights"]


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
                   forbid=[(els, "local_weights")], forbid_source=[r"\bels\.\w+", r"import\s+local_weights"])
