"""Every cross-document glue role of the reproductions appendix names a key its chapter glues.

A cheap stand-in for the site build (``-W``), which fails on a missing key only after executing every
chapter: parse ``book/reproductions.md`` for ``{glue:text}`NN_x.md::key:fmt```, and check that
``book/NN_x.md`` exists and glues ``key``: literally (``glue("key", ...)``), through an f-string or
``"prefix" + ...`` name (``glue(f"ch8_{key}", ...)``) whose placeholder parts (split at "_") appear in
the chapter's source, or through a
variable (``glue(key, ...)``) when ``"key"`` is a string literal of the chapter.
"""
import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"
PAGE = BOOK / "reproductions.md"
ROLE = re.compile(r"\{glue(?::text)?\}`([^`:]+\.md)::([^`:]+):[^`]*`")
GLUE_CALL = re.compile(r"glue\(\s*(f?)([\"'])(.+?)\2(\s*\+)?")
GLUE_VAR = re.compile(r"glue\(\s*[A-Za-z_]\w*\s*,")


def glued_names(source: str) -> list[tuple[bool, str]]:
    """(is_pattern, name) of every ``glue(...)`` call in a chapter source; an f-string or a
    ``"prefix" + ...`` name is a pattern, the latter ending in a placeholder."""
    return [(bool(f or plus), name + ("{}" if plus else ""))
            for f, _, name, plus in GLUE_CALL.findall(source)]


def glues(source: str, key: str) -> bool:
    """Whether ``source`` glues ``key``, literally or via an f-string whose filled-in parts it contains."""
    low = source.lower()
    if GLUE_VAR.search(source) and re.search(rf"([\"']){re.escape(key)}\1", source):
        return True
    for is_f, name in glued_names(source):
        if not is_f:
            if name == key:
                return True
            continue
        parts = re.split(r"\{[^}]*\}", name)
        pattern = "(.+?)".join(map(re.escape, parts))
        m = re.fullmatch(pattern, key)
        if m and all(w.lower() in low for g in m.groups() for w in g.split("_")):
            return True
    return False


def missing_keys(page: str, book: Path) -> list[str]:
    """``file::key`` of every role of ``page`` whose chapter does not exist or does not glue the key."""
    bad = []
    for doc, key in ROLE.findall(page):
        path = book / doc
        if not path.exists() or not glues(path.read_text(), key):
            bad.append(f"{doc}::{key}")
    return bad


def test_key_check_detects_missing_and_renamed_keys(tmp_path):
    (tmp_path / "01_x.md").write_text(
        'cp.runtime.glue("ch1_a", 1)\n'
        'glues = {"ratio": 2}\nfor key, val in glues.items():\n    cp.runtime.glue(f"ch1_{key}", val)\n'
        'named = {"ch1_c": 3}\nfor key, val in named.items():\n    cp.runtime.glue(key, val)\n'
        'for k in ("GMM vs PNG",):\n    cp.runtime.glue("ch1_rho_" + k.replace(" vs ", "_").lower(), 0)\n')
    good = ["ch1_a", "ch1_ratio", "ch1_c", "ch1_rho_gmm_png"]
    bad = ["ch1_rho_gmm_zip", "ch1_b", "ch1_rate"]
    page = " ".join(f"{{glue:text}}`01_x.md::{k}:s`" for k in good + bad) + " {glue:text}`02_y.md::ch2_a:s`"
    assert missing_keys(page, tmp_path) == [f"01_x.md::{k}" for k in bad] + ["02_y.md::ch2_a"]


@pytest.mark.skipif(not PAGE.exists(), reason="book/reproductions.md not written yet (issue 15)")
def test_every_appendix_key_is_glued_by_its_chapter():
    page = PAGE.read_text()
    assert ROLE.findall(page), "no cross-document glue roles found"
    assert not missing_keys(page, BOOK)
