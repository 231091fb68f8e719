"""Tests of companion.metrics: sample-set distances, Fréchet distance, nearest neighbours, digits helpers."""
import math
from pathlib import Path

import pytest
import torch

import companion
from companion import metrics as M

CLASSIFIER = Path(companion.__file__).parent / "checkpoints" / "digits_classifier.pt"
needs_classifier = pytest.mark.skipif(not CLASSIFIER.exists(), reason="digits_classifier.pt not made yet")


def gaussians(n=400, shift=0.0, scale=1.0, seed=0, d=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) * scale + shift


# ----------------------------------------------------------------------- sliced Wasserstein
def test_sw_zero_for_identical_sets():
    x = gaussians()
    assert M.sliced_wasserstein(x, x.flip(0)).item() < 1e-12


def test_sw_of_a_shift():
    """For a translation by a, SW₂ = |a| sqrt(E (θ·e)²) = |a|/sqrt(D) exactly (same points, shifted)."""
    x = gaussians(d=2)
    a = torch.tensor([3.0, 0.0], dtype=torch.float64)
    sw = M.sliced_wasserstein(x, x + a, n_projections=20000, generator=torch.Generator().manual_seed(0))
    assert abs(sw.item() - 3.0 / 2**0.5) < 0.03


def test_sw_unequal_sizes_and_monotone():
    x = gaussians(300, seed=1)
    near = M.sliced_wasserstein(x, gaussians(500, seed=2), generator=torch.Generator().manual_seed(0))
    far = M.sliced_wasserstein(x, gaussians(500, shift=1.0, seed=2), generator=torch.Generator().manual_seed(0))
    assert near < 0.15 < far


# ----------------------------------------------------------------------- MMD
def test_mmd_zero_and_grows():
    x = gaussians(seed=3)
    assert M.mmd(x, x).item() < 1e-6
    vals = [M.mmd(x, gaussians(seed=4, shift=s), bandwidth=1.0).item() for s in (0.0, 0.5, 2.0)]
    assert vals[0] < vals[1] < vals[2]


def test_mmd_bandwidth_formula():
    x = torch.tensor([[0.0], [0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0], [1.0]], dtype=torch.float64)
    # k = exp(-1/2) across, 1 within: MMD² = 2 - 2 exp(-1/2)
    assert abs(M.mmd(x, y, bandwidth=1.0).item() ** 2 - (2 - 2 * math.exp(-0.5))) < 1e-9


# ----------------------------------------------------------------------- Fréchet distance
def test_fd_gaussian_closed_form():
    """FD between large samples of N(m1, s1² I) and N(m2, s2² I) → |m1 − m2|² + D (s1 − s2)²."""
    a = gaussians(20000, shift=0.0, scale=1.0, seed=5, d=3)
    b = gaussians(20000, shift=1.0, scale=2.0, seed=6, d=3)
    fd = M.frechet_distance(a, b).item()
    assert abs(fd - (3 * 1.0 + 3 * 1.0)) < 0.15
    assert abs(M.frechet_distance(a, a).item()) < 1e-8


