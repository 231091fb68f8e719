"""Figures fit the website's column: wide strips wrap into rows (companion.plotting, widgets)."""
import matplotlib.pyplot as plt
import numpy as np
import pytest

import companion as cp
from companion import plotting


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def limit_px():
    return plotting.COLUMN_PX / plotting.MIN_SCALE


def test_max_width_matches_column_and_dpi():
    assert plotting.max_width(100) * 100 <= limit_px()
    assert plotting.max_width(200) == pytest.approx(plotting.max_width(100) / 2)


@pytest.mark.parametrize("n, size, expected", [
    (2, 3.6, (1, 2, 3.6)),      # fits: unchanged
    (4, 2.6, (1, 4, 2.4)),      # nearly fits: panels shrink a little, one row
    (6, 2.8, (2, 3, 2.8)),      # Chapter 2's strip: two rows of three
    (5, 3.0, (2, 3, 3.0)),      # balanced rows: 3 + 2, not 4 + 1
    (1, 20.0, (1, 1, 9.6)),     # one huge panel is drawn smaller
])
def test_wrap_layouts(n, size, expected):
    rows, per_row, panel = plotting.wrap(n, size, width=9.6)
    assert (rows, per_row) == expected[:2]
    assert panel == pytest.approx(expected[2])
    assert rows * per_row >= n and per_row * panel <= 9.6 + 1e-9


@pytest.mark.parametrize("bad, name", [(dict(n=0, size=1.0), "n"), (dict(n=2, size=0.0), "size"),
                                       (dict(n=2, size=1.0, shrink=0), "shrink")])
def test_wrap_rejects_bad_input(bad, name):
    with pytest.raises(ValueError, match=name):
        plotting.wrap(**bad)


def test_wide_strip_wraps_and_keeps_axes_shape():
    fig, axes = plotting.subplots(1, 6, size=2.8, sharey=True)
    assert axes.shape == (6,)
    assert len([a for a in fig.axes if a.get_visible()]) == 6
    for ax in axes:
        ax.plot([0, 1], [0, 1]); ax.set_xlabel("$x$"); ax.set_title("t = 0.5")
    assert plotting.natural_width_px(fig) <= limit_px()
    fig2, axes2 = plotting.subplots(1, 5, size=3.0, squeeze=False)
    assert axes2.shape == (1, 5)
    assert len(fig2.axes) == 6 and not fig2.axes[-1].get_visible()


def test_strip_that_fits_stays_one_row():
    fig, axes = plotting.subplots(1, 2, size=3.6)
    assert axes.shape == (2,) and len(fig.axes) == 2
    assert tuple(fig.get_size_inches()) == pytest.approx((7.2, 3.6 * 0.9))


def test_several_rows_too_wide_get_smaller_panels():
    fig, axes = plotting.subplots(2, 4, size=3.0)
    assert axes.shape == (2, 4)
    assert fig.get_size_inches()[0] <= plotting.max_width() + 1e-9


def test_explicit_figsize_is_kept():
    fig, _ = plotting.subplots(1, 4, figsize=(11, 2))
    assert tuple(fig.get_size_inches()) == pytest.approx((11, 2))


def test_small_multiples_wraps_and_titles_every_panel():
    drawn = []
    fig = cp.widgets.small_multiples(lambda v, ax: drawn.append(v) or ax.plot([0, v]),
                                     [0.0, 0.1, 0.2, 0.5, 0.8, 1.0], size=3.0)
    assert drawn == [0.0, 0.1, 0.2, 0.5, 0.8, 1.0]
    visible = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in visible] == [f"t = {v:g}" for v in drawn]
    assert len({round(a.get_position().y0, 3) for a in visible}) == 2   # two rows
    assert plotting.natural_width_px(fig) <= limit_px()


def test_image_grid_of_many_columns_fits():
    x = np.zeros((40, 1, 8, 8), dtype=np.float32)
    ax = plotting.image_grid(x, nrow=40)
    assert plotting.natural_width_px(ax.figure) <= limit_px()


def test_slider_still_works_on_a_live_kernel():
    pytest.importorskip("ipywidgets")
    drawn = []
    widget = cp.widgets.slider(lambda v, ax: drawn.append(v), [0.0, 0.5, 1.0])
    slider = widget.children[0]
    assert (slider.min, slider.max) == (0, 2)
    slider.value = 2          # moving the slider redraws at that value
    assert drawn[-1] == 1.0
