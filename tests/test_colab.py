"""The Colab flavour (companion.colab): in sync with the MyST sources, and no MyST left in it."""
import json
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from companion import colab

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
OUT = ROOT / CONFIG["repository"]["path_to_book"]          # where the Colab button points
CHAPTERS = sorted(BOOK.glob("[0-9]*.md"))
BIB = colab.parse_bib((BOOK / "references.bib").read_text())


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("colab")
    if (OUT / "glue.json").exists():
        (out / "glue.json").write_text((OUT / "glue.json").read_text())
    repo = CONFIG["repository"]
    colab.build_all(BOOK, out, repo["url"], repo["branch"], folder=OUT.name)
    return out


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_colab_notebook_in_sync_with_its_source(md, regenerated):
    committed = OUT / f"{md.stem}.ipynb"
    assert committed.exists(), f"{committed.relative_to(ROOT)} missing: run `python -m companion.colab`"
    assert committed.read_text() == (regenerated / committed.name).read_text(), (
        f"{committed.relative_to(ROOT)} is out of sync with {md.name}: run `python -m companion.colab`")


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_no_myst_left_and_solutions_folded(md, regenerated):
    nb = nbformat.read(regenerated / f"{md.stem}.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    assert not re.findall(r"\{[\w:-]+\}`", text), "a MyST role is left"
    assert not re.findall(r"^(:::|```\{)", text, flags=re.M), "a MyST directive is left"
    assert not re.findall(r"^\$\$[ \t]*\(\S+\)[ \t]*$", text, flags=re.M), "an equation label is left"
    source = md.read_text()
    assert text.count("<details>") == len(re.findall(r"^:{3,}\{solution\}", source, flags=re.M))
    assert text.count("**Exercise ") >= len(re.findall(r"^:{3,}\{exercise\}", source, flags=re.M))
    code = lambda n: [c.source for c in n.cells if c.cell_type == "code"]  # noqa: E731
    assert code(nb) == code(nbformat.read(md.with_suffix(".ipynb"), as_version=4)), "code cells differ"


def test_glue_store_holds_only_known_chapters():
    store = json.loads((OUT / "glue.json").read_text())
    assert set(store) <= {md.stem for md in CHAPTERS}
    assert all(isinstance(v, str) for values in store.values() for v in values.values())


def test_citations_as_author_year():
    bib = colab.parse_bib("@article{a1,\n author = {Karras, Tero and Aittala, Miika and Laine, Samuli},\n"
                          " year = {2022}\n}\n@misc{b,\n author = {Ho, Jonathan and Salimans, Tim},\n"
                          " year = {2022}\n}\n@misc{c,\n author = {Rafa{\\l} Karczewski},\n year = {2025}\n}\n")
    assert colab.cite_text("a1", bib) == "(Karras et al. 2022)"
    assert colab.cite_text("a1, b", bib, textual=True) == "Karras et al. (2022); Ho and Salimans (2022)"
    assert colab.cite_text("c", bib) == "(Karczewski 2025)"
    with pytest.raises(ValueError, match="nokey"):
        colab.cite_text("nokey", bib)
    assert BIB["kadkhodaie2024generalization"] == ("Kadkhodaie et al.", "2024")


def test_convert_markdown_equations_exercises_glue_and_refs():
    text = ("(sec-a)=\n## Section A\n\n$$\nx = 1\n$$ (eq-a)\n\n$$\ny\n$$ (eq-b)\n\n"
            "See {eq}`eq-b`, {ref}`sec-a`, exercise {ref}`ex-b`, {ref}`this one <eq-a>`, {func}`cp.sde.VP`.\n"
            "Value {glue:text}`v`, formatted {glue:text}`v:.2f`, missing {glue:text}`w`.\n\n"
            ":::{exercise}\n:label: ex-a\nFirst.\n:::\n\n:::{solution} ex-a\n:class: dropdown\nYes.\n:::\n\n"
            ":::{exercise}\n:label: ex-b\nSecond.\n:::\n\n:::{admonition} Paper vs measured\n:class: note\n"
            "Close {cite}`kamb2025creativity`.\n:::\n")
    ctx = colab._Context(text, BIB, {"v": "0.12345"}, {})
    out = colab.convert_markdown(text, ctx)
    assert "\\tag{1}\n$$" in out and "\\tag{2}\n$$" in out and "(sec-a)=" not in out
    assert "See (2), Section A, exercise 2, this one, `cp.sde.VP`." in out
    assert "Value 0.12345, formatted 0.12, missing `[w]`." in out
    assert "**Exercise 1.** First." in out and "**Exercise 2.** Second." in out
    assert "<details>\n<summary><b>Solution</b> (click to show)</summary>\n\nYes.\n\n</details>" in out
    assert "> **Paper vs measured**\n>\n> Close (Kamb and Ganguli 2025)." in out
    fenced = ("```{math}\n:label: eq-c\nz = 2\n```\n\n```{figure} fig.png\n:alt: a plot\nThe caption.\n```\n"
              "Inline {math}`a^2` and {eq}`eq-c`.")
    out = colab.convert_markdown(fenced, colab._Context(fenced, BIB, {}, {}))
    assert out == "$$\nz = 2\n\\tag{1}\n$$\n\n![a plot](fig.png)\n\n*The caption.*\nInline $a^2$ and (1)."
    glued = ("```{glue:figure} ch2-strip\n:name: fig-strip\n:alt: curves\nThe strip.\n```\n"
             "As {numref}`fig-strip` shows.")
    out = colab.convert_markdown(glued, colab._Context(glued, BIB, {}, {}))
    assert out == "**Figure 1.** *The strip.*\nAs Figure 1 shows."
    with pytest.raises(ValueError, match="unclosed"):
        colab.convert_markdown(":::{exercise}\nno end\n", ctx)


def test_glue_values_read_from_an_executed_notebook(tmp_path):
    out = nbformat.v4.new_output("display_data", data={"application/papermill.record/text/plain": "'0.5'"},
                                 metadata={"scrapbook": {"name": "half",
                                                         "mime_prefix": "application/papermill.record/"}})
    cell = nbformat.v4.new_code_cell("glue('half', '0.5')", outputs=[out])
    nbformat.write(nbformat.v4.new_notebook(cells=[cell]), tmp_path / "x.ipynb")
    assert colab.glue_values(tmp_path / "x.ipynb") == {"half": "'0.5'"}
    # a Jupyter Book build keeps them in x.glue.json instead (un-prefixed mime types)
    (tmp_path / "x.glue.json").write_text(json.dumps({"third": {"data": {"text/plain": "'0.33'"}}}))
    assert colab.glue_values(tmp_path / "x.ipynb") == {"third": "'0.33'"}
    assert colab._format_glue("'0.5'", "") == "0.5" and colab._format_glue("0.123", ".1%") == "12.3%"


def test_every_bibliography_entry_is_parsed():
    """A malformed entry (e.g. a missing closing brace) swallows the next one: caught here."""
    text = (BOOK / "references.bib").read_text()
    assert len(BIB) == len(re.findall(r"^@\w+\s*\{", text, flags=re.M))
