"""The fused softmax-sums kernel (companion/_softmax_sums.cpp via companion._native)."""
import math
import os
import pathlib
import platform
import shutil
import subprocess

import pytest
import torch

from companion import _native

kernel = pytest.mark.skipif(_native.load() is None, reason=f"fused kernel unavailable: {_native.reason}")


def _reference(lhs, table, vals, seg, floor):
    """The kernel's definition in float64, segment by segment: ``(sums, top)``."""
    sums = torch.zeros(lhs.shape[0], vals.shape[0], dtype=torch.float64)
    top = torch.zeros(lhs.shape[0], dtype=torch.float64)
    for p0, p1, c0, c1, own in zip(*seg):
        p, c = slice(p0, p1), slice(c0, c1)
        if c1 <= c0:                                    # no columns: nothing summed, the maximum of none
            top[p] = -math.inf if own else 0.0
            continue
        logit = lhs[p].double() @ table[:, c].double()
        if own:
            top[p] = logit.amax(1)
        sums[p] = torch.exp2((logit - top[p, None]).clamp_min(floor)) @ vals[:, c].double().T
    return sums, top


def _problem(g, dtype, n, K, m, V1, n_seg):
    lhs = torch.randn(n, K, generator=g, dtype=dtype) * 2 / math.sqrt(K)
    table = torch.randn(K, m + _native.PAD, generator=g, dtype=dtype)
    vals = torch.rand(V1, m + _native.PAD, generator=g, dtype=dtype)
    cuts = sorted(torch.randint(0, n + 1, (n_seg - 1,), generator=g).tolist())
    lo, hi = [0] + cuts, cuts + [n]
    c0 = torch.randint(0, m // 2, (n_seg,), generator=g)
    c1 = (c0 + torch.randint(1, m // 2 + 1, (n_seg,), generator=g)).clamp_max(m)
    own = (torch.rand(n_seg, generator=g) < 0.5).tolist()
    return lhs, table, vals, (lo, hi, c0.tolist(), c1.tolist(), own)


@kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K,m,V1", [(1, 40, 2), (12, 3000, 2), (28, 700, 4), (60, 333, 3), (300, 64, 2)])
def test_kernel_equals_its_definition(dtype, K, m, V1):
    # odd sizes: partial blocks of 8 pairs, segments ending inside a vector, several column blocks
    g = torch.Generator().manual_seed(K + m)
    lhs, table, vals, seg = _problem(g, dtype, 37, K, m, V1, 6)
    sums, top = _native.softmax_sums(lhs, table, vals, *seg, -126.0)
    want, want_top = _reference(lhs, table, vals, seg, -126.0)
    assert sums.dtype == torch.float64 and top.dtype == dtype
    rel = ((sums - want) / want.abs().clamp_min(1e-300)).abs().max()
    # float32: logits of magnitude up to ~10 round to ~1e-6 relative in their exp2
    assert rel < (3e-6 if dtype == torch.float32 else 3e-7), float(rel)
    torch.testing.assert_close(top.double(), want_top, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


@kernel
def test_kernel_clamps_at_the_floor_and_leaves_other_pairs_zero():
    # logits far below the floor get weight 2^floor (no denormals); pairs of no segment stay zero
    lhs = torch.tensor([[1.0], [1.0], [7.0]])
    table = torch.zeros(1, 5 + _native.PAD)
    table[0, :5] = torch.tensor([-300.0, -130.0, -1.0, 0.0, 2.0])
    vals = torch.ones(2, 5 + _native.PAD)
    sums, top = _native.softmax_sums(lhs, table, vals, [0], [2], [0], [5], [False], -126.0)
    want = 2.0**-126 * 2 + 2.0**-1 + 1 + 4
    torch.testing.assert_close(sums[:2], torch.full((2, 2), want, dtype=torch.float64), rtol=1e-6, atol=0)
    assert (sums[2] == 0).all() and (top == 0).all()


@kernel
def test_kernel_own_maximum_never_overflows():
    # logits of 1000 (2^1000 overflows float32): with its own maximum the weights stay finite
    lhs = torch.tensor([[1000.0]])
    table = torch.zeros(1, 3 + _native.PAD)
    table[0, :3] = torch.tensor([1.0, 0.999, 0.5])
    vals = torch.ones(2, 3 + _native.PAD)
    sums, top = _native.softmax_sums(lhs, table, vals, [0], [1], [0], [3], [True], -126.0)
    assert float(top[0]) == 1000.0 and math.isclose(float(sums[0, 0]), 1 + 2.0**-1, rel_tol=1e-5)


@kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_weights_are_exact_up_to_large_logits_and_nan_stays_nan(dtype):
    # no clamp above: logits up to 120 with a fixed shift weigh 2^120; a NaN logit gives NaN sums
    lhs = torch.tensor([[1.0], [1.0], [math.nan]], dtype=dtype)
    table = torch.zeros(1, 3 + _native.PAD, dtype=dtype)
    table[0, :3] = torch.tensor([120.0, 100.0, -200.0])
    vals = torch.ones(2, 3 + _native.PAD, dtype=dtype)
    sums, _ = _native.softmax_sums(lhs, table, vals, [0, 1], [1, 3], [0, 0], [3, 3], [False, True], -126.0)
    assert math.isclose(float(sums[0, 1]), 2.0**120 + 2.0**100 + 2.0**-126, rel_tol=1e-6)
    assert math.isclose(float(sums[1, 1]), 1 + 2.0**-20, rel_tol=1e-6)
    assert sums[2].isnan().all()
    # a pair's maximum far below 0: the table's zero padding past the segment's end gives logits far above
    # it, whose weights overflow; they must still weigh nothing
    table[0, :3] = torch.tensor([-300.0, -301.0, -350.0])
    sums, top = _native.softmax_sums(lhs[:1], table, vals, [0], [1], [0], [3], [True], -126.0)
    assert float(top[0]) == -300.0 and math.isclose(float(sums[0, 1]), 1 + 2.0**-1 + 2.0**-50, rel_tol=1e-6)


def _cluster_problem(seed=14, Q=41):
    """A bank of 600 random 9-pixel patches in clusters of ~32 rows, float32 queries with 1/2σ² from 0.5 to
    2,000, a random set of kept clusters per query (with the cluster of its nearest row; the first half of the
    clusters kept by queries with 1/2σ² ≤ 20 alone; the last two keep one far cluster alone), and references
    0-60 below each query's best log-weight over them (lower bounds on it, as the bank's references are)."""
    from companion._els_bank import PatchBank

    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(600, 9, generator=g, dtype=torch.float64) * 2 - 1).round(decimals=1)    # repeats: counts
    bank = PatchBank(y, y[:, 4:5], cluster_rows=32)
    q = (y[torch.randint(0, 600, (Q,), generator=g)] + 0.05 * torch.randn(Q, 9, generator=g)).float()
    low = torch.arange(Q) < 3 * Q // 4                     # these queries: 1/2σ² ≤ 20, the others ≥ 300
    s = torch.where(low, 10 ** (torch.rand(Q, generator=g, dtype=torch.float64) * 1.6 - 0.3),
                    10 ** (torch.rand(Q, generator=g, dtype=torch.float64) * 0.8 + 2.5))
    keep = torch.rand(bank.n_clusters, Q, generator=g) < 0.2
    keep[: bank.n_clusters // 2] &= low                     # float32 logits suffice for these clusters
    label = torch.repeat_interleave(torch.arange(bank.n_clusters), bank.start.diff())[torch.argsort(bank.members)]
    keep[label[torch.cdist(q.double(), bank.y.double()).argmin(1)], torch.arange(Q)] = True   # the nearest row's
    keep[:, -1] = torch.arange(bank.n_clusters) == torch.cdist(q[-1:].double(), bank.centre).argmax()  # the farthest
    # the last but one lies beyond cluster 0's farthest row y, 3 from it on the ray from the centre m, with
    # 1/2σ² = 20, and it alone keeps that cluster: the bound is tight, the best log-weight ≈ −180 (a fixed shift
    # far from 0: weights relative to 0 would all lie below the floor), and float32 logits round by < 1e-4
    m, rows = bank.centre[0], bank.members[: int(bank.start[1])]
    y = bank.y[rows[(bank.y[rows].double() - m).norm(dim=1).argmax()]].double()
    q[-2], s[-2] = (y + 3 * (y - m) / (y - m).norm()).float(), 20.0
    keep[:, -2] = torch.arange(bank.n_clusters) == 0
    keep[0] = torch.arange(Q) == Q - 2
    logw = bank.logc - s[:, None] * torch.cdist(q.double(), bank.y.double()).pow(2)       # rows in bank order
    offset = 60 * torch.rand(Q, generator=g, dtype=torch.float64) ** 6
    offset[-2] = 0.0
    return bank, q, s, logw.masked_fill(~keep.T[:, label], -math.inf).amax(1) - offset, keep


@kernel
def test_cluster_sums_equal_their_definition():
    # the evaluation by clusters in one call: each query's softmax mean over the rows of the clusters it keeps,
    # and each cluster's shift (fixed or its own maximum) and type of logits as _by_cluster defines them
    bank, q, s, ref, keep = _cluster_problem()
    Q, P, K = q.shape[0], q.shape[1], bank.n_clusters
    margin, margin64, limit = 40 / math.log2(math.e), 600 / math.log2(math.e), 1e-4
    args = (q.double(), s, ref, keep, bank.centre, bank.radius, bank.log_cmax, bank.start,
            bank._native_tables(True, torch.float32), bank._native_tables(True, torch.float64), -126.0, margin,
            margin64, limit)
    sums, flags = _native.cluster_sums(*args)
    label = torch.repeat_interleave(torch.arange(K), bank.start.diff())              # rows cluster by cluster
    tab, vals = bank._centred(torch.float64)
    y, logc, v = tab[:, :P] + bank.centre[label], tab[:, P + 1], vals[0]
    logw = logc - s[:, None] * torch.cdist(q.double(), y).pow(2)
    w = torch.softmax(logw.masked_fill(~keep.T[:, label], -math.inf), 1)
    torch.testing.assert_close(sums[:, 0] / sums[:, 1], w @ v, rtol=0, atol=2e-6)
    dist = torch.cdist(bank.centre, q.double())                                         # (K, Q)
    ub = bank.log_cmax[:, None] - s * (dist - bank.radius[:, None]).clamp_min(0).pow(2)
    gap = (ub - ref).masked_fill(~keep, -math.inf).amax(1).clamp_min(0)
    fixed = gap <= margin
    shift = torch.where(fixed, ref.abs().masked_fill(~keep, 0).amax(1), torch.zeros(K, dtype=torch.float64))
    spread = ((s.sqrt() * dist).masked_fill(~keep, 0).amax(1) + bank.radius * s.masked_fill(~keep, 0).amax(1).sqrt())
    exact = 2.0**-24 * (spread**2 + shift + bank.log_cmax) > limit
    fixed = fixed | (exact & (gap <= margin64))
    kept = keep.any(1)
    assert torch.equal(flags[kept].long(), (fixed.long() + 2 * exact.long())[kept])
    for f in (0, 1, 2, 3):                                      # every combination occurs
        assert bool((flags[kept] == f).any()), f
    for threads in (1, 2):                                      # the same, bit for bit, on any number of threads
        assert torch.equal(_native.cluster_sums(*args, threads=threads)[0], sums)


@kernel
def test_cluster_sums_reject_bad_input():
    bank, q, s, ref, keep = _cluster_problem(Q=5)
    t32, t64 = bank._native_tables(True, torch.float32), bank._native_tables(True, torch.float64)
    args = dict(q=q.double(), inv2s2=s, ref=ref, keep=keep, centre=bank.centre, radius=bank.radius,
                log_cmax=bank.log_cmax, start=bank.start, tables32=t32, tables64=t64, floor=-126.0, margin=27.0,
                margin64=400.0, limit=1e-4)
    for name, bad, match in [("q", q, "q must be a contiguous CPU float64"), ("ref", ref[:3], "ref must be"),
                             ("keep", keep.T, "keep must be"), ("start", bank.start.flip(0), "start must be"),
                             ("tables32", (t32[0][:, :-1], t32[1]), "tables32"), ("tables64", t32, "tables64"),
                             ("floor", 1.0, "floor"), ("threads", 0, "threads"), ("threads", 1.5, "threads"),
                             ("q", torch.zeros(len(q), 0, dtype=torch.float64), "q must")]:
        with pytest.raises(ValueError, match=match):
            _native.cluster_sums(**{**args, name: bad})


def _large_problem(dtype, seed):
    """A problem large enough to be shared among threads: segments of many pairs (split into runs of
    pairs) and of few pairs with many columns (split into runs of columns), an empty one, and pairs of
    no segment (1040-1099)."""
    g = torch.Generator().manual_seed(seed)
    n, K, m = 1100, 12, 300_000
    lhs = torch.randn(n, K, generator=g, dtype=dtype) * 3 / math.sqrt(K)
    table = torch.randn(K, m + _native.PAD, generator=g, dtype=dtype)
    vals = torch.rand(3, m + _native.PAD, generator=g, dtype=dtype)
    seg = ([0, 5, 40, 41, 300, 990], [5, 40, 41, 300, 990, 1040], [0, 7, 0, 0, 1, 3], [m, m - 9, 0, 20_000, 9_000, m],
           [False, True, True, True, False, False])
    return lhs, table, vals, seg


@kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kernel_threads_and_column_runs_equal_the_definition(dtype):
    # column runs' sums are combined, each run with its own maximum where own_max; the result must not
    # depend on the number of threads
    lhs, table, vals, seg = _large_problem(dtype, 5)
    out = [_native.softmax_sums(lhs, table, vals, *seg, -126.0, threads=t) for t in (1, 2, 3)]
    for sums, top in out[1:]:
        assert torch.equal(sums, out[0][0]) and torch.equal(top, out[0][1])
    want, want_top = _reference(lhs, table, vals, seg, -126.0)
    rel = ((out[0][0] - want) / want.abs().clamp_min(1e-300)).abs().max()
    assert rel < (3e-6 if dtype == torch.float32 else 3e-7), float(rel)
    torch.testing.assert_close(out[0][1].double(), want_top, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


@kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_max_logits_are_the_first_pass_of_the_kernel(dtype):
    # max_logits: each pair's largest logit, as softmax_sums' own maximum gives it (bitwise), on 1-3
    # threads; -inf for a segment without columns, 0 for the pairs of no segment
    lhs, table, vals, seg = _large_problem(dtype, 6)
    own = (*seg[:4], [True] * 6)
    tops = [_native.max_logits(lhs, table, *seg[:4], threads=t) for t in (1, 2, 3)]
    assert all(torch.equal(t, tops[0]) for t in tops[1:]) and tops[0].dtype == dtype
    assert torch.equal(tops[0], _native.softmax_sums(lhs, table, vals, *own, -126.0)[1])
    want = _reference(lhs, table, vals, own, -126.0)[1]
    torch.testing.assert_close(tops[0].double(), want, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert (tops[0][40] == -math.inf) and (tops[0][1040:] == 0).all()
    with pytest.raises(ValueError, match="own_max for every segment"):         # maxima relative to 0: none
        _native._call(_native.load(), lhs, table, None, *seg, -126.0)


@kernel
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_plan_reference_by_the_kernel_equals_torch(dtype, monkeypatch):
    # plan()'s ref (the best log-weight over the nearest clusters) from the kernel's maxima and from torch
    from companion._els_bank import PatchBank

    g = torch.Generator().manual_seed(7)
    y = torch.randn(3000, 9, generator=g, dtype=torch.float64)
    bank = PatchBank(y, y[:, :1], cluster_rows=64)
    q = (y[:300] + 0.1 * torch.randn(300, 9, generator=g, dtype=torch.float64)).to(dtype)
    s = torch.full((300,), 50.0, dtype=dtype)
    ref = {}
    for native in (False, True):
        monkeypatch.setattr(PatchBank, "native", native)
        ref[native] = bank.plan(q, s, 1e-7)[0]
    torch.testing.assert_close(ref[True], ref[False], rtol=0, atol=1e-12 * float(ref[False].abs().max()))


@kernel
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 flush-to-zero")
def test_kernel_threads_flush_denormals_like_the_caller():
    # weights at the floor times 0.5 are denormal; with flush-to-zero set by the caller every thread must
    # flush them (threads started earlier do not inherit the caller's setting), so threads change nothing
    lhs, table = torch.ones(600, 1), torch.full((1, 2000 + _native.PAD), -200.0)
    vals = torch.full((2, 2000 + _native.PAD), 0.5)
    seg = ([0], [600], [0], [2000], [False])
    torch.zeros(1000, 1000).exp_()                    # torch's threads exist before flush-to-zero is set
    try:
        torch.set_flush_denormal(True)
        one, two = (_native.softmax_sums(lhs, table, vals, *seg, -126.0, threads=t)[0] for t in (1, 2))
    finally:
        torch.set_flush_denormal(False)
    assert (one == 0).all() and torch.equal(one, two)


@kernel
@pytest.mark.parametrize("floor", [-126.0, -3.0])
def test_kernel_column_runs_keep_the_floor_relative_to_the_pairs_maximum(floor):
    # few pairs, many columns: the columns are cut into runs; one run holds logits far above the others,
    # so each run's own maximum differs from the pair's, and the floor must apply relative to the pair's
    g = torch.Generator().manual_seed(6)
    n, K, m = 60, 4, 500_000
    lhs = torch.rand(n, K, generator=g) + 1
    table = torch.randn(K, m + _native.PAD, generator=g) * 0.5 - 3
    table[:, 150_000:150_100] += 8                  # a few columns far above the rest
    vals = torch.rand(2, m + _native.PAD, generator=g)
    # own maximum with the high columns, a fixed shift, own maximum on negative logits only
    seg = ([0, 20, 40], [20, 40, 60], [0, 1000, 160_000], [m, m - 5, m], [True, False, True])
    sums, top = _native.softmax_sums(lhs, table, vals, *seg, floor, threads=2)
    want, want_top = _reference(lhs, table, vals, seg, floor)
    assert ((sums - want) / want).abs().max() < 3e-6
    torch.testing.assert_close(top.double(), want_top, rtol=0, atol=1e-5)


@kernel
@pytest.mark.parametrize("change,match", [
    (dict(vals=torch.zeros(5, 40 + _native.PAD)), "vals must have 2 to 4 rows"),
    (dict(table=torch.zeros(3, 40 + _native.PAD)), "do not match"),
    (dict(col_hi=[40 + 1]), "readable columns"),
    (dict(pair_hi=[9]), "within lhs"),
    (dict(own_max=[True, False]), "one entry per segment"),
    (dict(lhs=torch.zeros(8, 4, dtype=torch.float64)), "dtype"),
    (dict(table=torch.zeros(40 + _native.PAD, 4).T), "contiguous"),
    (dict(floor=-140.0), "floor must lie in"),
    (dict(pair_lo=[0, 4], pair_hi=[5, 8], col_lo=[0, 0], col_hi=[40, 40], own_max=[False, False]), "share pairs"),
    (dict(threads=0), "threads must be a positive integer"),
    (dict(threads=2.0), "threads must be a positive integer"),
])
def test_kernel_rejects_bad_input(change, match):
    args = dict(lhs=torch.zeros(8, 4), table=torch.zeros(4, 40 + _native.PAD), vals=torch.zeros(2, 40 + _native.PAD),
                pair_lo=[0], pair_hi=[8], col_lo=[0], col_hi=[40], own_max=[False], floor=-126.0, threads=None)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        _native.softmax_sums(**args)


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """The loader as on first use, with its cache in a temporary folder."""
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_lib", None)
    monkeypatch.setattr(_native, "reason", _native.reason)       # restored afterwards, like the two above
    monkeypatch.setattr(_native, "openmp", _native.openmp)
    monkeypatch.setenv("COMPANION_CACHE", str(tmp_path))
    return tmp_path


@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None or os.environ.get("COMPANION_NATIVE") == "0",
                    reason="no compiler, or the kernel turned off")
def test_kernel_loads_where_a_compiler_exists(tmp_path):
    # with a compiler the kernel must build and pass its check: a fallback here would hide a bug; and
    # where the compiler takes -fopenmp, the kernel must have been built with it (else: one thread)
    assert _native.load() is not None, _native.reason
    probe = tmp_path / "probe.cpp"
    probe.write_text("int main() { return 0; }\n")
    cxx = os.environ.get("CXX", "c++")
    if subprocess.run([cxx, *_native.OPENMP, str(probe), "-o", str(tmp_path / "probe")]).returncode == 0:
        assert _native.openmp, _native.reason


def test_loader_can_be_turned_off_or_lack_a_compiler(fresh, monkeypatch):
    monkeypatch.setenv("COMPANION_NATIVE", "0")
    assert _native.load() is None and "COMPANION_NATIVE=0" in _native.reason
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setenv("COMPANION_NATIVE", "1")
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert _native.load() is None and "no C++ compiler" in _native.reason
    with pytest.raises(RuntimeError, match="not available"):
        _native.softmax_sums(torch.zeros(1, 1), torch.zeros(1, 40), torch.zeros(2, 40), [0], [1], [0], [1], [False], 0)
    assert list(fresh.iterdir()) == []


@kernel
def test_loader_builds_once_into_the_cache_and_leaves_no_partial_file(fresh):
    assert _native.load() is not None and _native.reason == "loaded"
    built = sorted(p.name for p in fresh.iterdir())
    assert len(built) == 1 and built[0].startswith("softmax_sums-") and built[0].endswith(".so")
    umask = os.umask(0)
    os.umask(umask)
    assert (fresh / built[0]).stat().st_mode & 0o777 == 0o755 & ~umask       # readable by others: shareable
    stamp = (fresh / built[0]).stat().st_mtime_ns
    _native._tried = False
    assert _native.load() is not None and (fresh / built[0]).stat().st_mtime_ns == stamp   # reused


@kernel
def test_loader_falls_back_when_the_build_fails_or_the_check_fails(fresh, monkeypatch, tmp_path_factory):
    bad = tmp_path_factory.mktemp("src") / "_softmax_sums.cpp"
    bad.write_text("this is not C++\n")
    monkeypatch.setattr(_native, "SOURCE", bad)
    assert _native.load() is None and "could not be built" in _native.reason
    assert list(fresh.iterdir()) == []                                      # no half-written library
    # a kernel that builds but computes the wrong thing (a wrong polynomial coefficient) is refused
    wrong = _native.SOURCE.parent / "wrong.cpp"
    source = pathlib.Path(_native.__file__).with_name("_softmax_sums.cpp").read_text()
    wrong.write_text(source.replace("0.6931469440460205", "0.6921469440460205"))
    monkeypatch.setattr(_native, "SOURCE", wrong)
    monkeypatch.setattr(_native, "_tried", False)
    assert _native.load() is None and "failed its check" in _native.reason


def _colour_digits(channels):
    """40 of the 16×16 digits (float32), as 1 channel or 3 channels that differ."""
    from companion import recipes

    d = recipes.digits16(16, 40)[0].float()
    return d if channels == 1 else torch.cat([d, d.roll(1, -1), -d], 1)


@kernel
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma", [1e-4, 0.02, 0.1, 2.0])
@pytest.mark.parametrize("path", ["clusters", "windows", "whole", "direct"])
def test_bank_with_the_kernel_equals_the_bank_without(path, sigma, channels, monkeypatch):
    # each way of evaluating the bank, forced, with and without the kernel, against the float64 machine
    from companion import els
    from companion._els_bank import PatchBank

    data = _colour_digits(channels)
    x = data[:3] + sigma * torch.randn(data[:3].shape, generator=torch.Generator().manual_seed(8))
    exact = els.equivariant_local(data.double(), 5, bank_min=float("inf"))(x.double(), sigma)
    monkeypatch.setattr(PatchBank, "_direct_pairs", 2**40 if path == "direct" else 0)
    monkeypatch.setattr(PatchBank, "_skip_planning", path == "direct")
    monkeypatch.setattr(PatchBank, "_pair_cost", 0.0 if path == "clusters" else 1.0)
    monkeypatch.setattr(PatchBank, "_overhead", -1 if path == "clusters" else math.inf)
    monkeypatch.setattr(PatchBank, "_whole_cost", -1.0 if path == "whole" else 1e9)
    used = []
    orig, orig_clusters = _native.softmax_sums, _native.cluster_sums
    monkeypatch.setattr(_native, "softmax_sums", lambda lhs, *a: used.append(lhs.dtype) or orig(lhs, *a))
    monkeypatch.setattr(_native, "cluster_sums", lambda *a: (lambda out: used.extend(   # the clusters' logit types
        torch.float64 if f & 2 else torch.float32 for f in out[1][a[3].any(1)].tolist()) or out)(orig_clusters(*a)))
    out = {}
    for native in (False, True):
        monkeypatch.setattr(PatchBank, "native", native)
        out[native] = els.equivariant_local(data, 5, tol=1e-7, bank_min=1)(x, sigma)
        assert bool(used) == native                                    # the kernel ran, or did not
    assert (out[True].double() - out[False].double()).abs().max() < 2e-5
    assert (out[True].double() - exact).abs().max() < 1e-4
    if path == "clusters" and sigma == 1e-4:          # float32 logits would round too much: float64 ones
        assert torch.float64 in used


@kernel
@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_portable_build_without_avx512_equals_its_definition(fresh, monkeypatch):
    # the exp2 without AVX-512 instructions (exponent bits by integer arithmetic) is checked too
    monkeypatch.setattr(_native, "FLAGS", [f if f != "-march=native" else "-march=x86-64-v2" for f in _native.FLAGS])
    assert _native.load() is not None, _native.reason
    for dtype in (torch.float32, torch.float64):
        lhs, table, vals, seg = _problem(torch.Generator().manual_seed(3), dtype, 29, 12, 500, 2, 4)
        sums, top = _native.softmax_sums(lhs, table, vals, *seg, -126.0)
        want, want_top = _reference(lhs, table, vals, seg, -126.0)
        assert ((sums - want) / want.abs().clamp_min(1e-300)).abs().max() < 3e-6


@kernel
def test_loader_builds_without_openmp_where_the_compiler_lacks_it(fresh, monkeypatch):
    # a compiler that refuses the OpenMP flag: the kernel is built without it and runs on one thread
    monkeypatch.setattr(_native, "OPENMP", ["-fno-such-openmp-flag"])
    assert _native.load() is not None and "on one thread" in _native.reason and not _native.openmp
    assert len(list(fresh.glob("*.so"))) == 1 and len(list(fresh.glob("*.no-openmp"))) == 1
    # a later process remembers the failed build and does not compile again
    compiles = []
    run = subprocess.run
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: compiles.append(cmd) or run(cmd, **kw))
    monkeypatch.setattr(_native, "_tried", False)
    monkeypatch.setattr(_native, "_lib", None)
    assert _native.load() is not None and "on one thread" in _native.reason
    assert [c for c in compiles if "-o" in c] == []
    g = torch.Generator().manual_seed(4)
    lhs, table, vals = torch.randn(300, 12, generator=g), torch.randn(12, 5000 + _native.PAD, generator=g), \
        torch.rand(2, 5000 + _native.PAD, generator=g)
    seg = ([0], [300], [0], [5000], [True])
    sums, _ = _native.softmax_sums(lhs, table, vals, *seg, -126.0, threads=2)
    want, _ = _reference(lhs, table, vals, seg, -126.0)
    assert ((sums - want) / want).abs().max() < 3e-6

@kernel
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sigma", [0.02, 0.5, 3.0])
@pytest.mark.parametrize("kind", ["ls", "els"])
def test_plain_machine_with_the_kernel_equals_it_without(kind, sigma, channels, monkeypatch):
    # the loop over position classes (LS; ELS without banks) through the kernel, against torch and float64
    from companion import data as cp_data, els
    from companion._els_bank import PatchBank

    d = cp_data.digits()[0][:100].float()
    data = d if channels == 1 else torch.cat([d, d.flip(-1), -d], 1)
    x = data[:4] + sigma * torch.randn(data[:4].shape, generator=torch.Generator().manual_seed(2))
    build = els.local if kind == "ls" else els.equivariant_local
    exact = build(data.double(), 3, bank_min=float("inf"))(x.double(), sigma)
    used = []
    orig = _native.softmax_sums
    monkeypatch.setattr(_native, "softmax_sums", lambda lhs, *a: used.append(1) or orig(lhs, *a))
    out = {}
    for native in (False, True):
        monkeypatch.setattr(PatchBank, "native", native)
        out[native] = build(data, 3, bank_min=float("inf"))(x, sigma)
        assert bool(used) == native
    assert (out[True].double() - out[False].double()).abs().max() < 2e-5
    assert (out[True].double() - exact).abs().max() < 1e-4


@kernel
@pytest.mark.parametrize("kind", ["ls", "els"])
def test_large_patches_go_through_the_kernel(kind, monkeypatch):
    # 17x17 patches: 290 logit columns (there is no limit on their number)
    from companion import els

    data = torch.rand(4, 1, 17, 17, generator=torch.Generator().manual_seed(5)) * 2 - 1
    x = data[:2] + 0.5 * torch.randn(2, 1, 17, 17, generator=torch.Generator().manual_seed(6))
    build = els.local if kind == "ls" else els.equivariant_local
    used = []
    orig = _native.softmax_sums
    monkeypatch.setattr(_native, "softmax_sums", lambda lhs, *a: used.append(lhs.shape[1]) or orig(lhs, *a))
    got = build(data, 17, bank_min=1)(x, 0.5)
    want = build(data.double(), 17, bank_min=float("inf"))(x.double(), 0.5)
    assert max(used) >= 290 and (got.double() - want).abs().max() < 1e-4


@kernel
def test_plain_machine_too_large_to_tabulate_falls_back_to_torch(monkeypatch):
    # with no room to cache its table (cache_elements), the plain loop runs on torch, unchanged
    from companion import data as cp_data, els

    data = cp_data.digits()[0][:50].float()
    x = data[:3] + 0.6 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    used = []
    orig = _native.softmax_sums
    monkeypatch.setattr(_native, "softmax_sums", lambda lhs, *a: used.append(1) or orig(lhs, *a))
    for padding in ("zeros", "circular"):
        got = els.local(data, 3, padding, cache_elements=1)(x, 0.6)
        want = els.local(data.double(), 3, padding)(x.double(), 0.6)
        assert not used and (got.double() - want).abs().max() < 1e-4
