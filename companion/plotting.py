"""One figure style for the whole book, image grids, and 2-D density/particle plots."""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["use_style", "subplots", "image_grid", "density_2d", "particles", "grid_2d"]

STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 120,
    "figure.figsize": (6.0, 4.0),
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "image.cmap": "viridis",
    "lines.linewidth": 1.6,
}


def use_style() -> None:
    """Apply the book's matplotlib style (called once by ``import companion``)."""
    mpl.rcParams.update(STYLE)


def subplots(nrows: int = 1, ncols: int = 1, size: float = 3.2, **kw):
    """``plt.subplots`` with panels of ``size`` inches and a tight layout."""
    kw.setdefault("figsize", (size * ncols, size * nrows * 0.9))
    kw.setdefault("layout", "constrained")
    return plt.subplots(nrows, ncols, **kw)


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def image_grid(images, nrow: int | None = None, ax=None, title: str | None = None, vmin=-1.0, vmax=1.0):
    """Show a batch ``(B, C, H, W)`` (values in [vmin, vmax], default [-1, 1]) as one grid image.

    Returns the axes. One-channel images are drawn in grey, three-channel ones in colour.
    """
    x = _np(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must have shape (B, 1 or 3, H, W), got {x.shape}")
    B, C, H, W = x.shape
    nrow = nrow or int(np.ceil(np.sqrt(B)))
    ncol = int(np.ceil(B / nrow))
    pad = 1
    canvas = np.full((ncol * (H + pad) + pad, nrow * (W + pad) + pad, C), vmax, dtype=np.float32)
    for i in range(B):
        r, c = divmod(i, nrow)
        canvas[pad + r * (H + pad): pad + r * (H + pad) + H, pad + c * (W + pad): pad + c * (W + pad) + W] = x[i].transpose(1, 2, 0)
    canvas = np.clip((canvas - vmin) / (vmax - vmin), 0, 1)
    if ax is None:
        _, ax = plt.subplots(figsize=(0.45 * nrow + 0.5, 0.45 * ncol + 0.5))
    ax.imshow(canvas[..., 0] if C == 1 else canvas, cmap="gray" if C == 1 else None, vmin=0, vmax=1)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def grid_2d(extent: float = 6.0, n: int = 200, dtype=torch.float64):
    """A square grid on ``[-extent, extent]²``: returns ``(xx, yy, points)`` with points ``(n*n, 2)``."""
    lin = torch.linspace(-extent, extent, n, dtype=dtype)
    xx, yy = torch.meshgrid(lin, lin, indexing="xy")
    return xx, yy, torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)


def density_2d(log_prob, extent: float = 6.0, n: int = 200, ax=None, title: str | None = None, cmap="magma"):
    """Image of ``exp(log_prob(points))`` on ``[-extent, extent]²``; ``log_prob`` maps ``(N, 2)`` to ``(N,)``."""
    xx, yy, pts = grid_2d(extent, n)
    with torch.no_grad():
        dens = torch.exp(log_prob(pts)).reshape(n, n)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(_np(dens), origin="lower", extent=(-extent, extent, -extent, extent), cmap=cmap, aspect="equal")
    ax.grid(False)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
    return ax


def particles(x, ax=None, extent: float | None = 6.0, title: str | None = None, **kw):
    """Scatter plot of 2-D points ``(N, 2)``."""
    pts = _np(x)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"x must have shape (N, 2), got {pts.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 3.2))
    kw.setdefault("s", 2)
    kw.setdefault("alpha", 0.5)
    ax.scatter(pts[:, 0], pts[:, 1], **kw)
    if extent is not None:
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)
    return ax
