r"""Sample-quality metrics: distances between sample sets, Fréchet distance on digit features, memorization.

* 2-D (or any low-dimensional) point sets: :func:`sliced_wasserstein` and :func:`mmd`.
* Images: :func:`frechet_distance` between Gaussian fits of features (the formula of FID,
  Heusel et al. 2017); on the 8×8 digits the features are those of the package's small digits
  classifier (``cp.training.load("digits_classifier")``), so :func:`digits_fd` is the quick-profile
  stand-in for FID. It is *not* comparable to published FID numbers (other features, other data).
* :func:`nearest_neighbour_distance` to a training set (memorization: a sample that copies a training
  image has distance ≈ 0).
"""
from __future__ import annotations

import functools
import math

import torch

from ._checks import as_tensor, check_batch, check_positive_int

__all__ = [
    "sliced_wasserstein", "mmd", "frechet_distance", "nearest_neighbour_distance",
    "digits_classifier", "digits_features", "digits_fd", "digits_accuracy",
    "png_size", "zlib_size", "sign_test",
]


def _pair(x, y, name_x="x", name_y="y"):
    x = check_batch(x, name_x)
    y = check_batch(y, name_y)
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1).to(dtype=x.dtype, device=x.device)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{name_x} and {name_y} must have the same point dimension, got {x.shape[1]} and {y.shape[1]}")
    for n, t in ((name_x, x), (name_y, y)):
        if t.shape[0] < 2:
            raise ValueError(f"{n} must hold at least 2 points, got {t.shape[0]}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{n} must be finite")
    return x, y


