"""Tests of companion.denoisers: the ideal denoiser and the target conversions."""
import math

import pytest
import torch

from companion import denoisers as dn
from companion.gmm import GaussianMixture


def brute_force(data, x, sigma):
    """float64 posterior mean with explicit squared distances and a plain softmax."""
    data = data.reshape(data.shape[0], -1).double()
    xf = x.reshape(x.shape[0], -1).double()
    s = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1, 1)
    d2 = ((xf[:, None, :] - data[None]) ** 2).sum(-1)
    w = torch.softmax(-d2 / (2 * s**2), dim=1)
    return (w @ data).reshape(x.shape)


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    data = torch.randn(50, 3, 2, 2, generator=g, dtype=torch.float64)
    x = data[:8] + 0.7 * torch.randn(8, 3, 2, 2, generator=g, dtype=torch.float64)
    return data, x


@pytest.mark.parametrize("sigma", [0.05, 0.3, 1.0, 5.0, 100.0])
def test_ideal_matches_float64_brute_force(setup, sigma):
    data, x = setup
    D = dn.IdealDenoiser(data, chunk_size=7)
    torch.testing.assert_close(D(x, sigma), brute_force(data, x, sigma), rtol=0, atol=1e-10)


def test_ideal_float32_within_1e5(setup):
    data, x = setup
    D = dn.IdealDenoiser(data.float())
    for sigma in (0.3, 1.0, 5.0):
        out = D(x.float(), sigma)
        assert out.dtype == torch.float32
        assert (out.double() - brute_force(data, x, sigma)).abs().max() < 1e-5


def test_ideal_per_sample_sigma(setup):
    data, x = setup
    sig = torch.linspace(0.1, 3.0, x.shape[0], dtype=torch.float64)
    D = dn.IdealDenoiser(data, chunk_size=5)
    torch.testing.assert_close(D(x, sig), brute_force(data, x, sig), rtol=0, atol=1e-10)


@pytest.mark.parametrize("chunk", [1, 3, 16, 49, 50, 1000])
def test_chunked_equals_unchunked(setup, chunk):
    data, x = setup
    ref = dn.IdealDenoiser(data, chunk_size=len(data))(x, 0.4)
    torch.testing.assert_close(dn.IdealDenoiser(data, chunk_size=chunk)(x, 0.4), ref, rtol=0, atol=1e-12)


def test_ideal_equals_gmm_with_zero_stds():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(12, 2, generator=g, dtype=torch.float64) * 3
    x = torch.randn(30, 2, generator=g, dtype=torch.float64) * 4
    gmm = GaussianMixture(means, 0.0)
    for sigma in (0.1, 1.0, torch.rand(30, generator=g, dtype=torch.float64) + 0.05):
        torch.testing.assert_close(dn.IdealDenoiser(means, chunk_size=5)(x, sigma), gmm.denoise(x, sigma),
                                   rtol=0, atol=1e-10)


def test_finite_and_one_hot_at_tiny_sigma():
    g = torch.Generator().manual_seed(2)
    data = torch.rand(300, 64, generator=g) * 2 - 1  # float32, like digits
    x = data[:10] + 1e-4 * torch.randn(10, 64, generator=g)
    D = dn.IdealDenoiser(data, chunk_size=64)
    out = D(x, 1e-4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, data[:10], rtol=0, atol=1e-5)
    w = D.weights(x, 1e-4)
    assert torch.isfinite(w).all() and (w.max(1).values > 0.999).all()
    # far from all data at tiny sigma: the logits are ~1e8, still finite (the nearest point wins)
    far = torch.full((2, 64), 5.0)
    assert torch.isfinite(D(far, 1e-4)).all()


def test_large_sigma_gives_data_mean(setup):
    data, x = setup
    out = dn.IdealDenoiser(data)(x, 1e6)
    torch.testing.assert_close(out, data.mean(0).expand_as(out), rtol=0, atol=1e-6)


def test_class_conditional():
    g = torch.Generator().manual_seed(3)
    data = torch.randn(40, 2, generator=g, dtype=torch.float64)
    labels = torch.arange(40) % 3
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 0, 1, 2])
    D = dn.IdealDenoiser(data, labels=labels, chunk_size=4)
    out = D(x, 0.8, c)
    for i in range(6):
        ref = brute_force(data[labels == c[i]], x[i:i + 1], 0.8)
        torch.testing.assert_close(out[i:i + 1], ref, rtol=0, atol=1e-10)
    torch.testing.assert_close(D(x, 0.8), brute_force(data, x, 0.8), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="no data points"):
        D(x[:1], 0.8, torch.tensor([7]))


