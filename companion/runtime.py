"""Where and how the book's code runs: device, seeding, profile and cache directory.

Every chapter starts with ``cp.runtime.seed(0)`` and reads its sizes from
``cp.runtime.choose(quick=..., full=..., smoke=...)``. The *quick* profile is what CI executes on a
2-core CPU; the *full* profile runs at paper scale and is the default when CUDA is present. The
*smoke* profile is for CI only: the full branch (its keys, its code paths) at reduced size, so no
full branch can rot unexecuted. Set ``COMPANION_PROFILE=quick|full|smoke`` to override the default.
"""
from __future__ import annotations

import json
import os
import platform
import random
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

PROFILES = ("quick", "full", "smoke")

__all__ = ["PROFILES", "device", "seed", "profile", "choose", "cache_dir", "in_colab", "describe", "format_config", "glue",
           "full_profile", "full_profile_line", "full_profile_table",
           "table", "expect"]


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


def choose(quick, full, smoke=None, opt_in=None):
    """Return ``quick`` or ``full`` according to :func:`profile`, or the full table at smoke size.

    Example: ``cfg = choose(quick=dict(n=1797, steps=2000), full=dict(n=60000, steps=200000),
    smoke=dict(steps=20))``. In the ``smoke`` profile (``COMPANION_PROFILE=smoke``, for CI) the
    result is ``full`` updated with ``smoke`` (a dict of reduced sizes; ``quick`` when omitted),
    so the full branch runs end to end at a size a CPU finishes in seconds. For tables that are
    not dicts, ``smoke`` (or ``quick``) itself is returned.

    ``opt_in`` (a sentence stating the full profile's time, e.g. :func:`full_profile_line`) makes a
    chapter's full profile opt-in: when ``full`` is only the default (CUDA present,
    ``COMPANION_PROFILE`` unset), the sentence is printed and the chapter runs the quick profile
    (``COMPANION_PROFILE`` is set to ``quick`` for the rest of this process, so that every later
    :func:`profile` agrees). ``COMPANION_PROFILE=full`` runs the full profile.
    """
    if opt_in is not None and not isinstance(opt_in, str):
        raise TypeError(f"opt_in must be None or a str stating the time, got {type(opt_in).__name__}")
    if opt_in is not None and not os.environ.get("COMPANION_PROFILE", "").strip() and profile() == "full":
        print(f"The full profile of this chapter is opt-in:\n{opt_in}\n" + textwrap.fill(
            "Running the quick profile; set COMPANION_PROFILE=full before the setup cell to run "
            "the full one.", 86))
        os.environ["COMPANION_PROFILE"] = "quick"
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


def expect(condition, message: str) -> bool:
    """Assert a measured property of a *trained* model (a slope, a gain), except at smoke size.

    In the ``quick`` and ``full`` profiles a false ``condition`` raises ``AssertionError(message)``,
    like ``assert``. The ``smoke`` profile trains for a few steps only to exercise the full branch's
    code, so there such a property cannot hold: it prints ``message`` and goes on. Use plain
    ``assert`` for checks that hold whatever the training (identities, exact formulas).
    Returns ``bool(condition)``.
    """
    if not isinstance(message, str):
        raise TypeError(f"message must be a str, got {type(message).__name__}")
    ok = bool(condition)
    if not ok:
        if profile() != "smoke":
            raise AssertionError(message)
        print(f"smoke profile (few training steps), not checked: {message}")
    return ok


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


def full_profile() -> dict:
    """The measured or estimated cost of every chapter's full profile, ``{chapter: row}``.

    Read from ``companion/results/full_profile.json``, written by ``benchmarks/full_profile.py``:
    per chapter, the peak memory (``peak_gb``; ``memory`` says whether measured), the CPU time
    (``cpu_s``; measured, or extrapolated as ``cpu_how`` says) and the T4 time (``t4_s``; ``t4_how``
    says how it was obtained: for training, an ESTIMATE from FLOPs and an assumed throughput).
    An empty dict when the file is absent.
    """
    path = Path(__file__).resolve().parent / "results" / "full_profile.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _cost(row: dict) -> tuple[str, str, str]:
    """(peak memory, CPU time, T4 time) of a row of :func:`full_profile`, as short text."""
    low = "≥ " if row["kind"] == "notebook" and not row["finished"] else ""
    est = "" if row["kind"] == "notebook" else "est. "
    return f"{low}{row['peak_gb']:.1f} GB", f"{low}{_duration(row['cpu_s'])}", f"{low}{est}{_duration(row['t4_s'])}"


def full_profile_line(chapter: str) -> str:
    """One sentence on ``chapter``'s full profile (see :func:`full_profile`), for its profile cell
    (wrapped at 86 characters, the book's column)."""
    if not isinstance(chapter, str):
        raise TypeError(f"chapter must be a str such as '06_creativity_els', got {type(chapter).__name__}")
    row = full_profile().get(chapter)
    if row is None:
        return f"full profile of {chapter}: not measured (run benchmarks/full_profile.py)"
    mem, cpu, t4 = _cost(row)
    failed = f"; FAILED at {row['error']}" if "error" in row else ""
    if row["kind"] == "notebook":
        stopped = "" if row["finished"] else ", stopped by the time limit"
        text = (f"full profile: peak memory {mem}, {cpu} on one CPU core (measured "
                f"{row['measured_on']}{stopped}); its cells compute on the CPU, so a Colab T4 "
                f"runtime should take about as long (assumed: its CPU core is as fast){failed}")
    else:
        text = (f"full profile: peak memory {mem} (extrapolated from smaller batches); T4 {t4} "
                f"({row['t4_how']}); one CPU core {cpu}{failed}")
    return textwrap.fill(text, 86)


def full_profile_table(width: int = 86) -> str:
    """:func:`full_profile` as a printed table, one chapter a row, with its notes; lines ≤ ``width``."""
    lines, notes = [f"{'chapter':24} {'peak memory':>12} {'one CPU core':>14} {'T4':>12}  note"], []
    for chapter, row in sorted(full_profile().items()):
        note = f"FAILED at {row['error']}" if "error" in row else row["t4_how"]
        if note not in notes:
            notes.append(note)
        mem, cpu, t4 = _cost(row)
        lines.append(f"{chapter:24} {mem:>12} {cpu:>14} {t4:>12}  [{notes.index(note) + 1}]")
    for i, note in enumerate(notes, 1):
        lines += textwrap.wrap(f"[{i}] {note}", width, subsequent_indent="    ")
    return "\n".join(lines)


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
