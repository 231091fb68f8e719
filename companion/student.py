"""Assignments from the chapters: a thin front end to `Otter-Grader <https://otter-grader.readthedocs.io>`_.

A chapter already marks its exercises the way Otter Assign expects: written exercises are
``:::{exercise}`` blocks followed by a ``:::{solution}`` block, coding exercises add a code cell whose
body sits between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` and which calls a checker
``cp.exercises.check_*(answer)``. This module turns a chapter (``NN_name.md`` or its paired
``.ipynb``) into an Otter *master notebook* and runs ``otter assign`` on it:

* every exercise becomes an Otter question (written ones graded by hand, coding ones autograded);
* in the student notebook a solution region inside a function becomes
  ``raise NotImplementedError(...)`` (the chapter's checker then prints "not implemented yet") and a
  top-level region becomes a ``print`` saying what to write, so "Run all" never stops on it;
* each coding question gets a public test (the checker as the chapter calls it, seed 0) and hidden
  tests (the same checker with other seeds, so other random cases);
* written answers get an answer cell ("Type your answer here").

Usage (one folder per chapter, each with ``student/``, ``autograder/`` and ``README.md``)::

    python -m companion.student book/0*.md --out assignments/
    python -m companion.student --grade assignments/01_forward_sdes submissions/   # -> grades.csv
    python -m companion.student --site book --out _build_student/book --config _config.yml --toc _toc.yml
"""
from __future__ import annotations

import argparse
import re
import shutil
import tempfile
from pathlib import Path

__all__ = ["POINTS", "HIDDEN_SEEDS", "strip_solutions", "split_markdown", "master_notebook", "assign", "grade",
           "student_book", "main"]

#: points of a written (hand-graded) question, of a coding question's public test and of each hidden test
POINTS = {"written": 2, "public": 1, "hidden": 1}
HIDDEN_SEEDS = (1, 2)

_CHAPTER = re.compile(r"^\d\d_\w+$")
_BLOCK = re.compile(r"^(:{3,})\{(exercise|solution)\}([^\n]*)\n(.*?)^\1[ \t]*$\n?", flags=re.M | re.S)
_CODE_SOLUTION = re.compile(r"^([ \t]*)# BEGIN SOLUTION[^\n]*\n(.*?)^[ \t]*# END SOLUTION[^\n]*$", flags=re.M | re.S)
_CHECK_CALL = re.compile(r"\b(?:cp\.)?exercises\.(check_\w+)\(\s*(\w+)")
_LABEL = re.compile(r"^:label:[ \t]*(\S+)", flags=re.M)


def _chapter_path(path) -> Path:
    path = Path(path)
    if path.suffix not in (".md", ".ipynb") or not _CHAPTER.match(path.stem):
        raise ValueError(f"chapter {path} is not a chapter source: expected book/NN_name.md or NN_name.ipynb")
    if not path.exists():
        raise ValueError(f"chapter {path} does not exist")
    return path


def _student_line(indent: str, label: str) -> str:
    """The statement a student sees in place of a solution region: an error inside a function (the checker
    reports "not implemented yet"), a ``print`` at top level (so "Run all" does not stop there)."""
    if indent:
        return f'raise NotImplementedError("{label}: your code here")'
    return f'print("{label}: not implemented yet - write your code in this cell")'


def _prompt(indent: str, label: str) -> str:
    """Otter's prompt block: the student line, a no-op string in the answer key."""
    return f'{indent}""" # BEGIN PROMPT\n{indent}{_student_line(indent, label)}\n{indent}""" # END PROMPT\n'


