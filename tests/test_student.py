from pathlib import Path

import jupytext
import pytest

from companion.student import strip_solutions, student_notebook

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "book").glob("[0-9][0-9]_*.md"))

SAMPLE = """Intro

:::{exercise}
:label: ex1
Do it.
:::

:::{solution} ex1
:class: dropdown
The answer is 42.
:::

::::{solution} ex2
nested :::{note} fences
::::

```{code-cell} ipython3
def f(x):
    # BEGIN SOLUTION
    return 42 * x
    # END SOLUTION

check(f)
```
"""


def test_strip_solutions():
    out = strip_solutions(SAMPLE)
    assert "42" not in out and "{solution}" not in out and "BEGIN SOLUTION" not in out
    assert ":::{exercise}" in out and "Do it." in out and "check(f)" in out
    assert '    raise NotImplementedError("your code here")' in out


def test_strip_solutions_bad_input():
    with pytest.raises(TypeError, match="text"):
        strip_solutions(None)
    with pytest.raises(ValueError, match="md_path"):
        student_notebook("no/such/chapter.md", "/tmp")


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_student_version_of_each_chapter(md, tmp_path):
    out = student_notebook(md, tmp_path)
    nb = jupytext.read(out)
    text = "\n".join(c.source for c in nb.cells)
    assert "{solution}" not in text and "BEGIN SOLUTION" not in text
    assert "NotImplementedError" in text, "the coding exercise should be blanked for students"
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # nothing half-written left
