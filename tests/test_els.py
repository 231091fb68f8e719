"""Tests of companion.els: the IS, LS and ELS machines against brute-force Bayes weights."""
import itertools
import math

import numpy as np
import pytest
import torch

from companion import els


@pytest.fixture(autouse=True)
def _plan_small_banks_too(monkeypatch):
    # the tests' banks are small: without this they would be evaluated whole (PatchBank._direct_pairs),
    # and at high noise without planning (PatchBank._skip_planning), and the pruning they check would
    # never run; the tests of the direct and unplanned paths set them back
    from companion._els_bank import PatchBank
    monkeypatch.setattr(PatchBank, "_direct_pairs", 0)
    monkeypatch.setattr(PatchBank, "_skip_planning", False)


# ---------------------------------------------------------------------------------------------
# brute force: enumerate every candidate patch explicitly, pixel by pixel, in float64


def _patch(img, i, j, k, padding):
    """The k×k patch of ``img`` (C, H, W) centred at (i, j) and the mask of its real pixels."""
    C, H, W = img.shape
    d = k // 2
    vals = torch.zeros(C, k, k, dtype=img.dtype)
    mask = torch.zeros(k, k, dtype=torch.bool)
    for a in range(k):
        for b in range(k):
            r, c = i + a - d, j + b - d
            if padding == "circular":
                vals[:, a, b] = img[:, r % H, c % W]
                mask[a, b] = True
            elif 0 <= r < H and 0 <= c < W:
                vals[:, a, b] = img[:, r, c]
                mask[a, b] = True
    return vals, mask


def brute_force(x, data, sigma, kind, k=None, padding="zeros"):
    """Posterior means by explicit enumeration of the candidates and their Bayes weights."""
    B, C, H, W = x.shape
    sig = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(B)
    out = torch.zeros_like(x)
    for b in range(B):
        if kind == "is":
            logw = torch.stack([-((x[b] - y) ** 2).sum() / (2 * sig[b] ** 2) for y in data])
            w = torch.softmax(logw, 0)
            out[b] = (w[:, None, None, None] * data).sum(0)
            continue
        for i, j in itertools.product(range(H), range(W)):
            q, qmask = _patch(x[b], i, j, k, padding)
            logw, centres = [], []
            for y in data:
                for p, r in itertools.product(range(H), range(W)):
                    if kind == "ls" and (p, r) != (i, j):
                        continue
                    cand, cmask = _patch(y, p, r, k, padding)
                    if kind == "els" and not torch.equal(cmask, qmask):
                        continue  # zero padding: only patches with the same padding pattern
                    logw.append(-((q - cand) ** 2).sum() / (2 * sig[b] ** 2))
                    centres.append(y[:, p, r])
            w = torch.softmax(torch.stack(logw), 0)
            out[b, :, i, j] = (w[:, None] * torch.stack(centres)).sum(0)
    return out


@pytest.fixture
def tiny():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(3, 2, 5, 6, generator=g, dtype=torch.float64) * 2 - 1
    x = data[:2] + 0.7 * torch.randn(2, 2, 5, 6, generator=g, dtype=torch.float64)
    return data, x


@pytest.mark.parametrize(
    "kind,k,padding",
    [("is", None, "zeros"), ("ls", 3, "zeros"), ("ls", 3, "circular"), ("els", 3, "zeros"),
     ("els", 5, "zeros"), ("els", 3, "circular"), ("els", 5, "circular"), ("ls", 1, "zeros")],
)
def test_machines_equal_brute_force(tiny, kind, k, padding):
    data, x = tiny
    sigma = torch.tensor([0.4, 1.3], dtype=torch.float64)
    machine = els.ScoreMachine(data, kind, k if k else 3, padding)
    got = machine(x, sigma)
    want = brute_force(x, data, sigma, kind, k, padding)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_factories(tiny):
    data, x = tiny
    assert els.ideal(data).kind == "is"
    torch.testing.assert_close(els.local(data, 3)(x, 0.5), els.ScoreMachine(data, "ls", 3)(x, 0.5))
    torch.testing.assert_close(els.equivariant_local(data, 3, "circular")(x, 0.5),
                               brute_force(x, data, 0.5, "els", 3, "circular"))


