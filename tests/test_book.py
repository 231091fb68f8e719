"""Static checks of the book's sources: table of contents, paired notebooks, setup cells, template."""
import re
from pathlib import Path

import jupytext
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
TOC = yaml.safe_load((ROOT / "_toc.yml").read_text())


def toc_files():
    files = [TOC["root"]]
    for part in TOC.get("parts", []):
        files += [c["file"] for c in part["chapters"]]
    return files


CHAPTERS = sorted(p for p in BOOK.glob("[0-9][0-9]_*.md"))


def test_toc_files_exist_and_every_chapter_is_listed():
    listed = toc_files()
    for name in listed:
        assert (BOOK / f"{name}.md").exists(), f"_toc.yml lists {name} but book/{name}.md is missing"
    for md in CHAPTERS:
        assert md.stem in listed, f"{md.name} is not in _toc.yml"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_pair_in_sync_and_without_outputs(md):
    nb_path = md.with_suffix(".ipynb")
    assert nb_path.exists(), f"{nb_path.name} missing: run `jupytext --to ipynb {md.relative_to(ROOT)}`"
    from_md = jupytext.read(md)
    committed = jupytext.read(nb_path)
    pair = lambda nb: [(c.cell_type, c.source) for c in nb.cells]  # noqa: E731
    assert pair(from_md) == pair(committed), (
        f"{nb_path.name} is out of sync with {md.name}: run `make sync` (jupytext --to ipynb --update)"
    )
    for cell in committed.cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs"), f"{nb_path.name} has outputs committed"


def release_spec():
    """``git+URL@vVERSION``: the repository of _config.yml at the tag of the package's version."""
    version = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    import companion
    assert companion.__version__ == version, "companion.__version__ and pyproject.toml disagree"
    return f"git+{CONFIG['repository']['url']}@v{version}"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_setup_cell_installs_the_release_when_the_import_fails(md):
    """Try the import; else install the book's release loudly (no -q), on any platform."""
    code = [c for c in jupytext.read(md).cells if c.cell_type == "code"]
    first = code[0].source
    assert first.startswith("# Setup") and "except ModuleNotFoundError:" in first
    assert f'"{release_spec()}"' in first, f"setup cell must install {release_spec()}"
    assert "-q" not in first and "check_returncode()" in first and "google.colab" not in first
    assert "cp.runtime.seed(" in first and "cp.runtime.describe()" in first
    assert first == [c for c in jupytext.read(CHAPTERS[0]).cells if c.cell_type == "code"][0].source, \
        "every chapter has the same setup cell as the first"


@pytest.mark.parametrize("md", CHAPTERS, ids=lambda p: p.name)
def test_chapter_template(md):
    text = md.read_text()
    assert "Learning objectives" in text and "Prerequisites" in text
    assert len(re.findall(r"^:::\{exercise\}", text, flags=re.M)) >= 3, "at least three exercises"
    assert re.search(r"^:::\{solution\}", text, flags=re.M), "exercises need solutions"
    assert "cp.exercises.check" in text, "at least one coding exercise checked by companion.exercises"
    assert "cp.runtime.choose(" in text, "sizes come from cp.runtime.choose(quick=..., full=...)"
    assert "## Summary" in text and "{cite" in text


def test_colab_configuration():
    assert CONFIG["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    colab_dir = ROOT / CONFIG["repository"]["path_to_book"]     # the Colab button's folder
    assert all((colab_dir / f"{md.stem}.ipynb").exists() for md in CHAPTERS)
    assert "**.ipynb" in CONFIG["exclude_patterns"]
    assert CONFIG["execute"]["raise_on_error"] is True


# Numbers that a profile changes must be glued, never typed into the prose. For each chapter: the keys
# of its cp.runtime.choose(quick=..., full=...) table whose quick value differs from the full one.
PROFILE_KEYS = {
    "01_forward_sdes": ["n_particles", "n_steps"],
    "02_fokker_planck": ["n_particles", "cells", "fp_steps", "n_samples", "steps", "ref_steps", "grid_2d"],
    "03_score_estimation": ["target_steps", "n_eval", "n_samples", "n_steps", "cfg_per_class"],
}
# Typed numbers that equal such a value by coincidence, each named by the text around it.
NOT_PROFILE = {
    "01_forward_sdes": ["K = 1000", "t = 1/1000"],   # DDPM's number of steps
    "03_score_estimation": [r"\sigma = 20"],        # a noise level
}




def _literal_dict(node_text):
    import ast

    call = ast.parse(node_text, mode="eval").body
    return {k.arg: ast.literal_eval(k.value) for k in call.keywords}


def profile_dependent_numbers(text, keys):
    """Values (as floats) that the given profile keys take in the quick profile and not in the full one:
    a scalar that differs, or an entry of a tuple that the full tuple lacks or holds in another place
    (the last entry, the usual 'largest' of a sweep, counts when the full sweep ends elsewhere)."""
    import ast

    for cell in jupytext.reads(text, fmt="md:myst").cells:
        if cell.cell_type == "code" and "cp.runtime.choose(" in cell.source:
            tree = ast.parse(cell.source)
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "choose"]
            kw = {k.arg: k.value for k in calls[0].keywords}
            quick, full = (_literal_dict(ast.unparse(kw[p])) for p in ("quick", "full"))
            break
    else:
        raise AssertionError("no cp.runtime.choose(quick=..., full=...) call found")
    values = set()
    for key in keys:
        q, f = quick[key], full[key]
        if isinstance(q, (tuple, list)):
            values |= {float(v) for v in q if v not in f}
            if q[-1] != f[-1]:
                values.add(float(q[-1]))
        elif q != f:
            values.add(float(q))
    return values


