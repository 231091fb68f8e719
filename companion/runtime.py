"""Where and how the book's code runs: device, seeding, profile and cache directory.

Every chapter starts with ``cp.runtime.seed(0)`` and reads its sizes from
``cp.runtime.choose(quick=..., full=..., smoke=...)``. The *quick* profile is what CI executes on a
2-core CPU; the *full* profile runs at paper scale and is the default when CUDA is present. The
*smoke* profile is for CI only: the full branch (its keys, its code paths) at reduced size, so no
full branch can rot unexecuted. Set ``COMPANION_PROFILE=quick|full|smoke`` to override the default.
"""
from __future__ import annotations

import os
import platform
import random
import sys
from pathlib import Path

import numpy as np
import torch

PROFILES = ("quick", "full", "smoke")

__all__ = ["PROFILES", "device", "seed", "profile", "choose", "cache_dir", "in_colab", "describe", "format_config", "glue",
           "table"]


def device() -> torch.device:
    """The best available device: ``cuda``, then Apple ``mps``, then ``cpu``."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed(n: int = 0) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) with ``n``.

    Returns a fresh CPU ``torch.Generator`` seeded with ``n`` for functions that take a
    ``generator`` argument.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"seed: n must be a non-negative int, got {n!r}")
    random.seed(n)
    np.random.seed(n)
    torch.manual_seed(n)
    return torch.Generator().manual_seed(n)


def profile() -> str:
    """The active profile, ``"quick"``, ``"full"`` or ``"smoke"`` (only when asked for).

    ``COMPANION_PROFILE`` decides when set; otherwise ``"full"`` if CUDA is available, else
    ``"quick"``. Any other value of the variable raises ``ValueError``.
    """
    value = os.environ.get("COMPANION_PROFILE", "").strip()
    if value:
        if value not in PROFILES:
            raise ValueError(
                f"COMPANION_PROFILE must be one of {PROFILES}, got {value!r}"
            )
        return value
    return "full" if torch.cuda.is_available() else "quick"


def choose(quick, full, smoke=None):
    """Return ``quick`` or ``full`` according to :func:`profile`, or the full table at smoke size.

    Example: ``cfg = choose(quick=dict(n=1797, steps=2000), full=dict(n=60000, steps=200000),
    smoke=dict(steps=20))``. In the ``smoke`` profile (``COMPANION_PROFILE=smoke``, for CI) the
    result is ``full`` updated with ``smoke`` (a dict of reduced sizes; ``quick`` when omitted),
    so the full branch runs end to end at a size a CPU finishes in seconds. For tables that are
    not dicts, ``smoke`` (or ``quick``) itself is returned.
    """
    active = profile()
    if active != "smoke":
        return full if active == "full" else quick
    small = quick if smoke is None else smoke
    if isinstance(full, dict) and isinstance(small, dict):
        return {**full, **small}
    return small


def cache_dir() -> Path:
    """Directory for cached models and data (``COMPANION_CACHE`` or ``~/.cache/companion``)."""
    path = Path(os.environ.get("COMPANION_CACHE", Path.home() / ".cache" / "companion"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def in_colab() -> bool:
    """True when running inside Google Colab."""
    return "google.colab" in sys.modules


def describe() -> str:
    """One line naming the device, the profile and the versions, printed by every setup cell."""
    from . import __version__

    return (
        f"companion {__version__} | torch {torch.__version__} | python {platform.python_version()}"
        f" | device: {device().type} | profile: {profile()}"
    )


def format_config(cfg: dict, width: int = 86) -> str:
    """The active profile and a chapter's size table, one ``key = value`` per line, for printing.

    ``cfg`` is the dict :func:`choose` returned; lines longer than ``width`` characters are cut with
    an ellipsis, so the printed table fits the book's column.
    """
    if not isinstance(cfg, dict):
        raise TypeError(f"cfg must be a dict (what runtime.choose returns), got {type(cfg).__name__}")
    lines = [f"profile: {profile()}"]
    for key, value in cfg.items():
        line = f"  {key} = {value!r}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)


def glue(name: str, value, display: bool = False):
    """Make ``value`` quotable in a chapter's prose as ``{glue:text}`name```.

    Uses ``myst_nb.glue`` when the book is being built; elsewhere (Colab, plain Jupyter) it does
    nothing, so a chapter runs without the book's tools installed.
    """
    try:
        from myst_nb import glue as _glue
    except ImportError:
        return
    _glue(name, value, display=display)


def table(header, rows, digits: int = 4):
    """A table shown as a table: an ``IPython.display.Markdown`` pipe table (the plain string when
    IPython is missing), so printed results stay within the book's column instead of scrolling.

    ``header`` is a sequence of column titles; ``rows`` a sequence of rows of the same length. A float
    is written with ``digits`` digits after the point, anything else with ``str``; columns of
    numbers (or of strings that read as numbers) are right-aligned. Pass it to
    ``IPython.display.display``; on the website a chapter shows it as a table when its front matter
    sets ``mystnb: render_markdown_format: myst`` (MyST-NB's default, CommonMark, has no tables).
    """
    if isinstance(header, str) or not hasattr(header, "__len__") or len(header) == 0:
        raise TypeError("header must be a non-empty sequence of column titles")
    if not isinstance(digits, int) or digits < 0:
        raise ValueError(f"digits must be a non-negative int, got {digits!r}")
    rows = [list(r) for r in rows]
    for i, r in enumerate(rows):
        if len(r) != len(header):
            raise ValueError(f"rows[{i}] has {len(r)} cells, header has {len(header)}")

    def cell(v):
        text = f"{v:.{digits}f}" if isinstance(v, float) else str(v)
        return text.replace("|", "\\|")

    def is_number(v):
        if isinstance(v, (int, float)):
            return True
        try:
            float(v)
        except (TypeError, ValueError):
            return False
        return isinstance(v, str)

    numeric = [bool(rows) and all(is_number(r[j]) for r in rows) for j in range(len(header))]
    lines = ["| " + " | ".join(map(str, header)) + " |",
             "|" + "".join("---:|" if n else "---|" for n in numeric)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    text = "\n".join(lines)
    try:
        from IPython.display import Markdown
    except ImportError:
        return text
    return Markdown(text)
