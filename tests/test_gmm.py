import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import companion as cp
from companion.gmm import GaussianMixture


def random_mixture(seed, K=4, D=3, diagonal=True, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = 3 * torch.randn(K, D, generator=g, dtype=dtype)
    stds = 0.2 + torch.rand((K, D) if diagonal else (K,), generator=g, dtype=dtype)
    w = torch.rand(K, generator=g, dtype=dtype) + 0.1
    return GaussianMixture(means, stds, w / w.sum())


@pytest.mark.parametrize("sigma", [0.0, 1e-4, 0.1, 1.0, 10.0])
@pytest.mark.parametrize("diagonal", [True, False])
def test_score_is_autograd_of_log_prob(sigma, diagonal):
    m = random_mixture(0, diagonal=diagonal)
    x = 4 * torch.randn(16, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(m.log_prob(x, sigma).sum(), x)
    assert torch.allclose(m.score(x.detach(), sigma), grad, rtol=1e-9, atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(1e-4, 30.0))
def test_tweedie_denoise_equals_x_plus_sigma2_score(seed, sigma):
    m = random_mixture(seed % 97)
    x = 5 * torch.randn(8, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lhs = m.denoise(x, sigma)
    rhs = x + sigma**2 * m.score(x, sigma)
    assert torch.allclose(lhs, rhs, rtol=1e-7, atol=1e-7 * max(1.0, sigma))


def test_log_prob_normalised_1d():
    m = GaussianMixture(torch.tensor([[-2.0], [1.0]], dtype=torch.float64), torch.tensor([0.3, 0.7], dtype=torch.float64), torch.tensor([0.4, 0.6], dtype=torch.float64))
    xs = torch.linspace(-40, 40, 80001, dtype=torch.float64)[:, None]
    for sigma in [0.0, 0.5, 3.0]:
        mass = torch.trapezoid(m.log_prob(xs, sigma).exp(), xs[:, 0]).item()
        assert abs(mass - 1) < 1e-8


def test_noised_mixture_matches_sampled_noise():
    m = cp.gmm.ring()
    g = torch.Generator().manual_seed(0)
    x0 = m.sample(100_000, generator=g)
    x = x0 + 1.3 * torch.randn(x0.shape, generator=g, dtype=x0.dtype)
    # the exact noised density explains the noised samples: average log-likelihood = -entropy (MC)
    nll_true = -m.log_prob(x, 1.3).mean()
    nll_wrong = -m.log_prob(x, 0.6).mean()
    assert torch.allclose(m.noised(1.3).log_prob(x), m.log_prob(x, 1.3))
    assert nll_true < nll_wrong - 0.05


def test_sample_moments():
    m = random_mixture(3, K=2, D=2)
    x = m.sample(200_000, generator=torch.Generator().manual_seed(0))
    mean = (m.weights[:, None] * m.means).sum(0)
    assert torch.allclose(x.mean(0), mean, atol=0.03)


def test_point_masses_need_positive_sigma():
    m = GaussianMixture(torch.randn(5, 2), 0.0)
    with pytest.raises(ValueError, match="sigma must be > 0"):
        m.log_prob(torch.zeros(3, 2))
    d = m.denoise(m.means + 1e-6, 1e-4)  # nearly a point mass: returns the nearest mean, finite
    assert torch.isfinite(d).all() and torch.allclose(d, m.means, atol=1e-4)


def test_finite_at_tiny_sigma_far_away():
    m = cp.gmm.ring(std=0.0)
    x = torch.tensor([[40.0, -30.0], [0.0, 0.0]], dtype=torch.float64)
    for fn in (m.log_prob, m.score, m.denoise):
        assert torch.isfinite(fn(x, 1e-4)).all()


def test_per_sample_sigma():
    m = cp.gmm.ring()
    x = torch.randn(3, 2, dtype=torch.float64)
    sig = torch.tensor([0.1, 1.0, 5.0], dtype=torch.float64)
    full = m.score(x, sig)
    for i in range(3):
        assert torch.allclose(full[i], m.score(x[i : i + 1], sig[i].item())[0])


def test_bad_inputs():
    with pytest.raises(ValueError, match="means"):
        GaussianMixture(torch.zeros(3))
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(3, 2), torch.tensor([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="stds"):
        GaussianMixture(torch.zeros(3, 2), torch.ones(4))
    with pytest.raises(ValueError, match="weights must sum to 1"):
        GaussianMixture(torch.zeros(3, 2), 1.0, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match="non-negative"):
        GaussianMixture(torch.zeros(2, 2), 1.0, torch.tensor([1.5, -0.5]))
    with pytest.raises(ValueError, match="weights must have shape"):
        GaussianMixture(torch.zeros(2, 2), 1.0, torch.tensor([1.0]))
    m = cp.gmm.ring()
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        m.log_prob(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="sigma"):
        m.score(torch.zeros(4, 2), -1.0)
    with pytest.raises(ValueError, match="sigma"):
        m.score(torch.zeros(4, 2), torch.ones(3))
