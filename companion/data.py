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

__all__ = ["TOY_2D", "IMAGE_SETS", "PHOTOS", "toy_2d", "digits", "image_set", "patches"]

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

    MNIST and Fashion-MNIST are read from torchvision's raw idx files under ``root`` (so a copy made
    elsewhere needs no torchvision); torchvision downloads them, and CIFAR-10, when they are absent.

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
    from pathlib import Path

    from . import runtime

    root = Path(root or runtime.cache_dir() / "torchvision")
    folder = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}[name]
    # MNIST-format sets are read from torchvision's raw idx files, downloaded only when absent
    idx = [root / folder / "raw" / f"{'train' if train else 't10k'}-{kind}-idx{d}-ubyte"
           for kind, d in (("images", 3), ("labels", 1))]
    if name == "cifar10" or not all(p.exists() for p in idx):
        ds = _download(name, folder, root, train)
    if name == "cifar10":
        raw, labels = torch.as_tensor(ds.data), torch.as_tensor(ds.targets, dtype=torch.long)
    else:
        raw, labels = _read_idx(idx[0]), _read_idx(idx[1]).long()
    images = raw.float().div(127.5).sub(1.0)
    images = images[:, None] if images.dim() == 3 else images.permute(0, 3, 1, 2)
    if n is not None:
        images, labels = images[:n], labels[:n]
    margin = size - images.shape[-1]
    if margin > 0 and margin % 2 == 0:  # e.g. MNIST 28 -> 32: pad with the background value, as Kamb & Ganguli do
        images = torch.nn.functional.pad(images, (margin // 2,) * 4, value=-1.0)
    elif margin != 0:
        images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return images.contiguous(), labels


def _download(name, folder, root, train):
    """The torchvision data set ``folder`` under ``root``, downloaded when absent."""
    try:
        import torchvision
    except ImportError as exc:
        raise ImportError(
            f"image_set({name!r}) needs torchvision and a download (the full profile); install the [full] extra, "
            "or use the offline set cp.data.digits() (the quick profile)"
        ) from exc
    try:
        return getattr(torchvision.datasets, folder)(root=str(root), train=train, download=True)
    except (OSError, RuntimeError) as exc:   # no network (URLError is an OSError), or a broken download
        raise RuntimeError(
            f"image_set({name!r}) could not download {folder} into {root} ({exc}). Offline: copy "
            f"the torchvision files there from a machine with a network, or use the offline set "
            f"cp.data.digits() (COMPANION_PROFILE=quick)") from exc


def _read_idx(path) -> torch.Tensor:
    """An idx file (the MNIST format: big-endian header of magic, sizes; then uint8) as a tensor."""
    import numpy as np

    raw = path.read_bytes()
    dims = raw[3]
    if raw[:3] != b"\x00\x00\x08" or not 1 <= dims <= 3:
        raise ValueError(f"{path} is not an idx file of unsigned bytes")
    shape = np.frombuffer(raw, dtype=">i4", count=dims, offset=4)
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape).copy())


#: the photographs of scikit-image (shipped inside the package: no download) that :func:`patches` cuts up
PHOTOS = ("camera", "astronaut", "coffee", "brick", "grass", "gravel", "rocket", "chelsea", "moon", "coins",
          "clock", "cell")


