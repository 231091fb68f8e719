import pytest
import torch

import companion as cp


def test_profile_default_follows_cuda(monkeypatch):
    monkeypatch.delenv("COMPANION_PROFILE", raising=False)
    assert cp.runtime.profile() == ("full" if torch.cuda.is_available() else "quick")


@pytest.mark.parametrize("value", ["quick", "full"])
def test_profile_env_override(monkeypatch, value):
    monkeypatch.setenv("COMPANION_PROFILE", value)
    assert cp.runtime.profile() == value
    assert cp.runtime.choose(quick=1, full=2) == (1 if value == "quick" else 2)


def test_profile_bad_value(monkeypatch):
    monkeypatch.setenv("COMPANION_PROFILE", "medium")
    with pytest.raises(ValueError, match="COMPANION_PROFILE"):
        cp.runtime.profile()


def test_device_is_available():
    dev = cp.runtime.device()
    torch.zeros(1, device=dev)  # usable
    if torch.cuda.is_available():
        assert dev.type == "cuda"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_profile_is_full(monkeypatch):
    monkeypatch.delenv("COMPANION_PROFILE", raising=False)
    assert cp.runtime.profile() == "full"


def test_seed_reproducible():
    g = cp.runtime.seed(3)
    a, ga = torch.randn(4), torch.randn(4, generator=g)
    g = cp.runtime.seed(3)
    assert torch.equal(a, torch.randn(4)) and torch.equal(ga, torch.randn(4, generator=g))
    with pytest.raises(ValueError, match="seed"):
        cp.runtime.seed(-1)


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path / "c"))
    assert cp.runtime.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_describe_mentions_profile_and_device():
    text = cp.runtime.describe()
    assert "profile:" in text and "device:" in text


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        cp.not_a_module