def prose_numbers(text):
    """(number, context) for every number in the markdown cells, outside glue roles, cross-references,
    labels and directive options; thousands separators (1,797) are read as one number."""
    out = []
    for cell in jupytext.reads(text, fmt="md:myst").cells:
        if cell.cell_type != "markdown":
            continue
        src = re.sub(r"\{[a-z:]+\}`[^`]*`", " ", cell.source)          # {glue:text}`x`, {eq}`x`, {cite}`x`
        src = re.sub(r"^:(label|class|name)?:.*$", " ", src, flags=re.M)  # directive options
        src = re.sub(r"```.*?```", " ", src, flags=re.S)                 # code shown in solutions
        src = re.sub(r"`[^`]*`", " ", src)                               # inline code
        for m in re.finditer(r"(?<![\w.^_{\\])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?![\w^]|\.\d|\})", src):
            out.append((float(m.group(1).replace(",", "")), src[max(0, m.start() - 40): m.end() + 40]))
    return out


@pytest.mark.parametrize("stem", sorted(PROFILE_KEYS))
def test_profile_dependent_numbers_are_glued(stem):
    text = (BOOK / f"{stem}.md").read_text()
    values = profile_dependent_numbers(text, PROFILE_KEYS[stem])
    assert values, "no profile-dependent values found: is the key list of this chapter up to date?"
    typed = [(v, ctx) for v, ctx in prose_numbers(text)
             if v in values and not any(ok in ctx for ok in NOT_PROFILE.get(stem, []))]
    assert not typed, "profile-dependent numbers typed into the prose (glue them):\n" + "\n".join(
        f"  {v:g}: ...{ctx}..." for v, ctx in typed)


def test_profile_number_finder_sees_typed_numbers():
    """The finder itself: a typed sweep size is found, a glued one and one inside a role are not."""
    text = ("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n---\n\n"
            "```{code-cell} ipython3\ncfg = cp.runtime.choose(quick=dict(n=2000, s=(10, 300)),"
            " full=dict(n=50_000, s=(10, 300, 1000)))\n```\n\n"
            "With n = 2,000 points and {glue:text}`ch_n` more, 300 steps, $10^{3}$ and {eq}`eq-300`.\n")
    values = profile_dependent_numbers(text, ["n", "s"])
    assert values == {2000.0, 300.0}
    assert sorted(v for v, _ in prose_numbers(text) if v in values) == [300.0, 2000.0]


def _run_setup_cell(monkeypatch, returncode, stderr):
    """Execute Chapter 1's setup cell where ``import companion`` fails and pip is a stub."""
    import builtins
    import subprocess

    calls, real_import = [], builtins.__import__

    def no_companion(name, *args, **kwargs):
        if name == "companion" and not calls:
            raise ModuleNotFoundError("No module named 'companion'")
        return real_import(name, *args, **kwargs)

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, returncode, stdout="pip says hello", stderr=stderr)

    monkeypatch.setattr(builtins, "__import__", no_companion)
    monkeypatch.setattr(subprocess, "run", fake_run)
    source = [c for c in jupytext.read(CHAPTERS[0]).cells if c.cell_type == "code"][0].source
    exec(compile(source, "setup-cell", "exec"), {})
    return calls


def test_setup_cell_installs_loudly_when_the_import_fails(monkeypatch, capsys):
    calls = _run_setup_cell(monkeypatch, 0, "")
    assert calls and calls[0][1:4] == ["-m", "pip", "install"] and calls[0][-1] == release_spec()
    out = capsys.readouterr().out
    assert "installing the companion package" in out and "pip says hello" in out and "describe" not in out


def test_setup_cell_shows_pip_errors(monkeypatch, capsys):
    import subprocess

    with pytest.raises(subprocess.CalledProcessError):
        _run_setup_cell(monkeypatch, 1, "ERROR: could not find v0.1.0")
    assert "ERROR: could not find v0.1.0" in capsys.readouterr().out
