"""Checks of the built website (`make site` runs them after `jupyter-book build`)."""
import re
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.site

ROOT = Path(__file__).resolve().parents[1]
HTML = ROOT / "_build" / "html"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.md"))


def page(name):
    path = HTML / f"{name}.html"
    assert path.exists(), f"{path} missing: build the book first (make book)"
    return path.read_text()


@pytest.mark.parametrize("name", ["intro", "notation", "api", "bibliography"])
def test_pages_exist(name):
    assert len(page(name)) > 1000


def test_api_reference_has_docstrings():
    html = page("api")
    for name in ("GaussianMixture", "marginal", "check_vp_coefficients", "choose"):
        assert name in html


@pytest.mark.parametrize("name", CHAPTERS)
def test_chapter_has_executed_outputs(name):
    html = page(name)
    assert "cell_output" in html, "no executed outputs on the page"
    assert "profile: quick" in html or "profile: full" in html


@pytest.mark.parametrize("name", CHAPTERS)
def test_colab_button_targets_committed_notebook(name):
    html = page(name)
    repo = CONFIG["repository"]["url"].removeprefix("https://github.com/")
    links = set(re.findall(r'href="(https://colab\.research\.google\.com/[^"]+)"', html))
    folder = CONFIG["repository"]["path_to_book"]      # the generated Colab flavour (companion.colab)
    expected = (f"https://colab.research.google.com/github/{repo}/blob/{CONFIG['repository']['branch']}"
                f"/{folder}/{name}.ipynb")
    assert expected in links, f"Colab links found: {links}"
    assert (ROOT / folder / f"{name}.ipynb").exists()
