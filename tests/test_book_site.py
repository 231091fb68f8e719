"""Unit tests of the local Sphinx extension _ext/book_site.py (the site fixes)."""
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "_ext"))
import book_site  # noqa: E402

pytest.importorskip("sphinx")
from sphinx.builders.html._assets import _JavaScript  # noqa: E402


def test_duplicate_inline_scripts_and_widget_state_are_dropped():
    body = 'const THEBE_JS_URL = "x"'
    files = [_JavaScript("_static/a.js"), _JavaScript(None, body=body), _JavaScript("", body=body),
             _JavaScript("_static/a.js"), _JavaScript(None, body="other"),
             _JavaScript(None, type=book_site.WIDGET_STATE, body="{}")]
    ctx = {"script_files": files}
    book_site.clean_scripts(None, "p", "page.html", ctx, None)
    assert [(js.filename or "", js.attributes.get("body")) for js in ctx["script_files"]] == [
        ("_static/a.js", None), ("", body), ("", "other")]


@pytest.mark.parametrize("docname, n", [("06_creativity_els", 6), ("book/01_x", 1), ("intro", None),
                                        ("api", None)])
def test_chapter_number_from_file_name(docname, n):
    assert book_site.chapter_number(docname) == n


def test_exercises_and_figures_are_numbered_per_chapter():
    env = SimpleNamespace(toc_fignumbers={
        "01_a": {"exercise": {"e2": (2,), "e1": (1,)}, "figure": {"f": (3,)}},
        "06_b": {"exercise": {"x": (5,), "y": (3,), "z": (4,)}},
        "intro": {"exercise": {"q": (6,)}},
    })
    changed = book_site.number_per_chapter(None, env)
    assert env.toc_fignumbers["01_a"]["exercise"] == {"e1": (1, 1), "e2": (1, 2)}
    assert env.toc_fignumbers["06_b"]["exercise"] == {"y": (6, 1), "z": (6, 2), "x": (6, 3)}
    assert env.toc_fignumbers["intro"]["exercise"] == {"q": (1,)}
    assert env.toc_fignumbers["01_a"]["figure"] == {"f": (1, 1)}
    assert sorted(changed) == ["01_a", "06_b", "intro"]
    assert book_site.number_per_chapter(None, env) == []   # idempotent


def test_bibliography_labels_are_author_year_in_utf8():
    from pybtex.database import parse_string
    from pybtex.plugin import find_plugin

    book_site.register_authoryear_style()
    bib = parse_string(r"""
@article{a, author = {Hyv{\"a}rinen, Aapo}, title = {T}, journal = {J}, year = {2005}}
@article{b, author = {Ho, J. and Jain, A. and Abbeel, P.}, title = {T}, journal = {J}, year = {2020}}
@article{c, author = {Song, Y. and Ermon, S.}, title = {T}, journal = {J}, year = {2019}}
@book{d, author = {Øksendal, Bernt}, title = {T}, publisher = {P}, year = {2003}}
@article{e1, author = {Song, Y. and Sohl, J. and Kingma, D.}, title = {B}, journal = {J}, year = {2021}}
@article{e2, author = {Song, J. and Meng, C. and Ermon, S.}, title = {A}, journal = {J}, year = {2021}}
""", "bibtex")
    style = find_plugin("pybtex.style.formatting", "authoryear")()
    labels = {e.key: e.label for e in style.format_entries(bib.entries.values())}
    assert labels == {"a": "Hyvärinen 2005", "b": "Ho et al. 2020", "c": "Song and Ermon 2019",
                      "d": "Øksendal 2003", "e1": "Song et al. 2021b", "e2": "Song et al. 2021a"}


def test_references_bib_names_are_utf8():
    text = (Path(__file__).resolve().parents[1] / "book" / "references.bib").read_text(encoding="utf-8")
    authors = [line for line in text.splitlines() if line.strip().startswith(("author", "editor"))]
    assert authors and not [a for a in authors if "\\" in a or "{\\" in a], "write names in UTF-8"
