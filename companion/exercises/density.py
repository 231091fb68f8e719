"""Checkers for Chapter 5 (log-density along stochastic sampling)."""
from __future__ import annotations

import math

import torch

from ..density_tracking import log_density_increment
from .core import Verdict, compare

__all__ = ["check_log_density_step"]


def _reference(log_p, score, dw, f, g, dt):
    return log_p + log_density_increment(score, dw, f, g, dt)


def check_log_density_step(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    r"""Check ``fn(log_p, score, dw, f, g, dt) -> log_p_next``: one Euler–Maruyama step of the log-density
    along the reverse SDE (Karczewski et al. 2025),

    .. math::  \log p \leftarrow \log p + \big(-f D - \tfrac12 g^2 \|s\|^2\big)\Delta t + g\, s\cdot dw ,

    with ``log_p`` ``(B,)``, ``score`` and ``dw`` ``(B, D)`` float64 (``dw = √|Δt| z``, the increment that also
    moves x), floats ``f``, ``g`` and ``dt < 0``. The answer must match to 1e-8 (absolute) / 1e-8 (relative).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for i in range(n_cases):
        B, D = 3 + i, 2 + 3 * i
        dt = -float(10 ** (-1 - i % 3))
        args = (torch.randn(B, generator=g, dtype=torch.float64) * 10,
                torch.randn(B, D, generator=g, dtype=torch.float64) * 3,
                math.sqrt(-dt) * torch.randn(B, D, generator=g, dtype=torch.float64),
                -float(torch.rand((), generator=g)) * 5, 0.5 + 3 * float(torch.rand((), generator=g)), dt)
        cases.append((args, {}))
    return compare(fn, _reference, cases, rtol=1e-8, atol=1e-8, name="log-density step", quiet=quiet)