def strip_solutions(text: str, label: str = "exercise") -> str:
    """Return ``text`` (MyST source or a code cell) without solution blocks and with each solution region
    replaced by the student prompt (``raise NotImplementedError`` in a function, a ``print`` at top level)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    text = _BLOCK.sub(lambda m: "" if m.group(2) == "solution" else m.group(0), text)
    return _CODE_SOLUTION.sub(lambda m: m.group(1) + _student_line(m.group(1), label), text)


def split_markdown(text: str) -> list[tuple[str, str, str]]:
    """Split a markdown cell into ``(kind, label, text)`` pieces, kind in prose/exercise/solution.

    For a solution, ``text`` is its body (the ``:class:`` option line dropped) and ``label`` the
    exercise it answers; for an exercise, ``text`` is the whole block and ``label`` its ``:label:``.
    """
    pieces, pos = [], 0
    for m in _BLOCK.finditer(text):
        if text[pos:m.start()].strip():
            pieces.append(("prose", "", text[pos:m.start()].strip("\n")))
        if m.group(2) == "exercise":
            label = _LABEL.search(m.group(4))
            pieces.append(("exercise", label.group(1) if label else "", m.group(0).rstrip("\n")))
        else:
            body = re.sub(r"^:\w+:.*\n", "", m.group(4)).strip("\n")
            pieces.append(("solution", m.group(3).strip(), body))
        pos = m.end()
    if text[pos:].strip():
        pieces.append(("prose", "", text[pos:].strip("\n")))
    return pieces


def _read(path: Path):
    import jupytext

    nb = jupytext.read(path)
    for cell in nb.cells:
        cell.pop("outputs", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def master_notebook(chapter, points: dict | None = None):
    """Return the Otter master notebook (Otter's format v1) of ``chapter`` (``NN_name.md`` or ``.ipynb``).

    Every ``:::{exercise}`` is a question named by its label; it is hand-graded (``POINTS['written']``
    points) unless a code cell with a ``# BEGIN SOLUTION`` region follows it before the next exercise;
    then each ``cp.exercises.check_*(answer)`` call in that cell gives one public test (seed 0) and one
    hidden test per seed in ``HIDDEN_SEEDS``.
    """
    import nbformat

    path = _chapter_path(chapter)
    points = {**POINTS, **(points or {})}
    nb, name = _read(path), path.stem
    new = nbformat.v4.new_notebook(metadata=nb.metadata)
    raw, md = nbformat.v4.new_raw_cell, nbformat.v4.new_markdown_cell
    config = (f"# ASSIGNMENT CONFIG\nname: {name}\ninit_cell: false\ncheck_all_cell: false\n"
              "export_cell: false\nrun_tests: false\nsolutions_pdf: false\ngenerate: true\n"
              "tests:\n  files: true\n")
    # the grading image (Gradescope, `otter grade`) installs what the chapter's setup cell installs on Colab
    source = next((c.source for c in nb.cells if c.cell_type == "code"), "")
    specs = re.findall(r"[\"'](git\+https?://[^\"']+)[\"']", source)
    if specs:
        config += "requirements:\n  - torch\n" + "".join(f"  - {spec}\n" for spec in specs)
    new.cells.append(raw(config))
    # which exercises are coding ones: a solution code cell comes before the next exercise
    kinds, last = {}, None
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for kind, label, _ in split_markdown(cell.source):
                if kind == "exercise":
                    last = label or f"{name}-ex{len(kinds) + 1}"
                    kinds[last] = "written"
        elif "# BEGIN SOLUTION" in cell.source and last is not None:
            kinds[last] = "coding"
    state = {"open": None, "n": 0}

    def close():
        if state["open"]:
            new.cells.append(raw("# END QUESTION"))
            state["open"] = None

    def open_question(label, manual):
        close()
        pts = points["written"] if manual else None
        head = f"# BEGIN QUESTION\nname: {label}\nmanual: {str(manual).lower()}\ncheck_cell: false\n"
        new.cells.append(raw(head + (f"points: {pts}\n" if manual else "")))
        state["open"] = label

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for kind, label, text in split_markdown(cell.source):
                if kind == "exercise":
                    state["n"] += 1
                    label = label or f"{name}-ex{state['n']}"
                    open_question(label, kinds[label] == "written")
                    new.cells.append(md(text))
                elif kind == "solution":
                    new.cells += [raw("# BEGIN SOLUTION"), md(f"**Answer.** {text}"), raw("# END SOLUTION")]
                    if state["open"] and kinds.get(state["open"]) == "written":
                        close()
                else:
                    if state["open"] and kinds.get(state["open"]) == "written":
                        close()
                    new.cells.append(md(text))
            continue
        if "# BEGIN SOLUTION" not in cell.source:
            if state["open"] and kinds.get(state["open"]) == "written":
                close()
            new.cells.append(cell)
            continue
        label = state["open"] or f"{name}-code{state['n'] + 1}"
        if not state["open"]:
            open_question(label, False)
        cell.source = _CODE_SOLUTION.sub(
            lambda m: _prompt(m.group(1), label) + f"{m.group(1)}# BEGIN SOLUTION NO PROMPT\n{m.group(2)}"
            f"{m.group(1)}# END SOLUTION", cell.source)
        new.cells += [raw("# BEGIN SOLUTION"), cell, raw("# END SOLUTION")]
        tests = []
        for check, answer in _CHECK_CALL.findall(cell.source):
            for seed in (0, *HIDDEN_SEEDS):
                hidden = seed != 0
                pts = points["hidden" if hidden else "public"]
                tests.append(f'""" # BEGIN TEST CONFIG\npoints: {pts}\nhidden: {str(hidden).lower()}\n'
                             f'""" # END TEST CONFIG\n'
                             f"assert (v := cp.exercises.{check}({answer}, seed={seed}, quiet=True)), v.message\n")
        if not tests:
            raise ValueError(f"chapter {path}: the solution cell of {label} calls no cp.exercises.check_* checker")
        new.cells.append(raw("# BEGIN TESTS"))
        new.cells += [nbformat.v4.new_code_cell(t, outputs=[]) for t in tests]
        new.cells.append(raw("# END TESTS"))
        close()
    close()
    return new