def sliced_wasserstein(x, y, n_projections: int = 256, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Sliced 2-Wasserstein distance between two point sets (Rabin et al. 2011).

    :math:`SW_2(x, y) = \big(\mathbb E_{\theta \sim U(S^{D-1})} W_2^2(\theta^\top x, \theta^\top y)\big)^{1/2}`,
    estimated with ``n_projections`` random directions; each 1-D W₂ compares quantiles (sorted
    projections; unequal set sizes are matched at common quantile levels by linear interpolation).

    Args:
        x: ``(N, *shape)``; y: ``(M, *shape)`` (flattened to points).
        n_projections: number of random directions.
        generator: for the directions.

    Returns:
        0-d tensor (≥ 0; it is 0 for identical sets).
    """
    x, y = _pair(x, y)
    check_positive_int(n_projections, "n_projections")
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=x.dtype,
                        device=generator.device if generator is not None else x.device).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    px, _ = torch.sort(x @ theta, dim=0)
    py, _ = torch.sort(y @ theta, dim=0)
    if px.shape[0] != py.shape[0]:
        n = max(px.shape[0], py.shape[0])
        px, py = _quantiles(px, n), _quantiles(py, n)
    return ((px - py) ** 2).mean().sqrt()


def _quantiles(p: torch.Tensor, n: int) -> torch.Tensor:
    """Linear interpolation of the sorted columns of ``p`` (N, P) at ``n`` evenly spaced quantile levels."""
    N = p.shape[0]
    pos = (torch.arange(n, dtype=p.dtype, device=p.device) + 0.5) / n * N - 0.5
    pos = pos.clamp(0, N - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=N - 1)
    frac = (pos - lo.to(p.dtype))[:, None]
    return p[lo] * (1 - frac) + p[hi] * frac


def mmd(x, y, bandwidth: float | None = None) -> torch.Tensor:
    r"""Maximum mean discrepancy with a Gaussian kernel (Gretton et al. 2012), the biased (V-statistic) estimate.

    :math:`\mathrm{MMD}^2 = \overline{k(x,x')} + \overline{k(y,y')} - 2\,\overline{k(x,y)}`,
    :math:`k(a,b) = \exp(-\|a-b\|^2/2h^2)`. Returns :math:`\sqrt{\max(\mathrm{MMD}^2, 0)}`.

    Args:
        x: ``(N, *shape)``; y: ``(M, *shape)``.
        bandwidth: h > 0; ``None`` uses the median pairwise distance of the pooled points (the "median
            heuristic"). Pass a fixed h to compare several sample sets on one scale.

    Returns:
        0-d tensor (≥ 0; 0 for identical sets).
    """
    x, y = _pair(x, y)
    d_xx, d_yy, d_xy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    if bandwidth is None:
        pooled = torch.cat([x, y])
        d = torch.pdist(pooled)
        h2 = float(d.median() ** 2) if d.numel() else 1.0
        h2 = h2 if h2 > 0 else 1.0
    else:
        if isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float)) or not bandwidth > 0:
            raise ValueError(f"bandwidth must be a positive number or None, got {bandwidth!r}")
        h2 = float(bandwidth) ** 2
    k = lambda d2: torch.exp(-d2 / (2 * h2)).mean()  # noqa: E731
    return (k(d_xx) + k(d_yy) - 2 * k(d_xy)).clamp(min=0).sqrt()


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_distance(feats_a, feats_b) -> torch.Tensor:
    r"""Fréchet distance between Gaussian fits of two feature sets (the formula of FID; Heusel et al. 2017).

    :math:`\|\mu_a - \mu_b\|^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b
    - 2(\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2})^{1/2}\big)`,
    computed in float64 with symmetric eigendecompositions (no complex square roots).

    Args:
        feats_a: ``(N, F)``; feats_b: ``(M, F)``; N, M ≥ 2.

    Returns:
        0-d float64 tensor (≥ 0 up to round-off; ≈ 0 for a set with itself).
    """
    a, b = _pair(feats_a, feats_b, "feats_a", "feats_b")
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T).reshape(a.shape[1], a.shape[1]), torch.cov(b.T).reshape(b.shape[1], b.shape[1])
    ra = _sqrtm_psd(cov_a)
    m = ra @ cov_b @ ra
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp(min=0).sqrt().sum()
    return ((mu_a - mu_b) ** 2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * tr_sqrt


def nearest_neighbour_distance(x, train, chunk_size: int = 4096, return_index: bool = False):
    """Euclidean distance from each point of ``x`` to its nearest neighbour in ``train``.

    Args:
        x: ``(B, *shape)``; train: ``(M, *shape)`` (same point shape), processed in chunks of
            ``chunk_size`` so large training sets fit in memory.
        return_index: also return the index of the nearest training point.

    Returns:
        ``(B,)`` distances (and ``(B,)`` long indices if asked).
    """
    x = check_batch(x, "x")
    train = check_batch(train, "train")
    if train.shape[0] == 0:
        raise ValueError("train must not be empty")
    if x.shape[1:] != train.shape[1:]:
        raise ValueError(f"x and train must have the same point shape, got {tuple(x.shape[1:])} "
                         f"and {tuple(train.shape[1:])}")
    check_positive_int(chunk_size, "chunk_size")
    xf = x.reshape(x.shape[0], -1)
    tf = train.reshape(train.shape[0], -1).to(dtype=xf.dtype, device=xf.device)
    best = torch.full((xf.shape[0],), math.inf, dtype=xf.dtype, device=xf.device)
    idx = torch.zeros(xf.shape[0], dtype=torch.long, device=xf.device)
    for start in range(0, tf.shape[0], chunk_size):
        # explicit differences, not the matrix-product shortcut: exact down to distance 0
        d = torch.cdist(xf, tf[start:start + chunk_size], compute_mode="donot_use_mm_for_euclid_dist")
        v, i = d.min(1)
        better = v < best
        best = torch.where(better, v, best)
        idx = torch.where(better, i + start, idx)
    return (best, idx) if return_index else best


# --------------------------------------------------------------------------- digits
@functools.lru_cache(maxsize=1)
def digits_classifier():
    """The package's small digits CNN (``cp.training.load("digits_classifier")``), loaded once, in eval mode."""
    from . import training

    model = training.load("digits_classifier")
    model.eval()
    return model


def _digits_images(images, name: str) -> torch.Tensor:
    images = as_tensor(images, name)
    if images.dim() != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"{name} must have shape (B, 1, 8, 8) (digits in [-1, 1]), got {tuple(images.shape)}")
    return images


@torch.no_grad()
def digits_features(images, batch_size: int = 512) -> torch.Tensor:
    """Classifier features ``(B, F)`` of digit images ``(B, 1, 8, 8)`` in [-1, 1] (float32).

    The classifier runs on the images' device (the package's device rule) and so do the features.
    """
    images = _digits_images(images, "images")
    model = digits_classifier()
    out = [model.features(images[i:i + batch_size]).float() for i in range(0, images.shape[0], batch_size)]
    return torch.cat(out)


def digits_fd(images_a, images_b) -> torch.Tensor:
    """Fréchet distance between the digits-classifier features of two image sets (quick-profile FID stand-in)."""
    feats_a = digits_features(_digits_images(images_a, "images_a"))
    feats_b = digits_features(_digits_images(images_b, "images_b"))
    return frechet_distance(feats_a, feats_b.to(feats_a.device))


@torch.no_grad()
def digits_accuracy(images, labels, batch_size: int = 512) -> float:
    """Fraction of digit images ``(B, 1, 8, 8)`` that the classifier assigns to ``labels`` ``(B,)``.

    For class-conditional samples this measures how well the samples show the requested class.
    """
    images = _digits_images(images, "images")
    labels = torch.as_tensor(labels)
    if labels.shape != (images.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({images.shape[0]},), "
                         f"got {labels.dtype} {tuple(labels.shape)}")
    model = digits_classifier()
    pred = torch.cat([model(images[i:i + batch_size]).argmax(1) for i in range(0, images.shape[0], batch_size)])
    return (pred == labels.to(pred.device)).double().mean().item()


# --------------------------------------------------------------------------- information content
def _quantized(images, name: str = "images"):
    """Images ``(B, H, W)`` or ``(B, 1, H, W)`` in [-1, 1] as uint8 arrays ``(B, H, W)`` (round to 256 levels)."""
    images = as_tensor(images, name)
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3 or images.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, H, W) or (B, 1, H, W) with B >= 1, got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError(f"{name} must be finite")
    return ((images.detach().cpu().double().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def png_size(images, upsample: int = 1) -> torch.Tensor:
    """Losslessly compressed size in bytes ``(B,)`` of grey images ``(B, [1,] H, W)`` in [-1, 1] saved as PNG
    (Pillow, ``compress_level=9``) after quantization to 8 bits and ``upsample``-fold nearest-neighbour
    enlargement (the paper's Figure 6 measures the PNG size of the generated images).

    A PNG has about 60 bytes of fixed overhead (signature, IHDR, IDAT and IEND chunks, zlib header):
    for an 8×8 image (64 bytes of pixels) the header dominates, so compare sizes of images of one shape,
    upsample small ones, or use :func:`zlib_size`.
    """
    import io

    from PIL import Image

    check_positive_int(upsample, "upsample")
    arrays = _quantized(images)
    sizes = []
    for a in arrays:
        if upsample > 1:
            a = a.repeat(upsample, 0).repeat(upsample, 1)
        buf = io.BytesIO()
        Image.fromarray(a, mode="L").save(buf, format="PNG", compress_level=9)
        sizes.append(buf.tell())
    return torch.tensor(sizes)


def zlib_size(images, level: int = 9) -> torch.Tensor:
    """Size in bytes ``(B,)`` of ``zlib.compress`` (DEFLATE: LZ77 + Huffman coding, ``level`` 0–9) of the
    8-bit quantized pixels of grey images ``(B, [1,] H, W)`` in [-1, 1]: PNG's entropy coder without PNG's
    chunks and row filters (a plain baseline; 11 bytes of zlib/DEFLATE overhead)."""
    import zlib

    if isinstance(level, bool) or level not in range(10):
        raise ValueError(f"level must be an int in 0..9, got {level!r}")
    return torch.tensor([len(zlib.compress(a.tobytes(), level)) for a in _quantized(images)])


def sign_test(a, b) -> tuple[int, int, float]:
    r"""Paired sign test: on how many pairs is ``a > b``, and is that a significant majority?

    Args:
        a, b: paired scores of the same shape ``(N,)`` (e.g. per-seed correlations of two models
            with a reference).

    Returns:
        ``(wins, n, p)``: ``wins`` pairs with ``a > b`` among the ``n`` pairs that are not tied,
        and the exact two-sided p-value of the binomial test of ``wins ~ Bin(n, 1/2)``,
        :math:`p = \min\big(1, 2\,P(X \le \min(w, n - w))\big)` (``p = 1`` when ``n = 0``).
    """
    import math

    a, b = torch.as_tensor(a), torch.as_tensor(b)
    if a.dim() != 1 or a.shape != b.shape or a.numel() == 0:
        raise ValueError(f"a and b must be non-empty 1-D tensors of the same shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("a and b must be finite")
    d = a.double() - b.double().to(a.device)
    wins, n = int((d > 0).sum()), int((d != 0).sum())
    tail = sum(math.comb(n, k) for k in range(min(wins, n - wins) + 1)) / 2**n
    return wins, n, min(1.0, 2 * tail)
