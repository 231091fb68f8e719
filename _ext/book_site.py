"""Local Sphinx extension: the website as readers get it (loaded from ``_config.yml``).

Fixes that belong to the site, not to any chapter:

- **duplicate inline scripts.** Sphinx 7 writes some inline scripts twice (once registered with
  ``filename=None``, once with ``''``), so every page threw "Identifier 'THEBE_JS_URL' has
  already been declared". Fixed upstream in Sphinx 8.2, which Jupyter Book 1 does not allow; here
  each page keeps the first of every equal script.
- **static widgets.** The website cannot run Python, so a slider cell shows nothing there; the
  chapter shows a static figure instead. The embedded widget state (tens of kB a page) is dropped;
  ``nb_ipywidgets_js: {}`` in ``_config.yml`` drops the CDN widget scripts. On a live kernel the
  slider works as before.
- **numbers per chapter.** Sphinx numbers exercises (and figures, tables) across the whole book
  (Exercise 1–21) because the table of contents is not numbered; they are renumbered "N.k": N
  from the chapter's file name (``06_creativity_els`` → 6), k the rank on its page.
- **author–year bibliography.** The bibliography's labels are "Ho et al. 2020", as the citations
  in the text are (``bibtex_default_style: authoryear``).
- **a favicon**, so that browsers stop asking for a missing ``/favicon.ico``, and **no empty
  header bar** with a second search box (see :func:`configure_theme`); smaller headings on a
  phone (``static/book_site.css``).

MathJax is served from the site by ``sphinx-mathjax-offline`` (in ``extra_extensions``).
"""
from __future__ import annotations

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def _script_key(js):
    attrs = tuple(sorted((k, str(v)) for k, v in js.attributes.items()))
    return (js.filename or "", attrs)


def clean_scripts(app, pagename, templatename, context, doctree):
    """Drop repeated scripts and the embedded widget state from a page's ``script_files``."""
    files = context.get("script_files")
    if not files:
        return
    seen, kept = set(), []
    for js in files:
        key = _script_key(js)
        if key in seen or js.attributes.get("type") == WIDGET_STATE:
            continue
        seen.add(key)
        kept.append(js)
    context["script_files"] = kept


def chapter_number(docname: str) -> int | None:
    """The chapter number in a file name (``06_creativity_els`` → 6), or None."""
    m = re.match(r"(?:.*/)?(\d+)_", docname)
    return int(m.group(1)) if m else None


def number_per_chapter(app, env):
    """Renumber exercises, figures, tables ... "N.k": chapter N from the file name, k the rank on the page.

    Sphinx counts them across the whole book when the table of contents is not numbered (ours is
    not: chapter titles carry their numbers). A page without a chapter number counts from 1.
    """
    changed = set()
    for docname, types in env.toc_fignumbers.items():
        chapter = chapter_number(docname)
        for figtype, numbers in types.items():
            ranked = sorted(numbers, key=lambda ident: numbers[ident])
            new = {ident: ((chapter, k) if chapter is not None else (k,))
                   for k, ident in enumerate(ranked, 1)}
            if new != numbers:
                types[figtype] = new
                changed.add(docname)
    return sorted(changed)


def configure_theme(app, config):
    """A favicon, and no empty header bar with a second search box.

    pydata-sphinx-theme 0.17 (newer than sphinx-book-theme expects) fills its top navbar with a
    search field unless ``navbar_persistent`` is set; the sidebar already has one.
    """
    if not config.html_favicon:
        config.html_favicon = str(HERE / "favicon.svg")
    config.html_theme_options.setdefault("navbar_persistent", [])
    config.html_static_path.append(str(HERE / "static"))


def register_authoryear_style():
    """A pybtex style whose labels read like the citations in the text: "Ho et al. 2020"."""
    from pybtex.plugin import register_plugin
    from pybtex.richtext import Text
    from pybtex.style.formatting.unsrt import Style as Unsrt
    from pybtex.style.labels import BaseLabelStyle
    from pybtex.style.sorting.author_year_title import SortingStyle

    def last(person):
        return Text.from_latex(" ".join(person.prelast_names + person.last_names)).render_as("text")

    def who(entry):
        people = entry.persons.get("author") or entry.persons.get("editor") or []
        names = [last(p) for p in people]
        if not names:
            return Text.from_latex(entry.fields.get("title", entry.key)).render_as("text")
        if len(names) <= 2:
            return " and ".join(names)
        return f"{names[0]} et al."

    class AuthorYearLabels(BaseLabelStyle):
        def format_labels(self, sorted_entries):
            labels = [f"{who(e)} {e.fields.get('year', 'n.d.')}" for e in sorted_entries]
            seen = {}
            for label in labels:   # equal labels become "2021a", "2021b" in sorted order
                n = labels.count(label)
                seen[label] = seen.get(label, -1) + 1
                yield label + ("abcdefghijklmnopqrstuvwxyz"[seen[label]] if n > 1 else "")

    class AuthorYear(Unsrt):
        default_label_style = AuthorYearLabels
        default_sorting_style = SortingStyle

    register_plugin("pybtex.style.formatting", "authoryear", AuthorYear, force=True)


def setup(app):
    register_authoryear_style()
    app.connect("config-inited", configure_theme)
    app.add_css_file("book_site.css")
    app.connect("html-page-context", clean_scripts, priority=900)
    app.connect("env-get-updated", number_per_chapter, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