def test_ls_with_full_image_patches_is_ideal():
    # circular 5×5 patches on 5×5 images: every pixel sees the whole image, so LS = IS
    g = torch.Generator().manual_seed(1)
    data = torch.randn(6, 1, 5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    for sigma in (0.3, 1.0, 5.0):
        torch.testing.assert_close(els.local(data, 5, "circular")(x, sigma), els.ideal(data)(x, sigma))


def test_zero_padded_els_with_full_patches_is_ls():
    # with k = H = W every position has its own padding pattern: boundary-broken ELS = LS
    g = torch.Generator().manual_seed(2)
    data = torch.randn(4, 1, 5, 5, generator=g, dtype=torch.float64)
    x = torch.randn(3, 1, 5, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(els.equivariant_local(data, 5)(x, 0.8), els.local(data, 5)(x, 0.8))


@pytest.mark.parametrize("kind,padding", [("is", "zeros"), ("ls", "zeros"), ("els", "zeros"), ("els", "circular")])
def test_streaming_equals_one_shot(kind, padding):
    g = torch.Generator().manual_seed(3)
    data = torch.randn(20, 1, 6, 6, generator=g, dtype=torch.float64)
    x = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64) * 2
    one_shot = els.ScoreMachine(data, kind, 3, padding, chunk_elements=10**9)(x, 0.2)
    for cache in (0, 10**9):  # training patches recomputed per chunk / tabulated once
        streamed = els.ScoreMachine(data, kind, 3, padding, chunk_elements=1, cache_elements=cache)(x, 0.2)
        torch.testing.assert_close(streamed, one_shot, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,padding", [("ls", "zeros"), ("els", "zeros"), ("els", "circular")])
def test_mosaic_property(kind, padding):
    # σ → 0: each pixel becomes the centre of its nearest allowed training patch
    g = torch.Generator().manual_seed(4)
    data = torch.randn(3, 1, 5, 6, generator=g, dtype=torch.float64)
    x = torch.randn(2, 1, 5, 6, generator=g, dtype=torch.float64)
    got = els.ScoreMachine(data, kind, 3, padding)(x, 1e-4)
    want = torch.zeros_like(x)
    for b, i, j in itertools.product(range(2), range(5), range(6)):
        q, qm = _patch(x[b], i, j, 3, padding)
        best = (math.inf, None)
        for y in data:
            for p, r in itertools.product(range(5), range(6)):
                if kind == "ls" and (p, r) != (i, j):
                    continue
                c, cm = _patch(y, p, r, 3, padding)
                if kind == "els" and not torch.equal(cm, qm):
                    continue
                dist = ((q - c) ** 2).sum().item()
                if dist < best[0]:
                    best = (dist, y[:, p, r])
        want[b, :, i, j] = best[1]
    torch.testing.assert_close(got, want)


def test_finite_at_small_sigma_float32():
    g = torch.Generator().manual_seed(5)
    data = torch.randn(10, 1, 8, 8, generator=g)
    x = torch.randn(4, 1, 8, 8, generator=g) * 3
    for kind in els.KINDS:
        out = els.ScoreMachine(data, kind, 3)(x, 1e-4)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_circular_els_is_translation_equivariant(tiny):
    data, x = tiny
    m = els.equivariant_local(data, 3, "circular")
    shifted = torch.roll(x, shifts=(2, -1), dims=(2, 3))
    torch.testing.assert_close(m(shifted, 0.6), torch.roll(m(x, 0.6), shifts=(2, -1), dims=(2, 3)))


def test_class_conditioning_equals_subset():
    g = torch.Generator().manual_seed(6)
    data = torch.randn(12, 1, 6, 6, generator=g, dtype=torch.float64)
    labels = torch.arange(12) % 3
    x = torch.randn(3, 1, 6, 6, generator=g, dtype=torch.float64)
    want_labels = torch.tensor([0, 2, 1])
    for kind in els.KINDS:
        m = els.ScoreMachine(data, kind, 3, labels=labels, chunk_elements=50, cache_elements=0)
        got = m(x, 0.5, labels=want_labels)
        for b in range(3):
            sub = els.ScoreMachine(data[labels == want_labels[b]], kind, 3)
            torch.testing.assert_close(got[b:b + 1], sub(x[b:b + 1], 0.5))
        torch.testing.assert_close(m.with_labels(want_labels)(x, 0.5), got)


def test_local_weights_match_ls(tiny):
    data, x = tiny
    w = els.local_weights(x, data, 0.5, 3)
    assert w.shape == (2, 3, 5, 6)
    torch.testing.assert_close(w.sum(1), torch.ones(2, 5, 6, dtype=torch.float64))
    recon = (w[:, :, None] * data[None]).sum(1)
    torch.testing.assert_close(recon, els.local(data, 3)(x, 0.5))


def test_locality_schedule_and_mixed_sigmas(tiny):
    data, x = tiny
    sched = els.LocalitySchedule([2.0, 0.5, 0.1], [5, 3, 1])
    assert sched(3.0) == 5 and sched(0.6) == 3 and sched(0.01) == 1 and sched(0.3) == 3
    m = els.equivariant_local(data, sched)
    sigma = torch.tensor([2.0, 0.1], dtype=torch.float64)
    got = m(x, sigma)
    torch.testing.assert_close(got[:1], els.equivariant_local(data, 5)(x[:1], 2.0))
    torch.testing.assert_close(got[1:], els.equivariant_local(data, 1)(x[1:], 0.1))
    with pytest.raises(ValueError):
        els.LocalitySchedule([1.0, 0.5], [3, 4])
    with pytest.raises(ValueError):
        els.LocalitySchedule([1.0], [3, 5])


def test_pearson_r():
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(5, 1, 4, 4, generator=g), torch.randn(5, 1, 4, 4, generator=g)
    r = els.pearson_r(a, b)
    want = [np.corrcoef(a[i].reshape(-1).numpy(), b[i].reshape(-1).numpy())[0, 1] for i in range(5)]
    np.testing.assert_allclose(r.numpy(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(els.pearson_r(a, 3 * a + 1), torch.ones(5))
    with pytest.raises(ValueError):
        els.pearson_r(a, b[:3])


def test_calibrate_recovers_the_size_of_a_machine():
    samplers = pytest.importorskip("companion.samplers")
    g = torch.Generator().manual_seed(8)
    data = torch.rand(15, 1, 7, 7, generator=g) * 2 - 1
    net = els.equivariant_local(data, 5)                    # a "network" that is an ELS machine, k = 5
    sigmas = samplers.loglinear(5, 0.05, 5.0)
    x = sigmas[0] * torch.randn(4, 1, 7, 7, generator=g)
    cal = els.calibrate(net, els.equivariant_local(data, 3), sigmas, x, [3, 5, 7])
    assert cal.schedule.sizes == [5] * 5
    assert cal.mse.shape == (5, 3, 4) and cal.best.shape == (5, 4)
    torch.testing.assert_close(cal.mse[:, 1], torch.zeros(5, 4), rtol=0, atol=1e-10)


def test_calibrate_discriminates_sizes_at_high_noise():
    # the comparison must separate the sizes clearly even at large σ; here σ_max = 20 ≫ ‖x0‖
    samplers = pytest.importorskip("companion.samplers")
    g = torch.Generator().manual_seed(9)
    data = torch.rand(20, 1, 7, 7, generator=g) * 2 - 1
    net = els.equivariant_local(data, 3)
    sigmas = samplers.loglinear(4, 0.1, 20.0)
    x = sigmas[0] * torch.randn(6, 1, 7, 7, generator=g)
    cal = els.calibrate(net, els.equivariant_local(data, 7), sigmas, x, [3, 5, 7])
    assert cal.schedule.sizes == [3] * 4
    assert (cal.best == 3).all()
    assert (cal.spread > 0.5).all()          # wrong sizes are far worse, not third-decimal worse
    # the recorded error is the mean squared difference of the denoiser outputs (not of scores, not a cosine)
    want = torch.stack([(els.equivariant_local(data, k)(x, sigmas[0]) - net(x, sigmas[0])).pow(2).flatten(1).mean(1)
                        for k in (3, 5, 7)])
    torch.testing.assert_close(cal.mse[0], want, rtol=1e-4, atol=1e-8)
    # the paper's criterion (best score cosine per sample, median over samples) picks the same size
    assert cal.paper_schedule.sizes == [3] * 4
    d3, x0 = els.equivariant_local(data, 3)(x, sigmas[0]), net(x, sigmas[0])
    cos = torch.nn.functional.cosine_similarity((d3 - x).flatten(1), (x0 - x).flatten(1), dim=1)
    torch.testing.assert_close(cal.cosine[0, 0], cos, rtol=1e-6, atol=1e-7)


def test_paper_schedule_is_the_median_of_per_sample_best_cosines():
    samplers = pytest.importorskip("companion.samplers")
    g = torch.Generator().manual_seed(10)
    data = torch.rand(12, 1, 7, 7, generator=g) * 2 - 1
    sigmas = samplers.loglinear(3, 0.1, 3.0)
    x = sigmas[0] * torch.randn(4, 1, 7, 7, generator=g)
    cal = els.calibrate(els.equivariant_local(data, 5), els.equivariant_local(data, 3), sigmas, x, [3, 5, 7])
    best = torch.tensor([3, 5, 7])[cal.cosine.argmax(1)]                      # (S, B)
    for j in range(3):
        votes = sorted(best[j].tolist())
        assert cal.paper_schedule.sizes[j] == votes[(len(votes) - 1) // 2]   # the lower median


def test_bad_inputs():
    data = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="odd"):
        els.equivariant_local(data, 4)
    with pytest.raises(ValueError, match="larger than the image"):
        els.local(data, 9)
    with pytest.raises(ValueError, match="odd"):
        els.local(data, 0)
    with pytest.raises(ValueError, match="channels"):
        els.equivariant_local(data, 3)(torch.zeros(2, 3, 8, 8), 1.0)
    with pytest.raises(ValueError, match="image size"):
        els.equivariant_local(data, 3)(torch.zeros(2, 1, 6, 8), 1.0)
    with pytest.raises(ValueError, match="patch_size"):
        els.equivariant_local(data, 3)(torch.zeros(2, 1, 8, 8), 1.0, patch_size=2)
    with pytest.raises(ValueError, match="patch_size"):
        els.equivariant_local(data, lambda s: 10)(torch.zeros(2, 1, 8, 8), 1.0)
    with pytest.raises(ValueError, match="kind"):
        els.ScoreMachine(data, "xyz", 3)
    with pytest.raises(ValueError, match="padding"):
        els.ScoreMachine(data, "els", 3, padding="reflect")
    with pytest.raises(ValueError, match="data"):
        els.ideal(torch.zeros(0, 1, 8, 8))
    with pytest.raises(ValueError, match="data"):
        els.ideal(torch.zeros(4, 8, 8))
    with pytest.raises(ValueError, match="sigma"):
        els.ideal(data)(torch.zeros(2, 1, 8, 8), -1.0)
    with pytest.raises(ValueError, match="labels"):
        els.ideal(data)(torch.zeros(2, 1, 8, 8), 1.0, labels=torch.tensor([0, 1]))
    m = els.ideal(data, labels=torch.tensor([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="no training images"):
        m(torch.zeros(2, 1, 8, 8), 1.0, labels=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="labels"):
        els.ideal(data, labels=torch.tensor([0, 1]))


def test_checker_local_weights():
    from companion.exercises import check_local_weights

    assert not check_local_weights(els.local_weights, quiet=True)  # handing in the reference is delegation

    def wrong(x, data, sigma, patch_size):  # forgets the factor 2 in 2σ²
        return els.local_weights(x, data, sigma / 2**0.5, patch_size)

    def circular(x, data, sigma, patch_size):  # wrong padding at the border
        d = patch_size // 2
        sq = ((x[:, None] - data[None]) ** 2).sum(2)
        sq = torch.nn.functional.pad(sq, (d, d, d, d), mode="circular")
        s = torch.nn.functional.avg_pool2d(sq, patch_size, stride=1) * patch_size**2
        return torch.softmax(-s / (2 * sigma**2), 1)

    assert not check_local_weights(wrong, quiet=True)
    assert not check_local_weights(circular, quiet=True)


# ---------------------------------------------------------------------------------------------
# the fast path: deduplicated, block-bounded patch banks (companion._els_bank)


@pytest.mark.parametrize("k,padding", [(3, "zeros"), (5, "zeros"), (3, "circular")])
@pytest.mark.parametrize("tol", [0.0, 1e-7])
def test_bank_path_equals_brute_force(tiny, k, padding, tol):
    data, x = tiny
    sigma = torch.tensor([0.4, 1.3], dtype=torch.float64)
    got = els.equivariant_local(data, k, padding, tol=tol, bank_min=1)(x, sigma)
    want = brute_force(x, data, sigma, "els", k, padding)
    torch.testing.assert_close(got, want, rtol=0, atol=2 * tol * data.abs().max().item() + 1e-10)


def _digits_like(n=120, seed=0):
    """Blocky images with many identical patches (background) and a few grey levels, like digits."""
    g = torch.Generator().manual_seed(seed)
    img = torch.full((n, 1, 8, 8), -1.0, dtype=torch.float64)
    strokes = torch.randint(0, 5, (n, 1, 4, 4), generator=g).double() / 2 - 1    # levels -1..1
    img[:, :, 2:6, 2:6] = strokes
    return img


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("sigma", [3.0, 0.5, 0.1, 0.02, 1e-4])
def test_pruning_and_dedup_equal_the_plain_machine(padding, sigma):
    from companion import _els_bank

    data = _digits_like()
    g = torch.Generator().manual_seed(1)
    x = data[:5] + sigma * torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64)
    plain = els.equivariant_local(data, 3, padding, bank_min=float("inf"))(x, sigma)
    tol = 1e-7
    fast = els.equivariant_local(data, 3, padding, tol=tol, bank_min=1)
    bound = 2 * tol * data.abs().max().item()
    torch.testing.assert_close(fast(x, sigma), plain, rtol=0, atol=bound + 1e-12)
    # float32 input: within 1e-4 of the float64 result (accumulation in float64)
    f32 = els.equivariant_local(data.float(), 3, padding, tol=tol, bank_min=1)(x.float(), sigma)
    assert (f32.double() - plain).abs().max() < 1e-4
    # deduplication: the all-background patch is stored once; at low noise whole blocks are skipped
    bank = next(iter(fast._banks.values()))
    assert bank.n_rows < 0.8 * (len(data) * 64 if padding == "circular" else len(data) * 36)
    if sigma <= 0.02 and padding == "circular":                           # the window excludes rows
        q = torch.nn.functional.unfold(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="circular"), 3)
        q = q.permute(0, 2, 1).reshape(-1, 9)
        kept = []
        orig = _els_bank.PatchBank._softmax_mean
        try:
            _els_bank.PatchBank._softmax_mean = lambda self, q_, s_, r_, rows, *a: (
                kept.append(rows.stop - rows.start) or orig(self, q_, s_, r_, rows, *a))
            bank.posterior_mean(q, torch.full((len(q),), 0.5 / sigma**2, dtype=torch.float64), tol)
        finally:
            _els_bank.PatchBank._softmax_mean = orig
        assert sum(kept) < bank.n_rows * len(kept)


def test_duplicated_training_set_gives_the_same_machine():
    # counts enter as log-weights: doubling every training image leaves every posterior unchanged
    data = _digits_like(40, seed=2)
    x = data[:3] + 0.3 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    one = els.equivariant_local(data, 3, bank_min=1)
    two = els.equivariant_local(torch.cat([data, data]), 3, bank_min=1)
    torch.testing.assert_close(two(x, 0.3), one(x, 0.3), rtol=0, atol=1e-12)
    # and a machine that ignored the counts would not match the plain one
    plain = els.equivariant_local(data, 3, bank_min=float("inf"))(x, 0.3)
    torch.testing.assert_close(one(x, 0.3), plain, rtol=0, atol=1e-12)


def test_bank_is_sorted_by_a_unit_projection_and_keeps_counts():
    from companion._els_bank import PatchBank

    g = torch.Generator().manual_seed(4)
    y = torch.randn(1000, 9, generator=g, dtype=torch.float64)
    y = torch.cat([y, y[:100]])                                              # 100 duplicates
    bank = PatchBank(y, y[:, 4:5])
    assert bank.n_rows == 1000
    torch.testing.assert_close(bank.u.norm(), torch.tensor(1.0, dtype=torch.float64))
    assert (bank.z[1:] >= bank.z[:-1]).all()
    torch.testing.assert_close(bank.y.double() @ bank.u, bank.z)
    torch.testing.assert_close(bank.logc.exp().sum(), torch.tensor(1100.0, dtype=torch.float64))


def _real_digits(size):
    """A few scikit-learn digits (8x8) or their 16x16 upsampling (float64): real patch statistics."""
    from companion import data as cp_data, recipes

    imgs = cp_data.digits()[0][:150] if size == 8 else recipes.digits16(16, 40)[0]
    return imgs.double()


@pytest.mark.parametrize("size,k", [(8, 3), (16, 5)])
@pytest.mark.parametrize("sigma", [1e-4, 0.02, 0.1, 2.0])
@pytest.mark.parametrize("path", ["clusters", "windows", "whole"])
def test_cluster_and_window_paths_equal_the_plain_machine(size, k, sigma, path, monkeypatch):
    # the three evaluations of a planned bank (forced through the cost estimate) against the plain machine
    from companion._els_bank import PatchBank

    data = _real_digits(size)
    x = data[:3] + sigma * torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(8),
                                       dtype=torch.float64)
    plain = els.equivariant_local(data, k, bank_min=float("inf"))(x, sigma)
    monkeypatch.setattr(PatchBank, "_pair_cost", 0.0 if path == "clusters" else 1.0)
    monkeypatch.setattr(PatchBank, "_overhead", -1 if path == "clusters" else math.inf)
    monkeypatch.setattr(PatchBank, "_whole_cost", -1.0 if path == "whole" else 1e9)
    calls = []
    orig = PatchBank._by_cluster
    monkeypatch.setattr(PatchBank, "_by_cluster", lambda self, *a: calls.append(1) or orig(self, *a))
    tol = 1e-7
    fast = els.equivariant_local(data, k, tol=tol, bank_min=1)
    bound = 2 * tol * data.abs().max().item()
    torch.testing.assert_close(fast(x, sigma), plain, rtol=0, atol=bound + 1e-12)
    assert (len(calls) > 0) == (path == "clusters")
    assert {b.last_cost["chosen"] for b in fast._banks.values()} == {path}
    f32 = els.equivariant_local(data.float(), k, tol=tol, bank_min=1)(x.float(), sigma)
    assert torch.isfinite(f32).all() and (f32.double() - plain).abs().max() < 1e-4


def _interior_bank(data, x, k):
    """A PatchBank (64-row clusters) of the k×k patches at the interior positions (no padding) of
    the 16×16 ``data``, and the query patches ``(Q, k²)`` of ``x`` at those positions."""
    from companion._els_bank import PatchBank

    d = k // 2
    pos = torch.arange(256).reshape(16, 16)[d:16 - d, d:16 - d].flatten()

    def patches(t):
        unf = torch.nn.functional.unfold(torch.nn.functional.pad(t, (d,) * 4), k)[:, :, pos]
        return unf.permute(0, 2, 1).reshape(-1, k * k)
    centres = data.flatten(2)[:, :, pos].permute(0, 2, 1).reshape(-1, 1)
    return PatchBank(patches(data), centres, cluster_rows=64), patches(x)


@pytest.mark.parametrize("sigma", [0.02, 0.3])
def test_cluster_bounds_hold_and_prune(sigma):
    # no row of a cluster may exceed its bound log C_k − s ℓ_k²; at low noise most clusters fall
    # below the reference by log(K/tol) and are skipped
    data = _real_digits(16)
    g = torch.Generator().manual_seed(9)
    x = data[:2] + sigma * torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64)
    bank, q = _interior_bank(data, x, 5)
    assert bank.n_clusters > 10 and sorted(bank.members.tolist()) == list(range(bank.n_rows))
    s = torch.full((len(q),), 0.5 / sigma**2, dtype=torch.float64)
    _, bound = bank.cluster_bounds(q, s)
    logw = bank.logc - s[:, None] * torch.cdist(q, bank.y.double()).pow(2)        # (Q, N) rows
    label = torch.empty(bank.n_rows, dtype=torch.long)
    label[bank.members] = torch.repeat_interleave(torch.arange(bank.n_clusters), bank.start.diff())
    best = torch.full_like(bound, -math.inf).scatter_reduce_(1, label.expand_as(logw), logw, "amax")
    assert (best <= bound + 1e-9).all()
    keep = bound >= (logw.amax(1) - math.log(bank.n_clusters / 1e-7))[:, None]
    assert keep.double().mean() < (0.2 if sigma < 0.1 else 1.0)


def _skipped_mass(bank, q, s, rows_kept):
    """Per query: the exact weight ``Σ c e^(−s‖q − y‖²)`` of the bank rows it does not keep."""
    logw = bank.logc - s[:, None] * torch.cdist(q, bank.y.double()).pow(2)      # (Q, N)
    return torch.where(rows_kept, -math.inf, logw).logsumexp(1)


@pytest.mark.parametrize("case", ["digits", "collinear"])
@pytest.mark.parametrize("sigma", [0.05, 0.3])
def test_plan_skips_at_most_tol_times_the_reference(case, sigma):
    # the rows a query skips (outside its kept clusters; outside its window) weigh at most tol e^ref,
    # and so do the bounds of its skipped clusters together. Collinear rows make the window's bound
    # tight (a window too narrow by a factor log C fails here); digits make the clusters' bound
    # tight enough that dropping the radius or the log K of the rule fails
    from companion._els_bank import PatchBank

    g = torch.Generator().manual_seed(10)
    if case == "digits":
        data = _real_digits(16)
        pos = torch.arange(256).reshape(16, 16)[2:14, 2:14].flatten()
        unf = lambda t: torch.nn.functional.unfold(torch.nn.functional.pad(t, (2,) * 4), 5)[:, :, pos]  # noqa: E731
        y, v = unf(data).permute(0, 2, 1).reshape(-1, 25), data.flatten(2)[:, 0, pos].reshape(-1, 1)
        x = data[:1] + sigma * torch.randn(1, 1, 16, 16, generator=g, dtype=torch.float64)
        q = unf(x).permute(0, 2, 1).reshape(-1, 25)
    else:
        t = torch.linspace(-3, 3, 3000, dtype=torch.float64)[:, None]
        y, v = t * torch.ones(1, 9, dtype=torch.float64) / 3, t
        q = torch.rand(200, 1, generator=g, dtype=torch.float64) * 4 - 2 + 0 * y[:200]
    bank = PatchBank(y, v, cluster_rows=64)
    tol = 1e-3
    s = torch.full((len(q),), 0.5 / sigma**2, dtype=torch.float64)
    ref, keep, windows = bank.plan(q, s, tol)
    label = torch.empty(bank.n_rows, dtype=torch.long)
    label[bank.members] = torch.repeat_interleave(torch.arange(bank.n_clusters), bank.start.diff())
    limit = ref + math.log(tol) + 1e-9
    assert (_skipped_mass(bank, q, s, keep[:, label]) <= limit).all()
    _, bound = bank.cluster_bounds(q, s)
    assert (torch.where(keep, -math.inf, bound).logsumexp(1) <= limit).all()
    in_window = torch.zeros(len(q), bank.n_rows, dtype=torch.bool)
    for idx, lo, hi in windows:
        in_window[idx, lo:hi] = True
    assert (_skipped_mass(bank, q, s, in_window) <= limit).all()
    assert not in_window.all() and not keep.all()                        # something is skipped


@pytest.mark.parametrize("path", ["clusters", "windows", "whole", "direct"])
def test_float32_bank_resolves_near_ties_at_tiny_sigma(path, monkeypatch):
    # each query sits halfway between two rows q ± d (as rounded in float32): at σ = 1e-4 the
    # posterior between them hinges on squared distances that differ by ~1e-9, so the float32
    # machine must form its logits from exact differences (a centring done in float32 moved
    # outputs by up to 0.06 on a Chapter 6 mosaic)
    from companion._els_bank import PatchBank

    monkeypatch.setattr(PatchBank, "_pair_cost", 0.0 if path == "clusters" else 1.0)
    monkeypatch.setattr(PatchBank, "_overhead", -1 if path == "clusters" else math.inf)
    monkeypatch.setattr(PatchBank, "_whole_cost", -1.0 if path == "whole" else 1e9)
    monkeypatch.setattr(PatchBank, "_direct_pairs", 2**40 if path == "direct" else 0)
    g = torch.Generator().manual_seed(11)
    q = torch.randn(40, 9, generator=g)
    d = 0.3 * torch.randn(40, 9, generator=g)
    y = torch.cat([q + d, q - d, 3 + torch.randn(400, 9, generator=g)])
    v = torch.cat([torch.ones(40, 1), -torch.ones(40, 1), torch.rand(400, 1, generator=g)])
    sigma = 1e-4
    got = PatchBank(y, v).posterior_mean(q, torch.full((40,), 0.5 / sigma**2), 1e-7)
    logw = -torch.cdist(q.double(), y.double()).pow(2) / (2 * sigma**2)
    want = torch.softmax(logw, 1) @ v.double()
    assert ((want > -0.99) & (want < 0.99)).any()                       # some ties are undecided
    assert (got.double() - want).abs().max() < 1e-4


def test_near_ref_is_the_log_weight_of_a_row():
    # near_ref is a lower bound on each query's best log-weight because it is the exact log-weight of a row
    data = _real_digits(16)
    x = data[:2] + 0.3 * torch.randn(2, 1, 16, 16, generator=torch.Generator().manual_seed(15), dtype=torch.float64)
    bank, q = _interior_bank(data, x, 3)
    s = torch.full((len(q),), 0.5 / 0.3**2, dtype=torch.float64)
    logw = bank.logc - s[:, None] * torch.cdist(q, bank.y.double()).pow(2)                 # (Q, rows)
    near = bank.near_ref(q, s)
    assert (near <= logw.amax(1) + 1e-9).all()
    assert ((logw - near[:, None]).abs().amin(1) < 1e-9).all()                  # some row's log-weight
    assert (near < logw.amax(1) - 1).any()                                   # not always the best one


def test_unplanned_only_where_no_window_could_skip_a_row():
    # _covers says the whole bank is evaluated without planning only where every window plan() could
    # draw spans the whole bank; it does so at high noise (and not at low noise)
    data = _real_digits(16)
    g = torch.Generator().manual_seed(16)
    bank, _ = _interior_bank(data, data[:1], 3)
    tol, covered = 1e-7, []
    for sigma in (0.05, 0.3, 0.5, 0.7, 1.0, 1.5, 3.0):
        x = data[:2] + sigma * torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64)
        q = _interior_bank(data, x, 3)[1]
        for part in q.split(16):                          # small groups of queries: more chances to differ
            s = torch.full((len(part),), 0.5 / sigma**2, dtype=torch.float64)
            covers = bank._covers(part, s, tol)
            _, _, windows = bank.plan(part, s, tol)
            spans = all(lo == 0 and hi == bank.n_rows for _, lo, hi in windows)
            assert spans or not covers
            covered.append((sigma, covers, spans))
    assert not any(c for sg, c, _ in covered if sg == 0.05) and all(c for sg, c, _ in covered if sg == 3.0)
    assert any(sp and not c for _, c, sp in covered)          # the test is conservative: some spans it misses
    s = torch.full((len(part),), 0.5 / 3.0**2, dtype=torch.float64)
    assert bank._covers(part, s, tol) and not bank._covers(part, s.index_fill(0, torch.tensor([3]), 0.5 / 0.05**2), tol)


def test_unplanned_test_is_tight_where_the_best_row_is_the_heaviest():
    # a query on the heaviest row has its best log-weight at max log c, the value _covers assumes: its
    # narrowest window then spans the bank exactly when _covers says so (up to the grid of σ)
    from companion._els_bank import PatchBank

    t = torch.linspace(-3, 3, 301, dtype=torch.float64)[:, None]
    y = torch.cat([t, torch.zeros(49, 1, dtype=torch.float64)]) * torch.ones(1, 9, dtype=torch.float64) / 3
    bank = PatchBank(y, y[:, :1], cluster_rows=64)
    q, tol = torch.zeros(1, 9, dtype=torch.float64), 1e-7
    seen = []
    for sigma in torch.logspace(-0.5, 1.5, 1200).tolist():
        s = torch.tensor([0.5 / sigma**2], dtype=torch.float64)
        best = (bank.logc - s * (bank.y.double() - q).pow(2).sum(1)).max()
        h = ((bank.log_total - math.log(tol) - best) / s).sqrt()
        zq = q @ bank.u
        spans = bool((zq - h <= bank.z[0]) & (zq + h >= bank.z[-1]))
        seen.append((spans, bank._covers(q, s, tol)))
    assert (False, False) in seen and (True, True) in seen
    assert (False, True) not in seen and seen.count((True, False)) <= 1            # at most the crossing


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unplanned_calls_equal_the_plain_machine(dtype, monkeypatch):
    # at high noise the bank is evaluated whole without planning (near_ref's fixed shift); at low noise
    # it is planned; both agree with the plain float64 machine
    from companion._els_bank import PatchBank

    monkeypatch.setattr(PatchBank, "_skip_planning", True)
    data = _real_digits(8)
    g = torch.Generator().manual_seed(17)
    for sigma, planned in ((3.0, False), (0.05, True)):
        x = data[:3] + sigma * torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
        plain = els.equivariant_local(data, 3, bank_min=float("inf"))(x, sigma)
        fast = els.equivariant_local(data.to(dtype), 3, tol=1e-7, bank_min=1)
        got = fast(x.to(dtype), sigma).double()
        assert {b.last_cost["planned"] for b in fast._banks.values()} == {planned}
        if not planned:                                     # near_ref allowed the fixed shift everywhere
            assert all(b.last_cost["fixed"] for b in fast._banks.values())
        limit = 2e-7 * data.abs().max().item() + 1e-12 if dtype == torch.float64 else 1e-5
        assert (got - plain).abs().max() <= limit


@pytest.mark.parametrize("sigma,far", [(3.0, False), (0.3, False), (0.02, False), (1e-4, False), (0.02, True)])
@pytest.mark.parametrize("subset", [False, True])
def test_unplanned_banks_share_one_kernel_call(sigma, far, subset, monkeypatch):
    # the banks a call evaluates without planning share a call of the fused kernel, a segment each against
    # their tables side by side (float32 or float64 logits; a fixed shift, or each query's own maximum
    # where its best weight lies far below it: queries far from every patch), also when the largest bank
    # is left out (subset): the means of each bank alone, and of the plain float64 machine
    from companion import _native
    from companion._els_bank import PatchBank

    if _native.load() is None:
        pytest.skip(f"the fused kernel is not available: {_native.reason}")
    monkeypatch.setattr(PatchBank, "_direct_pairs", 2**40)             # every bank unplanned
    data = _real_digits(8)
    g = torch.Generator().manual_seed(18)
    x = (torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1 if far else data[:3]) \
        + sigma * torch.randn(3, 1, 8, 8, generator=g, dtype=torch.float64)
    plain = els.equivariant_local(data, 3, bank_min=float("inf"))(x, sigma)
    machine = els.equivariant_local(data.float(), 3, tol=1e-7, bank_min=100)     # all 9 classes are banks
    machine(x.float(), 3.0)
    rows = sorted(b.n_rows for b in machine._banks.values())
    if subset:
        monkeypatch.setattr(els.ScoreMachine, "_joint_rows", rows[-2])       # the interior bank alone
    calls, orig = [], _native.softmax_sums
    monkeypatch.setattr(_native, "softmax_sums", lambda lhs, t, v, p0, p1, c0, c1, *a: calls.append(
        (lhs.dtype, (torch.as_tensor(c1) - torch.as_tensor(c0)).tolist())) or orig(lhs, t, v, p0, p1, c0, c1, *a))
    together = machine(x.float(), sigma).double()
    monkeypatch.setattr(_native, "softmax_sums", orig)
    joint = [(dt, ws) for dt, ws in calls if len(ws) > 1]       # one segment per shared bank: its rows
    assert len(joint) == 1 and sorted(joint[0][1]) == (rows[:-1] if subset else rows)
    assert joint[0][0] == (torch.float32 if sigma > 0.1 else torch.float64)
    assert len(calls) == 1 + subset                                       # the interior bank alone
    fixed = [b.last_cost["fixed"] for b in machine._banks.values()]
    assert (not all(fixed)) if far else (all(fixed) or sigma < 1)
    monkeypatch.setattr(PatchBank, "unplanned_lhs", lambda *a: None)              # each bank alone
    alone = els.equivariant_local(data.float(), 3, tol=1e-7, bank_min=100)(x.float(), sigma).double()
    # (at low noise: float64 uncentred logits against float32 centred ones, each within 1e-4)
    assert (together - alone).abs().max() < 1e-5
    assert (together - plain).abs().max() < 1e-4


def test_banks_that_would_round_too_much_even_in_float64_go_alone(monkeypatch):
    # where even float64 logits of uncentred queries would round by more than the limit, a bank leaves
    # the shared call and centres its queries itself (forced here by a limit of 1e-30)
    from companion import _els_bank, _native

    if _native.load() is None:
        pytest.skip(f"the fused kernel is not available: {_native.reason}")
    monkeypatch.setattr(_els_bank.PatchBank, "_direct_pairs", 2**40)
    monkeypatch.setattr(_els_bank, "_ROUNDING", 1e-30)
    data = _real_digits(8)
    x = data[:2] + 0.1 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(19), dtype=torch.float64)
    plain = els.equivariant_local(data, 3, bank_min=float("inf"))(x, 0.1)
    calls, orig = [], _native.softmax_sums
    monkeypatch.setattr(_native, "softmax_sums", lambda lhs, t, v, p0, *a: calls.append(len(p0)) or orig(lhs, t, v, p0, *a))
    got = els.equivariant_local(data.float(), 3, tol=1e-7, bank_min=100)(x.float(), 0.1).double()
    assert calls and max(calls) == 1 and (got - plain).abs().max() < 1e-4      # every bank alone


