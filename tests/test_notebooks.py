"""Each chapter's notebook executed alone, as a student on Colab would run it (slow: ``make notebooks``).

* quick profile: ``book/NN_name.ipynb`` copied alone into an empty folder, executed there with only the
  installed package (no repository files next to it);
* smoke profile (``COMPANION_PROFILE=smoke``): the same, through the chapter's *full* branch at reduced
  size, with an empty cache directory, so that no full branch can rot unexecuted.

Both fail when a glued value (a number quoted in the prose) is ``nan``.
"""
import shutil
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("[0-9]*.ipynb"))
pytestmark = pytest.mark.notebooks

#: chapters whose full branch loads a torchvision data set: the test writes a tiny copy first (in
#: torchvision's raw layout, which ``data.image_set`` reads itself: no torchvision needed)
NEEDS_MNIST = {"06_creativity_els"}


def write_tiny_mnist(root: Path, n: int = 96, seed: int = 0):
    """A tiny MNIST in torchvision's raw format (idx files) under ``root/MNIST/raw``: no download."""
    import numpy as np

    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        images = (rng.random((n, 28, 28)) < 0.2).astype(np.uint8) * 255
        labels = rng.integers(0, 10, n).astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(
            np.array([2051, n, 28, 28], dtype=">i4").tobytes() + images.tobytes())
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(np.array([2049, n], dtype=">i4").tobytes()
                                                         + labels.tobytes())


def execute_alone(nb_path: Path, folder: Path, monkeypatch, profile: str) -> dict:
    """Execute ``nb_path`` copied alone into ``folder``; return its glued values ``{name: text}``."""
    from nbclient import NotebookClient

    from companion.colab import glue_values

    folder.mkdir(exist_ok=True)
    copy = folder / nb_path.name
    shutil.copy(nb_path, copy)
    monkeypatch.setenv("COMPANION_PROFILE", profile)
    monkeypatch.setenv("COMPANION_CACHE", str(folder / "cache"))
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(copy, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    nbformat.write(nb, copy)
    assert sorted(p.name for p in folder.iterdir() if p.name != "cache") == [nb_path.name]
    return glue_values(copy)


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_chapter_runs_alone_in_an_empty_folder(nb_path, tmp_path, monkeypatch):
    glued = execute_alone(nb_path, tmp_path / "student", monkeypatch, "quick")
    assert not [k for k, v in glued.items() if "nan" in v.lower()], "nan in the prose"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=lambda p: p.stem)
def test_full_branch_at_smoke_size(nb_path, tmp_path, monkeypatch):
    folder = tmp_path / "student"
    if nb_path.stem in NEEDS_MNIST:
        write_tiny_mnist(folder / "cache" / "torchvision")
    glued = execute_alone(nb_path, folder, monkeypatch, "smoke")
    assert not [k for k, v in glued.items() if "nan" in v.lower()], "nan in the prose"
