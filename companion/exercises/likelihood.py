"""Checker for Chapter 4 (likelihood): the exact divergence of a row-wise map."""
from __future__ import annotations

import torch

from ..likelihood import exact_divergence
from .core import Verdict, compare

__all__ = ["check_divergence"]


def _rowwise_map(shape, generator):
    """A nonlinear map acting on each element of a batch of shape ``(B, *shape)`` separately."""
    d = int(torch.tensor(shape).prod())
    W = torch.randn(d, d, generator=generator, dtype=torch.float64) / d**0.5
    b = torch.randn(d, generator=generator, dtype=torch.float64)

    def f(x):
        y = x.reshape(x.shape[0], d)
        return (torch.tanh(y @ W + b) + 0.5 * y**2).reshape(x.shape)
    return f


def check_divergence(fn, n_cases: int = 5, seed: int = 0, quiet: bool = False) -> Verdict:
    """Check ``fn(f, x) -> (B,)``, the exact divergence ``tr ∂f/∂x`` of a row-wise map at each of the B
    elements of ``x`` (points ``(B, d)`` or images ``(B, C, H, W)``, float64). Reference:
    :func:`companion.likelihood.exact_divergence` (one autograd pass per coordinate).
    """
    g = torch.Generator().manual_seed(seed)
    shapes = [(1,), (2,), (5,), (1, 2, 3), (3, 2, 2)]
    cases = []
    for i in range(n_cases):
        shape = shapes[i % len(shapes)]
        x = torch.randn(2 + i, *shape, generator=g, dtype=torch.float64)
        cases.append(((_rowwise_map(shape, g), x), {}))
    return compare(fn, exact_divergence, cases, rtol=1e-7, atol=1e-9, name="divergence", quiet=quiet)