def test_bank_without_queries_returns_no_rows():
    from companion._els_bank import PatchBank

    bank = PatchBank(torch.randn(50, 9, dtype=torch.float64), torch.rand(50, 1, dtype=torch.float64))
    out = bank.posterior_mean(torch.zeros(0, 9, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), 1e-7)
    assert out.shape == (0, 1)


def test_bank_arguments():
    data = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="tol"):
        els.equivariant_local(data, 3, tol=-1.0)
    with pytest.raises(ValueError, match="bank_min"):
        els.equivariant_local(data, 3, bank_min=0)


@pytest.fixture(scope="module")
def bench():
    """benchmarks/els_speed.py, loaded as a module (it is not part of the package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "els_speed.py"
    spec = importlib.util.spec_from_file_location("els_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_baseline_is_the_plain_machine(bench):
    # benchmarks/els_speed.py times the machine against a batched evaluation written from the paper's
    # equations; it must compute the same posterior means (else its speed-ups compare different things)
    data = _digits_like(60, seed=5)
    x = data[:3] + 0.4 * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    for k, sigma, tile in [(3, 0.4, 2**20), (5, 0.05, 500), (3, 2.0, 500)]:   # one tile; many small tiles
        want = els.equivariant_local(data, k, bank_min=float("inf"))(x, sigma)
        for exp2 in (False, True):                   # the baseline as written, and with exp2 weights
            got = bench.batched_els(x, data, sigma, k, tile, exp2=exp2)
            torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_benchmark_times_its_contenders_in_turn(bench):
    # the speed-ups are ratios of best times: the baseline and the machine are called in turn in every round,
    # so a drift of the shared machine's speed hits both; each best time is the minimum of its own calls
    calls, clock = [], iter(range(100))
    real = bench.time.perf_counter
    bench.time.perf_counter = lambda: float(next(clock)) ** 2       # the i-th call lasts 4i + 1 "seconds"
    try:
        outs, best = bench.timed_rounds([lambda: calls.append("a") or "A", lambda: calls.append("b") or "B"], 3)
    finally:
        bench.time.perf_counter = real
    assert calls == ["a", "b"] * 3 and outs == ["A", "B"]
    assert best == [1.0, 5.0]                    # the first round's: 1^2 - 0^2 and 3^2 - 2^2


def test_benchmark_needed_pairs_count(bench):
    # the benchmark's ceiling counts the deduplicated (query, candidate) pairs that no method exact to tol
    # may skip (all but the lightest, whose weights sum to ≤ tol·Z); count them here pixel by pixel:
    # candidates with the query's padding mask, identical ones merged
    data = _digits_like(30, seed=12)
    x = data[:2] + 0.3 * torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    unf = lambda t: torch.nn.functional.unfold(torch.nn.functional.pad(t, (1,) * 4), 3)  # noqa: E731
    mask = unf(torch.ones(1, 1, 8, 8, dtype=torch.float64))[0].T                          # (64, 9)
    cand = torch.cat([unf(data), data.flatten(2)], 1).permute(0, 2, 1).reshape(-1, 10)     # (30·64, 10)
    cmask = mask.repeat(30, 1)
    need = {tol: 0 for tol in (1e-3, 1e-7)}
    total = 0
    for b in range(2):
        q = unf(x[b:b + 1])[0].T
        for i in range(64):
            rows, counts = torch.unique(cand[(cmask == mask[i]).all(1)], dim=0, return_counts=True)
            logw = counts.double().log() - ((rows[:, :9] - q[i]) ** 2).sum(1) / (2 * 0.3**2)
            w = sorted((logw - logw.logsumexp(0)).exp().tolist())    # lightest first
            for tol in need:
                skipped, mass = 0, 0.0
                while skipped < len(w) and mass + w[skipped] <= tol:
                    mass += w[skipped]
                    skipped += 1
                need[tol] += len(w) - skipped
            total += len(rows)
    got, got_total = bench.needed_pairs(x, bench.dedup_classes(x, data, 3), 0.3, 3, (1e-3, 1e-7))
    assert got == [need[1e-3], need[1e-7]] and got_total == total
    assert 0 < need[1e-3] < need[1e-7] <= total


@pytest.mark.parametrize("kind,k", [("is", None), ("ls", 3), ("els", 3)])
def test_streamed_machine_exact_at_low_noise(tiny, kind, k):
    # at σ = 0.03 almost every log-weight lies hundreds below the best one; the streamed machine clamps
    # logits only where exp leaves its fast path (−700 in float64), which must not move the result
    data, x = tiny
    x = data[:2] + 0.03 * torch.randn(2, 2, 5, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = els.ScoreMachine(data, kind, k, bank_min=float("inf"))(x, 0.03)
    torch.testing.assert_close(got, brute_force(x, data, 0.03, kind, k), rtol=0, atol=1e-13)


@pytest.mark.parametrize("sigma", [1e-4, 0.02, 0.3])
def test_keep_by_one_product_is_the_bound_rule_with_the_largest_mass(sigma):
    # plan's keep (one product per query and cluster) keeps every cluster the bound log C_k − s ℓ_k²
    # keeps, and no cluster that the same rule with max C would skip (up to rounding)
    data = _real_digits(16)
    g = torch.Generator().manual_seed(12)
    x = data[:2] + sigma * torch.randn(2, 1, 16, 16, generator=g, dtype=torch.float64)
    bank, q = _interior_bank(data, x, 3)
    s = torch.full((len(q),), 0.5 / sigma**2, dtype=torch.float64)
    tol = 1e-7
    ref, keep, _ = bank.plan(q, s, tol)
    floor = (ref - math.log(bank.n_clusters / tol))[:, None]
    _, bound = bank.cluster_bounds(q, s)
    assert (keep | (bound < floor)).all()
    widest = bound - bank.log_mass + bank.log_mass.max()                # log max C − s ℓ_k²
    slack = 1e-9 * (1 + floor.abs())
    assert ((widest >= floor - slack) | ~keep).all() and ((widest < floor + slack) | keep).all()
    assert 0 < keep.double().mean() < (0.3 if sigma < 0.1 else 1.0)


def _near_ties(n=60, seed=13):
    """Training images in pairs a, a + d with a small d, and queries a + d/2 + e (e much smaller): every
    query patch is nearly equidistant from two training patches. Returns data, queries, a, d."""
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n // 2, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    d = 3e-4 * torch.randn(n // 2, 1, 8, 8, generator=g, dtype=torch.float64)
    e = 1e-5 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    return torch.cat([a, a + d]), (a + d / 2)[:4] + e, a[:4], d[:4]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case,sigma", [("digits", 1e-4), ("digits", 0.02), ("digits", 0.1), ("digits", 0.4),
                                        ("ties", 1e-4), ("ties", 3e-4)])
def test_cluster_shifts_equal_the_plain_machine(case, sigma, dtype, monkeypatch):
    # clusters evaluated with the query's ref as a fixed shift and with their own maximum agree
    # with the plain float64 machine (2 tol max|v|; 1e-4 for float32 input), near ties included
    from companion._els_bank import PatchBank

    monkeypatch.setattr(PatchBank, "_pair_cost", 0.0)
    monkeypatch.setattr(PatchBank, "_overhead", -1)
    if case == "digits":
        data = _real_digits(8)
        x = data[:3] + sigma * torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(14),
                                           dtype=torch.float64)
    else:
        data, x, a, d = _near_ties()
    plain = els.equivariant_local(data.double(), 3, bank_min=float("inf"))(x, sigma)
    tol = 1e-7
    fast = els.equivariant_local(data.to(dtype), 3, tol=tol, bank_min=1)
    got = fast(x.to(dtype), sigma).double()
    limit = 2 * tol * data.abs().max().item() + 1e-12 if dtype == torch.float64 else 1e-4
    assert torch.isfinite(got).all() and (got - plain).abs().max() <= limit
    fixed = sum(b.n_fixed for b in fast._banks.values())
    active = sum(b.last_cost["active"] for b in fast._banks.values())
    assert 0 < fixed and (fixed < active or sigma > 1e-3)       # both shifts at tiny noise
    if case == "ties" and sigma == 1e-4:                    # some ties undecided, away from the midpoint
        t = (plain - a) / d
        assert ((t > 0.05) & (t < 0.95) & (t - 0.5).abs().gt(0.05)).any()


def test_float64_logits_of_the_kernel_take_a_fixed_shift_up_to_2_600(monkeypatch):
    # clusters whose float32 logits would round too much get float64 logits, which the fused kernel weighs in
    # float64: a fixed shift (no pass for the maximum) where no log-weight can exceed the reference by 2^600
    from companion import _native
    from companion._els_bank import PatchBank

    if _native.load() is None:
        pytest.skip(f"the fused kernel is not available: {_native.reason}")
    monkeypatch.setattr(PatchBank, "_pair_cost", 0.0)                 # the evaluation by clusters, forced
    monkeypatch.setattr(PatchBank, "_overhead", -1)
    monkeypatch.setattr(PatchBank, "_skip_planning", False)
    monkeypatch.setattr(PatchBank, "_direct_pairs", 0)
    from companion import data as cp_data

    data = cp_data.digits()[0][:1000].double()
    x = data[:8] + 0.1 * torch.randn(data[:8].shape, generator=torch.Generator().manual_seed(19))
    flags, orig = [], _native.cluster_sums
    monkeypatch.setattr(_native, "cluster_sums", lambda q, s, r, keep, *a: (lambda out: flags.append(
        out[1][keep.any(1)]) or out)(orig(q, s, r, keep, *a)))
    got = els.equivariant_local(data.float(), 5, tol=1e-7, bank_min=1)(x.float(), 0.1).double()
    flags = torch.cat(flags)
    float64 = flags[flags & 2 > 0]                            # the kept clusters with float64 logits
    assert len(float64) and bool((float64 & 1 > 0).all())     # all with a fixed shift
    want = els.equivariant_local(data, 5, bank_min=float("inf"))(x, 0.1)
    assert (got - want).abs().max() < 1e-4
