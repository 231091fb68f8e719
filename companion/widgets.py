"""Interactive explorers with a static fallback.

On a live kernel (Jupyter, Colab) :func:`slider` shows an ipywidgets slider that redraws a figure;
on the website, which cannot run Python, the chapter shows a static figure drawn by the same
function at a few fixed values (see :func:`small_multiples`).
"""
from __future__ import annotations

from typing import Callable, Sequence

import matplotlib.pyplot as plt

from .plotting import subplots

__all__ = ["slider", "small_multiples"]


def small_multiples(draw: Callable, values: Sequence, label: str = "t", size: float = 2.6):
    """Static fallback: call ``draw(value, ax)`` for each value in a strip of panels.

    The strip wraps into balanced rows when one row would be too wide for the website's column
    (see :func:`companion.plotting.subplots`). Returns the figure.
    """
    values = list(values)
    if not values:
        raise ValueError("values must not be empty")
    fig, axes = subplots(1, len(values), size=size, squeeze=False)
    for v, ax in zip(values, axes[0]):
        draw(v, ax)
        ax.set_title(f"{label} = {v:g}")
    return fig


def slider(draw: Callable, values: Sequence, label: str = "t"):
    """An ipywidgets slider over ``values`` that calls ``draw(value, ax)`` on a fresh axes.

    Returns the ``ipywidgets`` widget (displayed by the notebook), or ``None`` when ipywidgets is
    not installed, in which case the static figure is the whole story.
    """
    values = list(values)
    if not values:
        raise ValueError("values must not be empty")
    try:
        import ipywidgets as w
    except ImportError:  # pragma: no cover - ipywidgets is a dependency
        return None

    def update(i):
        fig, ax = plt.subplots(figsize=(3.6, 3.6))
        draw(values[i], ax)
        ax.set_title(f"{label} = {values[i]:g}")
        plt.show()

    return w.interactive(update, i=w.IntSlider(min=0, max=len(values) - 1, value=0, description=f"{label} index"))