def test_ideal_bad_inputs(setup):
    data, x = setup
    with pytest.raises(ValueError, match="data"):
        dn.IdealDenoiser(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="data"):
        dn.IdealDenoiser(torch.zeros(5))
    with pytest.raises(ValueError, match="chunk_size"):
        dn.IdealDenoiser(data, chunk_size=0)
    D = dn.IdealDenoiser(data)
    with pytest.raises(ValueError, match="x must have shape"):
        D(torch.zeros(4, 12, dtype=torch.float64), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        D(x, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        D(x, -1.0)
    with pytest.raises(ValueError, match="sigma"):
        D(x, torch.ones(3))
    with pytest.raises(ValueError, match="labels"):
        D(x, 1.0, torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        dn.IdealDenoiser(data, labels=torch.zeros(3, dtype=torch.long))


# ----------------------------------------------------------------------- conversions
@pytest.fixture
def noisy():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(16, 5, generator=g, dtype=torch.float64) * 0.5
    eps = torch.randn(16, 5, generator=g, dtype=torch.float64)
    sigma = torch.exp(torch.randn(16, generator=g, dtype=torch.float64) * 2)
    return x0, eps, sigma, x0 + sigma[:, None] * eps


@pytest.mark.parametrize("target", dn.TARGETS)
@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_round_trip(noisy, target, sigma_data):
    x0, eps, sigma, x = noisy
    t = dn.target_from_x0(x0, target, x, sigma, sigma_data)
    torch.testing.assert_close(dn.x0_from(t, target, x, sigma, sigma_data), x0, rtol=0, atol=1e-10)


def test_targets_have_their_definitions(noisy):
    x0, eps, sigma, x = noisy
    s = sigma[:, None]
    torch.testing.assert_close(dn.target_from_x0(x0, "eps", x, sigma), eps)
    torch.testing.assert_close(dn.target_from_x0(x0, "score", x, sigma), -eps / s)
    sd = 0.5
    # v-prediction in the variance-preserving picture (Salimans & Ho 2022) of the data scaled to unit size:
    # z = alpha x0/sd + beta eps with alpha = 1/sqrt(1+s'^2), beta = s'/sqrt(1+s'^2), v = alpha eps - beta x0/sd
    sp = s / sd
    alpha, beta = 1 / torch.sqrt(1 + sp**2), sp / torch.sqrt(1 + sp**2)
    torch.testing.assert_close(dn.target_from_x0(x0, "v", x, sigma, sd), alpha * eps - beta * x0 / sd)
    # EDM's c_skip / c_out (Karras et al. 2022, Table 1)
    v = torch.randn_like(x)
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / torch.sqrt(s**2 + sd**2)
    torch.testing.assert_close(dn.x0_from(v, "v", x, sigma, sd), c_skip * x - c_out * v)


@pytest.mark.parametrize("target", dn.TARGETS)
def test_loss_weight_relates_errors(noisy, target):
    x0, eps, sigma, x = noisy
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    sd = 0.5
    t, t_hat = (dn.target_from_x0(a, target, x, sigma, sd) for a in (x0, x0_hat))
    err_t = ((t - t_hat) ** 2).sum(1)
    err_x0 = ((x0 - x0_hat) ** 2).sum(1)
    torch.testing.assert_close(err_t, dn.loss_weight(target, sigma, sd) * err_x0, rtol=1e-9, atol=0)


def test_loss_weight_values():
    assert dn.loss_weight("x0", 0.3).item() == 1.0
    assert math.isclose(dn.loss_weight("eps", 0.5).item(), 4.0, rel_tol=1e-6)
    assert math.isclose(dn.loss_weight("score", 0.5).item(), 16.0, rel_tol=1e-6)
    assert math.isclose(dn.loss_weight("v", 1.0, 0.5).item(), (1 + 0.25) / 0.25, rel_tol=1e-6)


def test_conversion_bad_inputs(noisy):
    x0, eps, sigma, x = noisy
    with pytest.raises(ValueError, match="target"):
        dn.x0_from(x0, "noise", x, sigma)
    with pytest.raises(ValueError, match="pred"):
        dn.x0_from(x0[:3], "eps", x, sigma)
    with pytest.raises(ValueError, match="sigma"):
        dn.target_from_x0(x0, "eps", x, 0.0)
    with pytest.raises(ValueError, match="sigma_data"):
        dn.target_from_x0(x0, "v", x, sigma, sigma_data=0.0)
    with pytest.raises(ValueError, match="sigma"):
        dn.loss_weight("eps", torch.tensor([1.0, -1.0]))


# ----------------------------------------------------------------------- exercise checker
def test_check_ideal_denoiser_accepts_stable_and_rejects_naive(capsys):
    from companion.exercises import check_ideal_denoiser

    def stable(x, sigma, data):
        w = torch.softmax(-torch.cdist(x, data) ** 2 / (2 * sigma**2), dim=1)
        return w @ data

    def naive(x, sigma, data):  # underflows to 0/0 at small sigma
        w = torch.exp(-torch.cdist(x, data) ** 2 / (2 * sigma**2))
        return (w @ data) / w.sum(1, keepdim=True)

    def unweighted(x, sigma, data):
        return data.mean(0).expand_as(x)

    assert check_ideal_denoiser(stable)
    assert "✓" in capsys.readouterr().out
    verdict = check_ideal_denoiser(naive)
    assert not verdict and "non-finite" in capsys.readouterr().out
    assert not check_ideal_denoiser(unweighted, quiet=True)
