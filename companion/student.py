"""Student versions of the chapters: the same notebook with the solutions taken out.

Two things are removed from a chapter's MyST source:

* every ``:::{solution} ...`` block (the worked answers, folded on the website);
* in code cells, every region between a line ``# BEGIN SOLUTION`` and a line ``# END SOLUTION``,
  replaced by ``raise NotImplementedError("your code here")`` at the same indentation — so the
  checker in the cell reports "not implemented yet" until the student fills it in.

Usage (writes ``NN_name.ipynb`` files into ``OUT``)::

    python -m companion.student book/01_forward_sdes.md [more chapters ...] --out student/
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

__all__ = ["strip_solutions", "student_notebook", "main"]

_SOLUTION_BLOCK = re.compile(r"^(:{3,})\{solution\}.*?^\1[ \t]*$\n?", flags=re.M | re.S)
_CODE_SOLUTION = re.compile(r"^([ \t]*)# BEGIN SOLUTION[^\n]*\n.*?^[ \t]*# END SOLUTION[^\n]*$", flags=re.M | re.S)


def strip_solutions(text: str) -> str:
    """Return ``text`` (a chapter's MyST source) without solution blocks and marked solution code."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = _SOLUTION_BLOCK.sub("", text)
    return _CODE_SOLUTION.sub(lambda m: f'{m.group(1)}raise NotImplementedError("your code here")', text)


def student_notebook(md_path, out_dir) -> Path:
    """Write the student version of the chapter ``md_path`` as ``out_dir/<name>.ipynb``; return its path."""
    import jupytext

    md_path, out_dir = Path(md_path), Path(out_dir)
    if not md_path.exists():
        raise ValueError(f"md_path {md_path} does not exist")
    notebook = jupytext.reads(strip_solutions(md_path.read_text()), fmt="md:myst")
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{md_path.stem}.ipynb"
    tmp = out_dir / f".{md_path.stem}.partial"
    tmp.write_text(jupytext.writes(notebook, fmt="ipynb"))
    tmp.replace(out)  # atomic: never a half-written notebook
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="+", help="chapter sources, e.g. book/01_forward_sdes.md")
    parser.add_argument("--out", default="student", help="output directory (default: student/)")
    args = parser.parse_args(argv)
    for md in args.chapters:
        print(student_notebook(md, args.out))


if __name__ == "__main__":
    main()
