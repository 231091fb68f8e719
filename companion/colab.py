r"""The Colab flavour of the book: plain Jupyter notebooks generated from the MyST chapters.

Colab does not render MyST, so the notebooks the website's Colab button opens are generated from
``book/NN_name.md`` (the source of truth) by :func:`colab_notebook`:

* ``solution`` blocks become collapsed ``<details>`` blocks, exercises are numbered
  ("**Exercise 3.**") and admonitions become block quotes;
* the ``cite`` and ``cite:t`` roles become author–year text from ``book/references.bib``
  ("(Karras et al. 2022)", "Karras et al. (2022)");
* labelled equations ``$$ … $$ (label)`` get ``\tag{n}`` and the ``eq`` role becomes "(n)"; the
  ``ref`` role becomes the exercise number or section title it points to, the ``doc`` role a link
  to the other chapter's Colab notebook;
* the ``glue:text`` role becomes the value computed by the website's build, read from a small
  store (``colab/glue.json``) that :func:`glue_values` fills from executed notebooks; a value not
  in the store is shown as ``[name]`` (a number the cells above compute).

Command line (from the repository root)::

    python -m companion.colab                                      # regenerate colab/*.ipynb
    python -m companion.colab --glue-from _build/jupyter_execute   # first refresh colab/glue.json

A test regenerates every notebook and compares it with the committed one.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

__all__ = ["parse_bib", "cite_text", "glue_values", "convert_markdown", "colab_notebook", "build_all", "main"]

_ACCENTS = {"\\'": "\u0301", '\\"': "\u0308", "\\`": "\u0300", "\\^": "\u0302", "\\~": "\u0303"}
_LETTERS = {"\\l": "ł", "\\o": "ø", "\\ss": "ß", "\\L": "Ł", "\\O": "Ø"}


def _latex_to_text(s: str) -> str:
    import unicodedata

    for cmd, letter in _LETTERS.items():
        s = re.sub(re.escape(cmd) + r"(?![a-zA-Z])", letter, s)
    for cmd, mark in _ACCENTS.items():
        s = re.sub(re.escape(cmd) + r"\{?([a-zA-Z])\}?", lambda m: m.group(1) + mark, s)
    return unicodedata.normalize("NFC", s.replace("{", "").replace("}", "").replace("~", " "))


def parse_bib(text: str) -> dict:
    """``{key: (authors, year)}`` from BibTeX text; ``authors`` is "A", "A and B" or "A et al."."""
    entries = {}
    for m in re.finditer(r"@\w+\s*\{\s*([^,\s]+)\s*,(.*?)\n\}", text, flags=re.S):
        key, body = m.group(1), m.group(2)
        fields = dict((k.lower(), v) for k, v in re.findall(r"(\w+)\s*=\s*\{((?:[^{}]|\{[^{}]*\})*)\}", body))
        names = [n.strip() for n in re.split(r"\s+and\s+", fields.get("author", key))]
        last = [_latex_to_text(n.split(",")[0] if "," in n else n.split()[-1]) for n in names if n]
        authors = last[0] if len(last) == 1 else " and ".join(last) if len(last) == 2 else f"{last[0]} et al."
        entries[key] = (authors, fields.get("year", "n.d."))
    return entries


def cite_text(keys: str, bib: dict, textual: bool = False) -> str:
    """Author–year text for the ``cite`` role (parenthetical) or the ``cite:t`` role (textual).

    ``keys``: comma-separated BibTeX keys; ``bib``: :func:`parse_bib`'s dict.
    """
    parts = []
    for key in (k.strip() for k in keys.split(",")):
        if key not in bib:
            raise ValueError(f"citation key {key!r} is not in references.bib")
        authors, year = bib[key]
        parts.append(f"{authors} ({year})" if textual else f"{authors} {year}")
    return "; ".join(parts) if textual else "(" + "; ".join(parts) + ")"


def glue_values(executed_notebook) -> dict:
    """``{name: text}`` of every value glued (``myst_nb.glue``) in an executed ``.ipynb`` file.

    A Jupyter Book build moves them out of the notebook into ``NN_name.glue.json`` next to it
    (``_build/jupyter_execute``); that file is read when it exists.
    """
    import nbformat

    sidecar = Path(executed_notebook).with_suffix(".glue.json")
    if sidecar.exists():
        return {name: out["data"]["text/plain"] for name, out in json.loads(sidecar.read_text()).items()
                if "text/plain" in out.get("data", {})}
    nb = nbformat.read(str(executed_notebook), as_version=4)
    values = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            meta = out.get("metadata", {}).get("scrapbook")
            if meta:
                prefix = meta.get("mime_prefix", "")
                values[meta["name"]] = out["data"][prefix + "text/plain"]
    return values


def _format_glue(text: str, spec: str) -> str:
    """What the ``glue:text`` role shows: the text/plain value, unquoted, formatted with ``spec`` (myst-nb)."""
    try:
        value = ast.literal_eval(text)
    except (SyntaxError, ValueError):
        value = text
    if not spec:
        return str(value)
    kind = spec[-1]
    value = int(value) if kind in "bcdoxX" else float(value) if kind in "eEfFgGn%" else str(value)
    return format(value, spec)


class _Context:
    """What a chapter's conversion needs: bibliography, glue values, labels and chapter links."""

    def __init__(self, text: str, bib: dict, glue: dict, links: dict):
        self.bib, self.glue, self.links = bib, glue, links
        dollar = r"^\$\$[ \t]*\((\S+)\)[ \t]*$"                               # $$ ... $$ (label)
        fenced = r"^[:`]{3,}\{math\}[^\n]*\n(?::\w+:[^\n]*\n)*?:label:\s*(\S+)"    # {math} + :label:
        labels = re.findall(f"{dollar}|{fenced}", text, re.M)
        self.equations = {a or b: i + 1 for i, (a, b) in enumerate(labels)}
        figure = r"^[:`]{3,}\{(?:glue:figure|figure)\}[^\n]*\n(?::[\w-]+:[^\n]*\n)*?:name:\s*(\S+)"
        figs = re.findall(figure, text, re.M)
        self.figures = {lab: i + 1 for i, lab in enumerate(figs)}
        self.exercises = {lab: i + 1 for i, lab in enumerate(
            re.findall(r"^:{3,}\{exercise\}[^\n]*\n(?::\w+:[^\n]*\n)*?:label:\s*(\S+)", text, re.M))}
        self.sections = {lab: title.strip() for lab, title in
                         re.findall(r"^\((\S+)\)=\s*\n+#+\s+([^\n]+)", text, re.M)}