def test_profile_full_when_cuda_reported(monkeypatch):
    """The default follows torch.cuda.is_available(); simulate a GPU machine."""
    monkeypatch.delenv("COMPANION_PROFILE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cp.runtime.profile() == "full"
    assert cp.runtime.choose(quick="q", full="f") == "f"


def test_smoke_profile_is_the_full_table_at_reduced_size(monkeypatch):
    monkeypatch.setenv("COMPANION_PROFILE", "smoke")
    assert cp.runtime.profile() == "smoke"
    quick, full = dict(n=10, steps=(1, 2)), dict(n=1000, steps=(1, 2, 3), extra="full only")
    assert cp.runtime.choose(quick, full, smoke=dict(n=5)) == dict(n=5, steps=(1, 2, 3), extra="full only")
    assert cp.runtime.choose(quick, full) == dict(n=10, steps=(1, 2), extra="full only")
    assert cp.runtime.choose(quick="q", full="f") == "q" and cp.runtime.choose("q", "f", smoke="s") == "s"
    monkeypatch.setenv("COMPANION_PROFILE", "full")
    assert cp.runtime.choose(quick, full, smoke=dict(n=5)) == full


def test_format_config_one_line_per_key_within_width():
    text = cp.runtime.format_config(dict(n=10, steps=(1, 2, 3), long="x" * 200), width=40)
    lines = text.splitlines()
    assert lines[0] == f"profile: {cp.runtime.profile()}"
    assert lines[1:3] == ["  n = 10", "  steps = (1, 2, 3)"]
    assert len(lines[3]) == 40 and lines[3].endswith("…")
    with pytest.raises(TypeError, match="cfg"):
        cp.runtime.format_config([1, 2])


def test_opt_in_full_profile_falls_back_to_quick_unless_asked_for(monkeypatch, capsys):
    """A GPU machine (full by default) runs an opt-in chapter's quick table and says why."""
    monkeypatch.setenv("COMPANION_PROFILE", "")          # unset: the default decides
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    quick, full = dict(n=10), dict(n=1000)
    assert cp.runtime.choose(quick, full) == full          # without opt_in: full
    assert cp.runtime.choose(quick, full, opt_in="about 4 h on a T4") == quick
    assert "about 4 h on a T4" in capsys.readouterr().out
    assert cp.runtime.profile() == "quick"                 # later cells agree
    monkeypatch.setenv("COMPANION_PROFILE", "full")        # asked for: it runs
    assert cp.runtime.choose(quick, full, opt_in="about 4 h on a T4") == full
    monkeypatch.setenv("COMPANION_PROFILE", "smoke")
    assert cp.runtime.choose(quick, full, smoke=dict(n=5), opt_in="4 h") == dict(n=5)
    with pytest.raises(TypeError, match="opt_in"):
        cp.runtime.choose(quick, full, opt_in=240)


def test_full_profile_line_reads_the_benchmark_table():
    from pathlib import Path

    table = cp.runtime.full_profile()
    book = Path(__file__).resolve().parents[1] / "book"
    assert set(table) == {p.stem for p in book.glob("[0-9][0-9]_*.md")}   # every chapter
    for chapter, row in table.items():
        line = cp.runtime.full_profile_line(chapter)
        assert line.startswith("full profile:"), line
        mem, cpu, t4 = cp.runtime._cost(row)
        flat = " ".join(line.split())
        assert mem in flat and cpu in flat, line
        if row["kind"] != "notebook":
            assert t4 in flat and row["t4_how"].split()[-1] in flat, line
        assert all(len(part) <= 86 for part in line.splitlines())
        if "peak_gb" in row:
            assert f"{row['peak_gb']:.1f} GB" in line
    table = cp.runtime.full_profile_table().splitlines()
    assert all(len(line) <= 86 for line in table) and len(table) > len(cp.runtime.full_profile())
    assert [line.split()[0] for line in table[1:1 + len(cp.runtime.full_profile())]] == sorted(
        cp.runtime.full_profile())
    assert "not measured" in cp.runtime.full_profile_line("99_nope")
    with pytest.raises(TypeError, match="chapter"):
        cp.runtime.full_profile_line(6)


def test_a_full_profile_over_15_minutes_on_a_t4_is_opt_in():
    """Issue 16's rule: a chapter whose full profile is not known to finish within 15 minutes on a
    free Colab T4 runs it only when asked for (``choose(..., opt_in=...)``)."""
    from pathlib import Path

    book = Path(__file__).resolve().parents[1] / "book"
    for chapter, row in cp.runtime.full_profile().items():
        source = (book / f"{chapter}.md").read_text()
        too_long = row["t4_s"] > 15 * 60 or not row["finished"] or "error" in row
        assert too_long == ("opt_in=" in source), (chapter, row["t4_s"], row["finished"])


def test_table_renders_a_markdown_table():
    md = cp.runtime.table(("steps", "error", "note", "σ"),
                          [(10, 0.123456, "a|b", "1e-3"), (100, -0.5, "c", "-1")], digits=3)
    lines = getattr(md, "data", md).splitlines()
    assert lines == ["| steps | error | note | σ |", "|---:|---:|---|---:|",
                     "| 10 | 0.123 | a\\|b | 1e-3 |", "| 100 | -0.500 | c | -1 |"]
    with pytest.raises(ValueError, match=r"rows\[1\]"):
        cp.runtime.table(("a", "b"), [(1, 2), (3,)])
    with pytest.raises(TypeError, match="header"):
        cp.runtime.table("ab", [])
    with pytest.raises(ValueError, match="digits"):
        cp.runtime.table(("a",), [(1,)], digits=-1)


def test_expect_raises_except_at_smoke_size(monkeypatch, capsys):
    monkeypatch.setenv("COMPANION_PROFILE", "quick")
    assert cp.runtime.expect(True, "fine") is True
    with pytest.raises(AssertionError, match="slope"):
        cp.runtime.expect(False, "too few levels for a slope")
    monkeypatch.setenv("COMPANION_PROFILE", "full")
    with pytest.raises(AssertionError):
        cp.runtime.expect(0, "zero")
    monkeypatch.setenv("COMPANION_PROFILE", "smoke")
    assert cp.runtime.expect(False, "too few levels for a slope") is False
    assert "not checked: too few levels for a slope" in capsys.readouterr().out
    with pytest.raises(TypeError, match="message"):
        cp.runtime.expect(True, 3)