_README = """# {name}: assignment

Open `student/{name}.ipynb` in Jupyter or on Google Colab (File → Upload notebook; on Colab the first code
cell installs the book's companion package; the checkers need no other file).

1. **Save a copy first** (Colab: File → Save a copy in Drive) and work in your copy.
2. Each exercise is a question. Written ones: replace *Type your answer here* below the exercise with your
   answer (Markdown and $\\LaTeX$). Coding ones: replace the `raise NotImplementedError(...)` (or the
   "not implemented yet" `print`) by your code, run the cell, and read the checker's verdict (✓ or ✗ with a hint).
   Write the code yourself: an answer that calls the companion's own implementation is rejected.
3. Run the whole notebook top to bottom (Runtime → Run all) before you submit.
4. **Submit** the notebook file `{name}.ipynb` (Colab: File → Download → Download .ipynb).

Points: {points}. Coding questions are graded by public tests (the checker you see) and hidden tests
(the same checks on other random cases); written questions are graded by hand.
"""


def assign(chapter, out_dir, points: dict | None = None) -> Path:
    """Write the assignment of ``chapter`` to ``out_dir/<NN_name>/`` and return that folder.

    It holds ``student/`` (the student notebook and its public tests), ``autograder/`` (the answer
    key ``NN_name.ipynb``, ``autograder.zip`` with public and hidden tests for ``otter run``/``otter
    grade``, and the public tests) and ``README.md`` (instructions for students). Refuses to write into
    the folder that holds the chapter (it would replace the instructor's notebook).
    """
    import nbformat

    path = _chapter_path(chapter)
    out_dir = Path(out_dir)
    if out_dir.resolve() == path.parent.resolve() or path.parent.resolve() in (out_dir / path.stem).resolve().parents:
        raise ValueError(f"out_dir {out_dir} would overwrite the chapters in {path.parent}; choose another folder")
    try:
        from otter.assign import main as otter_assign
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("assignments need Otter-Grader: pip install 'otter-grader>=7,<8' "
                          "(or the package's [assign] extra)") from exc
    master = master_notebook(path, points)
    pts = {"written": [], "coding": []}
    for cell in master.cells:
        if cell.cell_type == "raw" and cell.source.startswith("# BEGIN QUESTION"):
            name = re.search(r"name: (\S+)", cell.source).group(1)
            manual = "manual: true" in cell.source
            pts["written" if manual else "coding"].append(name)
    p = {**POINTS, **(points or {})}
    n_tests = 1 + len(HIDDEN_SEEDS)
    summary = ", ".join([f"{q} {p['written']}" for q in pts["written"]]
                        + [f"{q} {p['public'] + p['hidden'] * (n_tests - 1)}" for q in pts["coding"]])
    final = out_dir / path.stem
    with tempfile.TemporaryDirectory(dir=out_dir if out_dir.exists() else None) as tmp:
        tmp = Path(tmp)
        nbformat.write(master, tmp / f"{path.stem}.ipynb")
        otter_assign(str(tmp / f"{path.stem}.ipynb"), str(tmp / "dist"), no_pdfs=True, no_run_tests=True)
        (tmp / "dist" / "README.md").write_text(_README.format(name=path.stem, points=summary))
        zips = list((tmp / "dist" / "autograder").glob("*.zip"))
        zips[0].rename(zips[0].with_name("autograder.zip"))  # a stable name for `otter run -a`
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(tmp / "dist"), str(final))
    return final


