"""The reproductions appendix quotes only numbers the chapters computed (design: CONTRIBUTING.md).

`book/reproductions.md` is one Markdown table; its "Ours" and "Verdict" cells are glued across
documents (``{glue:text}`02_fokker_planck.md::ch2_l1_default:s```), so the build (``-W``) fails
when a chapter no longer glues the key, and this test fails when a cell was typed in.
"""
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "book" / "reproductions.md"
GLUED = ("ours", "verdict")
GLUE_ROLE = re.compile(r"\{glue(?::text)?\}`[^`]*::[^`]+`")


def typed_cells(markdown: str) -> list[str]:
    """Cells of the glued columns that hold anything besides cross-document glue roles."""
    rows = [line.strip().strip("|").split("|") for line in markdown.splitlines()
            if line.strip().startswith("|")]
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    cols = [i for i, h in enumerate(header) if h.split(" ")[0] in GLUED]
    bad = []
    for row in rows[2:]:
        for i in cols:
            rest = GLUE_ROLE.sub("", row[i]).strip(" ;,/()–-")
            if rest or not GLUE_ROLE.search(row[i]):
                bad.append(row[i].strip())
    return bad


def test_typed_cells_are_found():
    table = ("| Claim | Paper | Ours (quick) | Verdict |\n|---|---|---|---|\n"
             "| a | 1.0 | {glue:text}`01_x.md::k:s` | {glue:text}`01_x.md::v:s` |\n"
             "| b | 2.0 | 0.93 | {glue:text}`01_x.md::v2:s` |\n"
             "| c | 3.0 | {glue:text}`local_only:s` | reproduced |\n"
             "| d | 4.0 |  | {glue:text}`01_x.md::v3:s` |\n")
    assert typed_cells(table) == ["0.93", "{glue:text}`local_only:s`", "reproduced", ""]


@pytest.mark.skipif(not PAGE.exists(), reason="book/reproductions.md not written yet (issue 15)")
def test_reproductions_page_quotes_only_glued_numbers():
    assert not typed_cells(PAGE.read_text()), "typed-in cells in the reproductions table"