@lru_cache(maxsize=4)
def _photos(downsample: int):
    import numpy as np
    import skimage.data
    from skimage.color import rgb2gray

    out = []
    for name in PHOTOS:
        im = getattr(skimage.data, name)()
        im = rgb2gray(im) if im.ndim == 3 else im / 255.0
        h, w = (s // downsample * downsample for s in im.shape)
        im = im[:h, :w].reshape(h // downsample, downsample, w // downsample, downsample).mean((1, 3))
        out.append(torch.tensor(np.asarray(im), dtype=torch.float32))
    return out


def patches(n: int, size: int = 8, split: str = "train", downsample: int = 2, seed: int = 0):
    """``n`` grey-scale patches ``(n, 1, size, size)`` in [-1, 1] of scikit-image's bundled photographs.

    Each photograph of :data:`PHOTOS` is turned grey (``skimage.color.rgb2gray``), averaged over
    ``downsample × downsample`` blocks (more detail per patch) and cut at random positions, the same
    number from each photograph; ``split="train"`` takes patches from the left 3/4 of every photograph,
    ``"test"`` from the right 1/4 (the two never overlap). No download: the images ship with the package.
    Deterministic given ``seed``.
    """
    check_positive_int(n, "n")
    check_positive_int(size, "size")
    check_positive_int(downsample, "downsample")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    g = torch.Generator().manual_seed(seed + (0 if split == "train" else 1))
    photos = _photos(downsample)
    per = [n // len(photos) + (i < n % len(photos)) for i in range(len(photos))]
    out = []
    for im, m in zip(photos, per):
        h, w = im.shape
        cut = (3 * w) // 4
        lo, hi = (0, cut - size) if split == "train" else (cut, w - size)
        rows = torch.randint(0, h - size + 1, (m,), generator=g)
        cols = torch.randint(lo, hi + 1, (m,), generator=g)
        idx_r = rows[:, None] + torch.arange(size)
        idx_c = cols[:, None] + torch.arange(size)
        out.append(im[idx_r[:, :, None], idx_c[:, None, :]])
    return (torch.cat(out)[:, None] * 2 - 1).contiguous()
# ----------------------------------------------------------------------------------------------
# Synthetic image families of Chapter 7 (Kadkhodaie, Guth, Simoncelli & Mallat 2024)
# ----------------------------------------------------------------------------------------------

def _check_size(size):
    if isinstance(size, bool) or not isinstance(size, int) or size < 4:
        raise ValueError(f"size must be an int >= 4, got {size!r}")
    return size


def _check_alpha(alpha):
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 10:
        raise ValueError(f"alpha must be a number in (0, 10], got {alpha!r}")
    return float(alpha)


def power_law_noise(shape, alpha: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform white noise on [-1, 1] filtered by ``|k|^-alpha`` (float64), the building block of :func:`c_alpha`.

    ``shape = (n, size)`` gives ``n`` periodic 1-D signals, ``(n, size, size)`` 2-D ones; the filter acts
    along the last axes in the Fourier domain, ``|k|`` counting cycles per signal length, and the zero
    frequency gets the gain of ``|k| = 1`` (as in the paper's code). The power spectrum decays like
    ``|k|^{-2 alpha}``.
    """
    if not (isinstance(shape, tuple) and len(shape) in (2, 3) and all(isinstance(v, int) and v > 0 for v in shape)):
        raise ValueError(f"shape must be (n, size) or (n, size, size) of positive ints, got {shape!r}")
    alpha = _check_alpha(alpha)
    n, size, dims = shape[0], shape[-1], len(shape) - 1
    white = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1
    k = torch.fft.fftfreq(size, d=1.0 / size, dtype=torch.float64).abs()
    if dims == 2:
        k = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    gain = k.clamp(min=1.0) ** -alpha
    axes = tuple(range(1, dims + 1))
    return torch.fft.ifftn(torch.fft.fftn(white, dim=axes) * gain, dim=axes).real


def c_alpha(n: int, size: int = 16, alpha: float = 2.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""``n`` C^α images ``(n, 1, size, size)`` in [0, 1] (Kadkhodaie et al. 2024, App. on C^α images,
    after Korostelev & Tsybakov 1993 and Peyré & Mallat 2008).

    An image is two regular backgrounds separated by a regular horizontal-ish contour:

    * contour: uniform white noise on [-1, 1] of length ``size``, filtered by ``|k|^-α`` in the Fourier
      domain (periodic), scaled by ``size`` pixels and centred: row ``c(j)`` for column ``j``;
    * backgrounds: two independent 2-D white noises filtered by ``|k|^-α``, each rescaled to an
      intensity range: one to ``[u, 1]``, the other to ``[0, v]`` with ``u, v ~ U(0, 1)`` (which one is
      brighter is a fair coin);
    * the pixel ``(i, j)`` shows the first background with weight ``clip(i + 1 − c(j), 0, 1)`` (the
      fraction of the pixel below the contour, an anti-aliased edge) and the second with the rest.

    The ``|k|^-α`` filter gives power spectra ``∝ |k|^{-2α}``; a random field with such a spectrum in
    ``d`` dimensions is Hölder-regular of order about ``α − d/2``: ``α − 1/2`` for the contour (d = 1) but
    ``α − 1`` for the backgrounds (d = 2), so the α = 1 backgrounds are rough (Chapter 7 estimates both
    orders from structure functions). Generated in float64, returned float32.
    """
    check_positive_int(n, "n")
    size = _check_size(size)
    alpha = _check_alpha(alpha)
    g = generator
    contour = power_law_noise((n, size), alpha, g) * size + size / 2  # (n, size) rows
    backs = power_law_noise((2 * n, size, size), alpha, g).reshape(n, 2, size, size)
    lo = backs.amin(dim=(2, 3), keepdim=True)
    hi = backs.amax(dim=(2, 3), keepdim=True)
    unit = (backs - lo) / (hi - lo)
    u, v = torch.rand(2, n, 1, 1, generator=g, dtype=torch.float64)
    bright = u + (1 - u) * unit[:, 0]
    dark = v * unit[:, 1]
    swap = (torch.rand(n, 1, 1, generator=g) < 0.5)
    first, second = torch.where(swap, dark, bright), torch.where(swap, bright, dark)
    rows = torch.arange(size, dtype=torch.float64)[None, :, None]
    below = (rows + 1 - contour[:, None, :]).clamp(0, 1)
    return (below * first + (1 - below) * second)[:, None].float()


#: names of the 5 disk parameters, in the order of :func:`disk_images`'s ``params``
DISK_PARAMS = ("center_row", "center_col", "radius", "foreground", "background")


def disk_params(n: int, size: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random disk parameters ``(n, 5)`` float64 (order :data:`DISK_PARAMS`), in pixel units.

    Radius ``r ~ U(size/8, size/4)``; centre uniform so that the disk stays inside the image with a
    one-pixel margin; foreground and background intensities ``~ U(0, 1)`` independently.
    """
    check_positive_int(n, "n")
    size = _check_size(size)
    u = torch.rand(n, 5, generator=generator, dtype=torch.float64)
    r = size / 8 + u[:, 2] * size / 8
    lo, span = r + 1, size - 2 - 2 * r
    return torch.stack([lo + u[:, 0] * span, lo + u[:, 1] * span, r, u[:, 3], u[:, 4]], dim=1)


def disk_images(params, size: int = 16) -> torch.Tensor:
    r"""Render disks ``(n, 1, size, size)`` from parameters ``(n, 5)`` (:data:`DISK_PARAMS`).

    Pixel ``(i, j)`` (centre at ``(i + 1/2, j + 1/2)``) shows
    ``b + (f − b) · clip(r − ‖p − c‖ + 1/2, 0, 1)``: a disk with a one-pixel linear ramp at its
    edge, so the image is a differentiable (piecewise smooth) function of the 5 parameters and the
    family is a 5-dimensional manifold whose tangent space :func:`disk_tangent` computes.
    Differentiable; dtype of ``params``.
    """
    size = _check_size(size)
    if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] != 5:
        raise ValueError(f"params must be a tensor of shape (n, 5), got {getattr(params, 'shape', params)!r}")
    grid = torch.arange(size, dtype=params.dtype, device=params.device) + 0.5
    dr = grid[None, :, None] - params[:, 0, None, None]
    dc = grid[None, None, :] - params[:, 1, None, None]
    dist = torch.sqrt(dr ** 2 + dc ** 2 + 1e-12)
    cover = (params[:, 2, None, None] - dist + 0.5).clamp(0, 1)
    f, b = params[:, 3, None, None], params[:, 4, None, None]
    return (b + (f - b) * cover)[:, None]


def disks(n: int, size: int = 16, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` random disk images ``(n, 1, size, size)`` float32 in [0, 1] (:func:`disk_params` rendered by
    :func:`disk_images`): the 5-dimensional family of Kadkhodaie et al. (2024), Sec. 3.3."""
    return disk_images(disk_params(n, size, generator), size).float()


def disk_tangent(params, size: int = 16, step: float = 1e-4) -> torch.Tensor:
    """An orthonormal basis ``(n, 5, size*size)`` of the disk manifold's tangent space at ``params (n, 5)``.

    Central finite differences of :func:`disk_images` in each parameter (float64, ``step`` in parameter
    units), orthonormalised by a QR factorisation.
    """
    if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] != 5:
        raise ValueError(f"params must be a tensor of shape (n, 5), got {getattr(params, 'shape', params)!r}")
    if not (isinstance(step, float) and step > 0):
        raise ValueError(f"step must be a positive float, got {step!r}")
    p = params.to(torch.float64)
    eye = torch.eye(5, dtype=torch.float64, device=p.device) * step
    cols = [(disk_images(p + e, size) - disk_images(p - e, size)).flatten(1) / (2 * step) for e in eye]
    tangent = torch.stack(cols, dim=2)  # (n, size², 5)
    q, _ = torch.linalg.qr(tangent)
    return q.transpose(1, 2)


def disjoint_sets(images: torch.Tensor, n: int, generator: torch.Generator | None = None):
    """Two disjoint training sets ``(A, B)`` of ``n`` images each, drawn without replacement from ``images``.

    ``images`` ``(M, ...)`` with ``M ≥ 2n`` (e.g. the digits, or a large draw of a synthetic family);
    a random permutation of ``M`` puts its first ``n`` indices in A and the next ``n`` in B (the
    paper's "non-overlapping subsets" of Sec. 2). Returns ``(A, B)``, each ``(n, ...)``.
    """
    if not isinstance(images, torch.Tensor) or images.dim() < 2:
        raise ValueError(f"images must be a tensor of shape (M, ...), got {getattr(images, 'shape', images)!r}")
    check_positive_int(n, "n")
    if 2 * n > images.shape[0]:
        raise ValueError(f"n must be at most len(images) // 2 = {images.shape[0] // 2}, got {n}")
    perm = torch.randperm(images.shape[0], generator=generator)
    return images[perm[:n]], images[perm[n:2 * n]]


__all__ += ["power_law_noise", "c_alpha", "disks", "disk_params", "disk_images", "disk_tangent", "disjoint_sets", "DISK_PARAMS"]