def grade(assignment, submissions, out_csv=None) -> Path:
    """Grade every ``.ipynb`` in the folder ``submissions`` with ``assignment/autograder/autograder.zip``.

    Runs ``otter run`` (no Docker: in this environment, so run it on a machine you trust with the
    students' code) on each submission and writes ``out_csv`` (default ``submissions/grades.csv``): one
    row per submission with the points of each autograded question, the total and the maximum.
    Written questions are graded by hand and are not in the table.
    """
    import contextlib
    import csv
    import io
    import os

    from otter.run import main as otter_run

    assignment, submissions = Path(assignment).resolve(), Path(submissions).resolve()
    zip_path = assignment / "autograder" / "autograder.zip"
    if not zip_path.exists():
        raise ValueError(f"assignment {assignment} has no autograder/autograder.zip (run `make assignments`)")
    files = sorted(submissions.glob("*.ipynb")) if submissions.is_dir() else []
    if not files:
        raise ValueError(f"submissions {submissions} is not a folder of .ipynb files")
    out_csv = Path(out_csv).resolve() if out_csv else submissions / "grades.csv"
    rows, cwd = [], os.getcwd()
    for sub in files:
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(sub, Path(tmp) / sub.name)
            os.chdir(tmp)
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    res = otter_run(sub.name, autograder=str(zip_path), output_dir=tmp, no_logo=True)
            finally:
                os.chdir(cwd)
        row = {"submission": sub.name}
        row.update({q: res.get_score(q) for q in res.test_files})
        row.update(total=res.total, possible=res.possible)
        rows.append(row)
    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out_csv


def student_book(book_dir, out_dir, config=None, toc=None) -> Path:
    """Copy the book ``book_dir`` to ``out_dir`` with every chapter replaced by its student version.

    Solution blocks are removed and solution regions replaced by the student prompt, so a website
    built from ``out_dir`` shows no solution. Other pages are copied unchanged. With ``config`` (the
    book's ``_config.yml``), also writes ``out_dir/../_config.yml``: the same, titled "student edition",
    without the Colab button (it would open the instructor's notebook); with ``toc`` (the book's
    ``_toc.yml``), writes ``out_dir/../_toc.yml`` without the instructors' page.
    """
    import yaml

    book_dir, out_dir = Path(book_dir), Path(out_dir)
    if not book_dir.is_dir():
        raise ValueError(f"book_dir {book_dir} is not a folder")
    if out_dir.resolve() == book_dir.resolve() or book_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(f"out_dir {out_dir} would overwrite the chapters in {book_dir}")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(book_dir, out_dir, ignore=shutil.ignore_patterns("*.ipynb", "_build", ".ipynb_checkpoints"))
    for md in sorted(out_dir.glob("[0-9][0-9]_*.md")):
        md.write_text(strip_solutions(md.read_text(), label=md.stem))
    if config is not None:
        cfg = yaml.safe_load(Path(config).read_text())
        cfg["title"] = f"{cfg.get('title', 'Book')} (student edition)"
        cfg.pop("launch_buttons", None)
        if "repository" in cfg:   # no Colab button, so not the Colab folder: the sources' own folder
            cfg["repository"]["path_to_book"] = out_dir.name
        local = (cfg.get("sphinx") or {}).get("local_extensions") or {}
        for name, rel in local.items():  # paths are relative to the config file, which moves
            local[name] = str((Path(config).parent / rel).resolve())
        (out_dir.parent / "_config.yml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    if toc is not None:
        tree = yaml.safe_load(Path(toc).read_text())
        for part in tree.get("parts", []):
            part["chapters"] = [c for c in part["chapters"] if c.get("file") != "instructors"]
        (out_dir / "instructors.md").unlink(missing_ok=True)
        (out_dir.parent / "_toc.yml").write_text(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))
    return out_dir


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter sources, e.g. book/0*.md (other pages are skipped)")
    parser.add_argument("--out", default="assignments", help="output folder (default: assignments/)")
    parser.add_argument("--site", metavar="BOOK", help="write the student version of the book folder BOOK")
    parser.add_argument("--config", help="with --site: the book's _config.yml, for a student-edition config")
    parser.add_argument("--toc", help="with --site: the book's _toc.yml, for a toc without the instructors' page")
    parser.add_argument("--grade", nargs=2, metavar=("ASSIGNMENT", "SUBMISSIONS"),
                        help="grade the .ipynb files in SUBMISSIONS with ASSIGNMENT's autograder (writes grades.csv)")
    args = parser.parse_args(argv)
    if args.grade:
        print(grade(*args.grade))
        return
    if args.site:
        print(student_book(args.site, args.out, args.config, args.toc))
    elif not args.chapters:
        parser.error("give chapter sources (book/NN_name.md) or --site BOOK")
    done = set()
    for chapter in args.chapters:
        path = Path(chapter)
        if not _CHAPTER.match(path.stem) or path.suffix not in (".md", ".ipynb"):
            print(f"skipped {chapter}: not a chapter (NN_name.md or .ipynb)")
        elif path.stem not in done:  # NN_name.md and its paired NN_name.ipynb are one chapter
            done.add(path.stem)
            print(assign(path, args.out))


if __name__ == "__main__":
    main()