def test_fd_non_commuting_covariances():
    """Against the matrix formula with scipy's sqrtm on non-commuting covariances."""
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(7)
    a = torch.randn(500, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(600, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64) + 1
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    ref = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + (ca.trace() + cb.trace()
                                                       - 2 * scipy_linalg.sqrtm(ca @ cb).real.trace())
    assert abs(M.frechet_distance(a, b).item() - ref) < 1e-6 * max(1, abs(ref))


# ----------------------------------------------------------------------- nearest neighbours
def test_nearest_neighbour_distance():
    train = gaussians(100, seed=8, d=5)
    x = train[[3, 50, 99]] + torch.tensor([0.0, 0.01, 0.02], dtype=torch.float64)[:, None]
    d, i = M.nearest_neighbour_distance(x, train, chunk_size=7, return_index=True)
    assert i.tolist() == [3, 50, 99]
    torch.testing.assert_close(d, torch.tensor([0.0, 0.01, 0.02], dtype=torch.float64) * 5**0.5, rtol=1e-6, atol=1e-12)
    brute = torch.cdist(gaussians(10, seed=9, d=5), train).min(1).values
    torch.testing.assert_close(M.nearest_neighbour_distance(gaussians(10, seed=9, d=5), train, chunk_size=13), brute)


def test_metrics_bad_inputs():
    x = gaussians()
    with pytest.raises(ValueError, match="dimension"):
        M.sliced_wasserstein(x, gaussians(d=3))
    with pytest.raises(ValueError, match="at least 2"):
        M.mmd(x, x[:1])
    with pytest.raises(ValueError, match="bandwidth"):
        M.mmd(x, x, bandwidth=0.0)
    with pytest.raises(ValueError, match="finite"):
        M.frechet_distance(x, torch.full_like(x, float("nan")))
    with pytest.raises(ValueError, match="n_projections"):
        M.sliced_wasserstein(x, x, n_projections=0)
    with pytest.raises(ValueError, match="empty"):
        M.nearest_neighbour_distance(x, x[:0])
    with pytest.raises(ValueError, match="point shape"):
        M.nearest_neighbour_distance(x, gaussians(d=3))
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        M.digits_features(torch.zeros(3, 64))


# ----------------------------------------------------------------------- digits (need the checkpoint)
@pytest.fixture(scope="module")
def digits():
    from companion import data, recipes

    images, labels = data.digits()
    train_idx, held_idx = recipes.digits_split()
    return images, labels, train_idx, held_idx


@needs_classifier
def test_classifier_accuracy_on_held_out_digits(digits):
    images, labels, _, held = digits
    assert M.digits_accuracy(images[held], labels[held]) > 0.9
    shuffled = labels[held][torch.randperm(len(held), generator=torch.Generator().manual_seed(0))]
    assert M.digits_accuracy(images[held], shuffled) < 0.3


@needs_classifier
def test_digits_fd_zero_for_same_set_and_grows_with_noise(digits):
    images, _, train, held = digits
    a = images[train]
    assert abs(M.digits_fd(a, a).item()) < 1e-6
    g = torch.Generator().manual_seed(0)
    ref = images[held]
    fds = [M.digits_fd(a, (ref + s * torch.randn(ref.shape, generator=g)).clamp(-1, 1)).item()
           for s in (0.0, 0.3, 1.0)]
    assert fds[0] < fds[1] < fds[2]
    assert M.digits_features(ref).shape[0] == len(held)


# ----------------------------------------------------------------------- sign test
def test_sign_test_matches_the_binomial_test():
    from scipy.stats import binomtest

    for n in range(1, 31):
        for wins in range(n + 1):
            a = torch.tensor([1.0] * wins + [-1.0] * (n - wins) + [0.0])   # one tie, dropped
            w, m, p = M.sign_test(a, torch.zeros(n + 1))
            assert (w, m) == (wins, n)
            assert p == pytest.approx(binomtest(wins, n).pvalue, rel=1e-12)


def test_sign_test_by_hand():
    # 9 of 10: p = 2 (1 + 10) / 2**10
    w, n, p = M.sign_test(torch.arange(10.0), torch.tensor([5.0] + [-1.0] * 9))
    assert (w, n) == (9, 10) and p == pytest.approx(22 / 1024)
    assert M.sign_test(torch.ones(3), torch.ones(3)) == (0, 0, 1.0)


@pytest.mark.parametrize("a,b", [(torch.ones(3), torch.ones(4)), (torch.ones(2, 2), torch.ones(2, 2)),
                                 (torch.ones(0), torch.ones(0)), (torch.tensor([1.0, float("nan")]),
                                                                  torch.ones(2))])
def test_sign_test_rejects_bad_input(a, b):
    with pytest.raises(ValueError, match="a and b"):
        M.sign_test(a, b)
