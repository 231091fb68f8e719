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

__all__ = ["TOY_2D", "IMAGE_SETS", "toy_2d", "digits", "image_set"]

IMAGE_SETS = ("mnist", "fashion_mnist", "cifar10")

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


def image_set(name: str, n: int | None = None, size: int = 32, train: bool = True, root=None):
    """A full-scale image set through torchvision (``full`` profile only: it downloads on first use).

    Args:
        name: one of ``IMAGE_SETS`` (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``).
        n: keep the first ``n`` images (all when ``None``).
        size: side length: smaller images are padded with the background value −1 when the margin is
            even (MNIST's 28 → 32, as Kamb & Ganguli), otherwise resized bilinearly.
        train: the training split (else the test split).
        root: download directory (default ``runtime.cache_dir() / "torchvision"``).

    Returns:
        ``(images, labels)`` with images ``(N, C, size, size)`` float32 in [-1, 1].

    Raises ``ValueError`` for an unknown name and ``ImportError`` naming the offline alternative
    (:func:`digits`) when torchvision is not installed (``pip install diffusion-theory-companion[full]``).
    """
    if name not in IMAGE_SETS:
        raise ValueError(f"name must be one of {IMAGE_SETS}, got {name!r}")
    if n is not None:
        check_positive_int(n, "n")
    check_positive_int(size, "size")
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(
            f"image_set({name!r}) needs torchvision and a download (the full profile); install the [full] extra, "
            "or use the offline set cp.data.digits() (the quick profile)"
        ) from exc
    from . import runtime

    root = root or runtime.cache_dir() / "torchvision"
    cls = {"mnist": torchvision.datasets.MNIST, "fashion_mnist": torchvision.datasets.FashionMNIST,
           "cifar10": torchvision.datasets.CIFAR10}[name]
    try:
        ds = cls(root=str(root), train=train, download=True)
    except (OSError, RuntimeError) as exc:   # no network (URLError is an OSError), or a broken download
        raise RuntimeError(
            f"image_set({name!r}) could not download {cls.__name__} into {root} ({exc}). Offline: copy "
            f"the torchvision files there from a machine with a network, or use the offline set "
            f"cp.data.digits() (COMPANION_PROFILE=quick)") from exc
    raw = torch.as_tensor(ds.data if not isinstance(ds.data, torch.Tensor) else ds.data.numpy())
    images = raw.float().div(127.5).sub(1.0)
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(ds.targets, dtype=torch.long)
    if n is not None:
        images, labels = images[:n], labels[:n]
    margin = size - images.shape[-1]
    if margin > 0 and margin % 2 == 0:  # e.g. MNIST 28 -> 32: pad with the background value, as Kamb & Ganguli do
        images = torch.nn.functional.pad(images, (margin // 2,) * 4, value=-1.0)
    elif margin != 0:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.contiguous(), labels
