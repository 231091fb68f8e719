"""Checkers for Chapter 1 (forward SDEs)."""
from __future__ import annotations

import torch

from .. import sde
from ..sde import VP
from .core import Verdict, compare

__all__ = ["check_vp_coefficients"]


def _vp_reference(t, beta_min, beta_max):
    p = VP(beta_min, beta_max)
    return p.s(t), p.sigma(t)


def check_vp_coefficients(fn, n_cases: int = 6, seed: int = 0, quiet: bool = False) -> Verdict:
    """Check ``fn(t, beta_min, beta_max) -> (s, sigma)``: the VP process's closed-form s(t), σ(t).

    ``t`` is a float64 tensor of times in [0, 1]; the answer must match :class:`companion.sde.VP` to a
    relative 1e-9. Every case includes tiny times (down to 1e-12), where ``σ(t)² = e^{B(t)} − 1`` computed
    as ``exp(B) − 1`` loses most of its digits to cancellation (``torch.expm1`` keeps them), so that
    answer is rejected, as are the usual slips: a wrong sign or a missing ½ in ``B`` or in ``s``.
    It must not use ``companion.sde`` (the exercise is to write it).
    """
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n_cases):
        t = torch.rand(7, generator=g, dtype=torch.float64)
        t[0] = 0.0
        t[1:3] = torch.tensor([1e-12, 1e-8], dtype=torch.float64)
        beta_min = float(0.05 + 0.5 * torch.rand((), generator=g))
        beta_max = float(beta_min + 25 * torch.rand((), generator=g))
        cases.append(((t, beta_min, beta_max), {}))
    return compare(fn, _vp_reference, cases, rtol=1e-9, atol=1e-300, name="VP coefficients (s, sigma)",
                   quiet=quiet, forbid=[(VP, "s"), (VP, "sigma"), (VP, "B")],
                   forbid_source=[r"\bsde\.", r"\bVP\("])
