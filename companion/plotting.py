"""One figure style for the whole book, image grids, and 2-D density/particle plots.

Figures are sized for the website's text column: ``COLUMN_PX`` pixels wide, and every figure
should be shown there at no less than ``MIN_SCALE`` of its natural size (so a 10 pt label stays
at least 7.5 pt). :func:`max_width` is the widest figure, in inches, that allows this;
:func:`subplots` wraps a one-row strip of panels that would be wider into several rows.
"""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = ["use_style", "subplots", "max_width", "wrap", "natural_width_px", "image_grid",
           "density_2d", "particles", "grid_2d", "COLUMN_PX", "MIN_SCALE"]

#: width in CSS pixels that a cell output gets on the website: 676 in a 1280-px-wide browser
#: window (sphinx-book-theme with both sidebars; 745 at 1366 px, at most 790)
COLUMN_PX = 676
#: every figure is shown at no less than this fraction of its natural size
MIN_SCALE = 0.75
#: a saved figure (``bbox_inches="tight"``) can be a little wider than its ``figsize``
_MARGIN = 0.95

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


def max_width(dpi: float | None = None) -> float:
    """Widest figure in inches shown at ``>= MIN_SCALE`` of its natural size in the column.

    The notebook shows a figure at ``dpi`` (default ``rcParams["figure.dpi"]``) pixels per inch,
    and the website scales an image wider than the column down to ``COLUMN_PX``; a safety
    margin covers labels that a tight bounding box adds. 8.6 inches at the default 100 dpi.
    """
    dpi = dpi or mpl.rcParams["figure.dpi"]
    return _MARGIN * COLUMN_PX / MIN_SCALE / dpi


def wrap(n: int, size: float, width: float | None = None, shrink: float = 0.8) -> tuple[int, int, float]:
    """Lay ``n`` panels of ``size`` inches out in rows no wider than ``width`` (default :func:`max_width`).

    Panels may shrink to ``shrink * size`` before the strip wraps; rows are balanced (five panels
    that need two rows go 3 + 2, not 4 + 1). Returns ``(rows, per_row, panel_size)``.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if not size > 0:
        raise ValueError(f"size must be > 0, got {size!r}")
    if not 0 < shrink <= 1:
        raise ValueError(f"shrink must be in (0, 1], got {shrink!r}")
    width = max_width() if width is None else width
    per_row = max(1, min(n, int(width // (shrink * size))))
    rows = -(-n // per_row)
    per_row = -(-n // rows)
    return rows, per_row, min(size, width / per_row)


def subplots(nrows: int = 1, ncols: int = 1, size: float = 3.2, **kw):
    """``plt.subplots`` with square-ish panels of ``size`` inches and a constrained layout.

    A one-row strip too wide for the column (see :func:`max_width`) is wrapped into balanced rows
    (:func:`wrap`); the axes come back in the shape the unwrapped call would give (``(ncols,)``,
    or ``(1, ncols)`` with ``squeeze=False``), unused panels hidden, so callers need not know.
    Several rows that are too wide get smaller panels instead. An explicit ``figsize`` is kept.
    """
    kw.setdefault("layout", "constrained")
    if "figsize" in kw:
        return plt.subplots(nrows, ncols, **kw)
    if nrows == 1 and ncols > 1:
        rows, per_row, size = wrap(ncols, size)
    else:
        rows, per_row, size = nrows, ncols, min(size, max_width() / ncols)
    if rows == nrows:
        return plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 0.9), **kw)
    squeeze = kw.pop("squeeze", True)
    fig, grid = plt.subplots(rows, per_row, figsize=(size * per_row, size * rows * 0.9),
                             squeeze=False, **kw)
    grid = grid.ravel()
    for ax in grid[ncols:]:
        ax.set_visible(False)
    axes = grid[:ncols]
    return fig, (axes if squeeze else axes.reshape(1, ncols))


def natural_width_px(fig) -> int:
    """Width in pixels of ``fig`` as a notebook shows it (PNG, ``figure.dpi``, tight bounding box).

    Compare with ``COLUMN_PX / MIN_SCALE``: a wider figure is shrunk below ``MIN_SCALE`` on the site.
    """
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    return int.from_bytes(buf.getvalue()[16:20], "big")  # PNG header: IHDR width


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
        w, h = 0.45 * nrow + 0.5, 0.45 * ncol + 0.5
        scale = min(1.0, max_width() / w)  # a wide grid is drawn smaller, not shown shrunk
        _, ax = plt.subplots(figsize=(w * scale, h * scale))
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
