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