def _role(m, ctx: _Context) -> str:
    role, content = m.group(1), m.group(2)
    target = re.search(r"<([^>]+)>\s*$", content)
    text = content[:target.start()].strip() if target else None
    label = target.group(1) if target else content
    if role in ("cite", "cite:p", "cite:t"):
        return cite_text(content, ctx.bib, textual=role == "cite:t")
    if role in ("glue", "glue:text"):
        name, _, spec = content.partition(":")
        return _format_glue(ctx.glue[name], spec) if name in ctx.glue else f"`[{name}]`"
    if role == "math":
        return f"${content}$"
    if role == "eq":
        return f"({ctx.equations[label]})" if label in ctx.equations else f"({label})"
    if role in ("ref", "numref"):
        figure = f"Figure {ctx.figures[label]}" if label in ctx.figures else None
        found = figure or ctx.exercises.get(label) or ctx.sections.get(label) or label
        return text or str(found)
    if role == "doc":
        title, url = ctx.links.get(label, (label, None))
        return f"[{text or title}]({url})" if url else (text or title)
    return f"`{content}`"          # {func}, {code}, ...: the name as code


def _directives(lines: list, ctx: _Context, counter: list) -> list:
    """Rewrite colon-fenced directive blocks (possibly nested) into plain markdown."""
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(:{3,}|`{3,})\{([\w:-]+)\}\s*(.*)$", lines[i])
        if not m:
            out.append(lines[i])
            i += 1
            continue
        fence, name, arg = m.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == fence), None)
        if end is None:
            raise ValueError(f"unclosed {fence}{{{name}}} block: {lines[i]!r}")
        body = lines[i + 1:end]
        options = {}
        while body and re.match(r"^:[\w-]+:", body[0]):
            key, _, value = body[0][1:].partition(":")
            options[key], body = value.strip(), body[1:]
        body = _directives(body, ctx, counter)
        if name == "math":
            n = ctx.equations.get(options.get("label"))
            out += ["$$"] + body + ([f"\\tag{{{n}}}"] if n else []) + ["$$"]
        elif name in ("figure", "image", "glue:figure"):
            n = ctx.figures.get(options.get("name"))
            caption = [f"*{line}*" if line.strip() else line for line in body]
            if caption:
                caption[0] = (f"**Figure {n}.** " if n else "") + caption[0]
            # a glued figure is the output of a code cell above it in the notebook
            out += ([] if name == "glue:figure" else [f"![{options.get('alt', '')}]({arg})", ""]) + caption
        elif name == "exercise":
            counter[0] += 1
            title = f" ({arg})" if arg else ""
            out += [f"**Exercise {counter[0]}.**{title} " + (body[0] if body else "")] + body[1:]
        elif name == "solution":
            out += ["<details>", "<summary><b>Solution</b> (click to show)</summary>", ""] + body + ["", "</details>"]
        else:
            title = arg or name.capitalize()
            out += [f"> **{title}**", ">"] + [f"> {line}".rstrip() for line in body]
        i = end + 1
    return out


def convert_markdown(text: str, ctx: _Context, counter: list | None = None) -> str:
    """One markdown cell of MyST → plain Jupyter markdown (see the module docstring)."""
    counter = counter if counter is not None else [0]
    text = re.sub(r"^\(\S+\)=\s*\n", "", text, flags=re.M)                # targets
    text = re.sub(r"^\$\$[ \t]*\((\S+)\)[ \t]*$", lambda m: f"\\tag{{{ctx.equations[m.group(1)]}}}\n$$",
                  text, flags=re.M)
    text = "\n".join(_directives(text.split("\n"), ctx, counter))
    return re.sub(r"\{([\w:-]+)\}`([^`]*)`", lambda m: _role(m, ctx), text)


def _title(md: Path) -> str:
    m = re.search(r"^#\s+(.+)$", md.read_text(), re.M)
    return m.group(1).strip() if m else md.stem


def colab_notebook(md, bib: dict, glue: dict | None = None, links: dict | None = None, header: str = ""):
    """The Colab flavour (an ``nbformat`` notebook) of the MyST chapter ``md``.

    Args:
        md: path of ``book/NN_name.md``.
        bib: :func:`parse_bib` of ``book/references.bib``.
        glue: ``{name: text/plain}`` of the chapter's glued values (missing ones become ``[name]``).
        links: ``{doc name: (title, url)}`` for ``doc`` references to other chapters.
        header: markdown of a first cell saying what this notebook is.
    """
    import jupytext
    import nbformat

    md = Path(md)
    text = md.read_text()
    nb = jupytext.read(md)
    ctx, counter = _Context(text, bib, glue or {}, links or {}), [0]
    cells = [nbformat.v4.new_markdown_cell(header)] if header else []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(convert_markdown(cell.source, ctx, counter)))
        elif cell.cell_type == "code":
            cells.append(nbformat.v4.new_code_cell(cell.source))
    for i, cell in enumerate(cells):
        cell["id"] = f"cell-{i}"
    return nbformat.v4.new_notebook(cells=cells, metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"}, "colab": {"provenance": []}, "accelerator": "GPU"})


def _header(md: Path, repo: str, title: str) -> str:
    return (f"**{title}** — the Colab version of a chapter of *The Theory of Diffusion Models — an executable "
            f"textbook* ([repository]({repo})), generated from `book/{md.name}` by "
            "`python -m companion.colab` (do not edit it by hand).\n\n"
            "Numbers quoted in the text are those of the website's build (quick profile, on a CPU); the cells "
            "print the numbers of your run, which differ on a GPU, where the full profile runs by default "
            "(set `COMPANION_PROFILE=quick` before the first cell to run the website's sizes). A name in "
            "brackets such as `[name]` stands for a number that the cells compute. Solutions are folded "
            "under *Solution*.")


def build_all(book: Path, out: Path, repo: str, branch: str, folder: str | None = None) -> list:
    """Write ``out/NN_name.ipynb`` for every ``book/[0-9]*.md``; returns the paths written.

    ``doc`` links point to ``folder`` (default ``out``'s name) of ``repo`` at ``branch`` on Colab.
    """
    import nbformat

    bib = parse_bib((book / "references.bib").read_text())
    store = json.loads((out / "glue.json").read_text()) if (out / "glue.json").exists() else {}
    chapters = sorted(book.glob("[0-9]*.md"))
    links = {md.stem: (_title(md), f"https://colab.research.google.com/github/{repo.split('github.com/')[-1]}"
                                   f"/blob/{branch}/{folder or out.name}/{md.stem}.ipynb") for md in chapters}
    written = []
    for md in chapters:
        nb = colab_notebook(md, bib, store.get(md.stem, {}), links, _header(md, repo, _title(md)))
        path = out / f"{md.stem}.ipynb"
        path.write_text(nbformat.writes(nb) + "\n")
        written.append(path)
    return written


def main(argv=None):
    """``python -m companion.colab [--book book] [--out colab] [--glue-from DIR]`` (run at the repository root)."""
    import yaml

    parser = argparse.ArgumentParser(prog="python -m companion.colab", description=__doc__.split("\n")[0])
    parser.add_argument("--book", default="book", help="folder of the MyST chapters and references.bib")
    parser.add_argument("--out", default="colab", help="output folder (the Colab button points there)")
    parser.add_argument("--config", default="_config.yml", help="the book's _config.yml (repository URL)")
    parser.add_argument("--glue-from", default=None,
                        help="folder of executed notebooks (e.g. _build/jupyter_execute): refresh glue.json")
    args = parser.parse_args(argv)
    book, out = Path(args.book), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.glue_from:   # chapters executed there replace their entries; the others are kept
        store = json.loads((out / "glue.json").read_text()) if (out / "glue.json").exists() else {}
        chapters = [md.stem for md in sorted(book.glob("[0-9]*.md"))]
        store = {stem: values for stem, values in store.items() if stem in chapters}
        store.update({stem: glue_values(Path(args.glue_from) / f"{stem}.ipynb") for stem in chapters
                      if (Path(args.glue_from) / f"{stem}.ipynb").exists()})
        (out / "glue.json").write_text(json.dumps(store, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    repo = yaml.safe_load(Path(args.config).read_text())["repository"]
    for path in build_all(book, out, repo["url"], repo.get("branch", "main")):
        print(path)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
