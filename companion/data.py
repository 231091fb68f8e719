"""Data sets that need no download: 2-D toy distributions and the scikit-learn digits.

Full-scale image sets (MNIST, CIFAR-10, ...) come through torchvision in the ``full`` profile
and are added by the chapters that need them.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch

from ._checks import check_positive_int
from .gmm import ring

__all__ = ["TOY_2D", "toy_2d", "digits"]

TOY_2D = ("mixture", "moons", "swissroll", "checkerboard")


def toy_2d(name: str, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` points of shape ``(n, 2)`` (float32) from a named 2-D distribution.

    Names (see ``TOY_2D``):

    * ``"mixture"``: 8 Gaussians (std 0.3) on a circle of radius 4 — exactly ``gmm.ring()``, so its
      noised density and score are known in closed form;
    * ``"moons"``: two interleaved half circles with a little Gaussian noise (std 0.05), scaled ×2;
    * ``"swissroll"``: a 2-D spiral with noise, roughly in [-3, 3]²;
    * ``"checkerboard"``: uniform on the black squares of a 4 × 4 board on [-4, 4]².
    """
    if name not in TOY_2D:
        raise ValueError(f"name must be one of {TOY_2D}, got {name!r}")
    check_positive_int(n, "n")
    g = generator
    if name == "mixture":
        return ring().sample(n, generator=g).float()
    if name == "moons":
        upper = torch.rand(n, generator=g) < 0.5
        angle = torch.rand(n, generator=g) * math.pi
        x = torch.where(upper, torch.cos(angle), 1 - torch.cos(angle))
        y = torch.where(upper, torch.sin(angle), 0.5 - torch.sin(angle))
        pts = torch.stack([x - 0.5, y - 0.25], 1) * 2
        return pts + 0.05 * 2 * torch.randn(n, 2, generator=g)
    if name == "swissroll":
        u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g))
        pts = torch.stack([u * torch.cos(u), u * torch.sin(u)], 1) / 5
        return pts + 0.1 * torch.randn(n, 2, generator=g)
    # checkerboard: pick a cell among the 8 black ones, then a uniform point in it
    cells = torch.tensor([(i, j) for i in range(4) for j in range(4) if (i + j) % 2 == 0], dtype=torch.float32)
    idx = torch.randint(len(cells), (n,), generator=g)
    return (cells[idx] + torch.rand(n, 2, generator=g)) * 2 - 4


@lru_cache(maxsize=1)
def _digits_cached():
    from sklearn.datasets import load_digits  # shipped with scikit-learn: no download

    d = load_digits()
    images = torch.tensor(d.images, dtype=torch.float32)[:, None] / 8.0 - 1.0
    labels = torch.tensor(d.target, dtype=torch.long)
    return images, labels


def digits():
    """The 1,797 scikit-learn handwritten digits.

    Returns:
        ``(images, labels)``: images ``(1797, 1, 8, 8)`` float32 scaled from {0, ..., 16} to
        [-1, 1], labels ``(1797,)`` int64 in {0, ..., 9}. Fresh copies each call.
    """
    images, labels = _digits_cached()
    return images.clone(), labels.clone()
