r"""Locality schedules and their calibration against a trained network (part of :mod:`companion.els`).

Kamb & Ganguli (2025) calibrate the ELS machine's patch size per sampling step against a trained
network: run the network's own sampler from fresh noise; at each step evaluate the machine at every
candidate size on the network's current iterate and compare its score with the network's by the
*cosine* of the two scores; take the best size per sample and step, and the *median* of those sizes
over the samples as the schedule (their ``scales_calibration.py``; an L2 distance is an option there).
:func:`calibrate` records both that criterion and ours (the mean squared difference of the denoiser
outputs, the size with the smallest median error over samples); :class:`Calibration` holds both
schedules.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .els import ScoreMachine, _check_patch_size, _check_x

__all__ = ["LocalitySchedule", "Calibration", "calibrate"]


class LocalitySchedule:
    """A patch size per noise level: ``schedule(sigma) -> k``, the size of the nearest listed σ (in log σ).

    Args:
        sigmas: 1-D sequence of positive noise levels.
        sizes: the odd patch sizes used at those noise levels (same length).
    """

    def __init__(self, sigmas: Sequence[float], sizes: Sequence[int]):
        sig = torch.as_tensor(sigmas, dtype=torch.float64).reshape(-1)
        sz = [int(v) for v in torch.as_tensor(sizes).reshape(-1).tolist()]
        if len(sig) == 0 or len(sig) != len(sz):
            raise ValueError(f"sigmas and sizes must be non-empty and of equal length, got {len(sig)} and {len(sz)}")
        if (sig <= 0).any():
            raise ValueError("sigmas must be > 0")
        if any(v <= 0 or v % 2 == 0 for v in sz):
            raise ValueError(f"sizes must be odd positive ints, got {sz}")
        self.sigmas, self.sizes = sig, sz

    def __call__(self, sigma: float) -> int:
        i = int(torch.argmin((self.sigmas.log() - torch.log(torch.tensor(float(sigma), dtype=torch.float64))).abs()))
        return self.sizes[i]

    def __repr__(self) -> str:
        pairs = ", ".join(f"{s:.3g}:{k}" for s, k in zip(self.sigmas.tolist(), self.sizes))
        return f"LocalitySchedule({pairs})"


@dataclass
class Calibration:
    """Result of :func:`calibrate`.

    Attributes:
        schedule: our calibrated :class:`LocalitySchedule` (per step, the size with the smallest
            median MSE over samples).
        paper_schedule: the paper's (per step, the median over samples of each sample's size with
            the largest score cosine; ``torch.median``, the lower middle value for an even count).
        sigmas: ``(S,)`` the noise levels of the calibrated steps.
        patch_sizes: the candidate sizes, length ``n_k``.
        mse: ``(S, n_k, B)`` mean squared difference of the machine's and the network's denoiser
            outputs per step, size and sample.
        cosine: ``(S, n_k, B)`` cosine of the machine's and the network's scores ``(D - x)/σ²``.
        best: ``(S, B)`` the best size per step and sample by the MSE.
    """

    schedule: LocalitySchedule
    paper_schedule: LocalitySchedule
    sigmas: torch.Tensor
    patch_sizes: list
    mse: torch.Tensor
    cosine: torch.Tensor
    best: torch.Tensor

    @property
    def spread(self) -> torch.Tensor:
        """``(S,)`` how decisive each step is: (worst − best) / best of the per-size median errors."""
        med = self.mse.median(dim=2).values
        lo = med.min(1).values
        return (med.max(1).values - lo) / lo.clamp_min(1e-30)


@torch.no_grad()
def calibrate(net: Callable, machine: ScoreMachine, sigmas, x, patch_sizes: Sequence[int],
              progress: bool = False) -> Calibration:
    r"""Calibrate a machine's locality scale against a trained network (Kamb & Ganguli 2025).

    Runs the network's own deterministic DDIM trajectory (:func:`companion.samplers.sample` with
    γ = 1, μ = 0) from ``x``; at every step with σ > 0 it evaluates the machine at each candidate patch
    size on the network's current iterate and records, per sample, (i) the mean squared difference of
    the denoiser outputs :math:`\|D_k(x) - D_\theta(x)\|^2 / \dim x` (σ⁴ times the squared score
    error) and (ii) the cosine of the scores :math:`(D_k(x) - x)/\sigma^2` and
    :math:`(D_\theta(x) - x)/\sigma^2`, the paper's criterion. Two schedules result: ours (smallest
    median MSE over samples) and the paper's (median over samples of each sample's best-cosine size).

    Args:
        net: the network's denoiser ``net(x, sigma) -> x0_hat``.
        machine: a :class:`~companion.els.ScoreMachine` (its ``patch_size`` is overridden by the candidates).
        sigmas: the sampler's descending schedule ``(N+1,)`` (the last may be 0).
        x: initial noise ``(B, C, H, W)`` (already multiplied by ``sigmas[0]``).
        patch_sizes: odd candidate sizes.
        progress: show a progress bar.

    Returns:
        a :class:`Calibration`.
    """
    from . import samplers
    from tqdm.auto import tqdm

    sizes = [_check_patch_size(k, *machine.shape[1:]) for k in patch_sizes]
    if not sizes:
        raise ValueError("patch_sizes must not be empty")
    x = _check_x(x, machine.shape)
    sig = samplers.check_sigmas(sigmas)
    _, path = samplers.sample(net, sig, x, gamma=1.0, mu=0.0, return_path=True)
    steps = [i for i in range(len(sig) - 1) if sig[i] > 0]
    mse = torch.zeros(len(steps), len(sizes), x.shape[0], dtype=x.dtype)
    cosine = torch.zeros_like(mse)
    for j, i in enumerate(tqdm(steps, disable=not progress, desc="calibrating")):
        xi, s = path[i], float(sig[i])
        d_net = net(xi, s)
        score_net = (d_net - xi).flatten(1)
        for a, k in enumerate(sizes):
            d_k = machine(xi, s, patch_size=k)
            mse[j, a] = (d_k - d_net).flatten(1).pow(2).mean(1).cpu()
            cosine[j, a] = torch.nn.functional.cosine_similarity((d_k - xi).flatten(1), score_net, dim=1).cpu()
    ks = torch.tensor(sizes)
    best = ks[mse.argmin(1)]                                                   # (S, B)
    chosen = ks[mse.median(dim=2).values.argmin(1)]                            # (S,)
    paper = ks[cosine.argmax(1)].median(dim=1).values                          # (S,)
    return Calibration(LocalitySchedule(sig[steps].cpu(), chosen.tolist()),
                       LocalitySchedule(sig[steps].cpu(), paper.tolist()), sig[steps].cpu(), sizes, mse,
                       cosine, best)
