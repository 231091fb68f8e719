"""Tests of companion.likelihood: PF-ODE log-likelihood, divergences, ELBO, bits/dim, KL bound."""
import math

import pytest
import torch

import companion as cp
from companion import likelihood as L

pytestmark = pytest.mark.usefixtures("one_thread")
SMIN, SMAX = 1e-3, 100.0


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def gaussian(mu, tau):
    """A one-component mixture N(mu, tau² I) and its closed-form log-density at σ."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    model = cp.gmm.GaussianMixture(mu[None], tau)

    def log_p(x, sigma):
        var = tau**2 + sigma**2
        return -0.5 * ((x - mu) ** 2).sum(1) / var - 0.5 * mu.numel() * math.log(2 * math.pi * var)
    return model, log_p


# ------------------------------------------------------------------------------------ divergences
def test_exact_divergence_is_the_jacobian_trace():
    W = torch.randn(5, 5, generator=gen(), dtype=torch.float64)
    f = lambda y: torch.tanh(y @ W) * y  # noqa: E731  (row-wise, nonlinear)
    x = torch.randn(4, 5, generator=gen(1), dtype=torch.float64)
    traces = [torch.autograd.functional.jacobian(lambda v: f(v[None])[0], xi).trace() for xi in x]
    assert torch.allclose(L.exact_divergence(f, x), torch.stack(traces), atol=1e-10)
    assert torch.allclose(L.exact_divergence(f, x, chunk=2), torch.stack(traces), atol=1e-10)


def test_exact_divergence_of_images_matches_flattened_points():
    W = torch.randn(4, 4, generator=gen(), dtype=torch.float64)
    f_flat = lambda y: torch.sin(y @ W)  # noqa: E731
    f_img = lambda y: f_flat(y.reshape(-1, 4)).reshape(y.shape)  # noqa: E731
    x = torch.randn(3, 1, 2, 2, generator=gen(1), dtype=torch.float64)
    assert torch.allclose(L.exact_divergence(f_img, x), L.exact_divergence(f_flat, x.reshape(3, 4)))


def test_hutchinson_is_unbiased():
    ring = cp.gmm.ring()
    x = ring.sample(3, generator=gen())
    f = lambda y: ring.denoise(y, 0.7)  # noqa: E731
    exact = L.exact_divergence(f, x)
    est = L.hutchinson_divergence(f, x, n_probes=4000, generator=gen(1))
    z = (est.mean(0) - exact) / (est.std(0) / math.sqrt(est.shape[0]))
    assert (z.abs() < 3).all(), z
    assert (est.std(0) > 0).all()  # the estimator is random, not the exact trace in disguise


# ------------------------------------------------------------------------------------ PF-ODE
@pytest.mark.parametrize("method,steps", [("rk4", 48), ("RK45", 1)])
def test_pf_ode_gaussian_closed_form(method, steps):
    model, log_p = gaussian([1.0, -2.0, 0.5], 0.8)
    x = model.sample(8, generator=gen())
    out = L.pf_ode_log_likelihood(model.denoise, x, SMIN, SMAX, steps=steps, method=method,
                                  prior=lambda z: log_p(z, SMAX))
    assert (out.log_prob - log_p(x, SMIN)).abs().max() / 3 < 1e-3
    assert out.x_T.shape == x.shape and out.delta.shape == (1, 8) and out.nfe > 0


def test_pf_ode_mixture_exact_and_image_shapes():
    ring = cp.gmm.ring()
    x = ring.sample(12, generator=gen())
    exact = ring.log_prob(x, SMIN)
    out = L.pf_ode_log_likelihood(ring.denoise, x, SMIN, SMAX, method="RK45", prior=lambda z: ring.log_prob(z, SMAX))
    assert (out.log_prob - exact).abs().max() / 2 < 1e-3
    # the same computation on (B, 1, 1, 2) "images" with the default Gaussian prior N(0, σ_max² I)
    img = lambda y, s: ring.denoise(y.reshape(-1, 2), s).reshape(y.shape)  # noqa: E731
    out_img = L.pf_ode_log_likelihood(img, x.reshape(12, 1, 1, 2), SMIN, SMAX, steps=64, method="rk4")
    assert (out_img.log_prob - exact).abs().max() / 2 < 5e-3


def test_pf_ode_hutchinson_within_its_standard_error():
    ring = cp.gmm.ring()
    x = ring.sample(6, generator=gen())
    prior = lambda z: ring.log_prob(z, SMAX)  # noqa: E731
    exact = L.pf_ode_log_likelihood(ring.denoise, x, SMIN, SMAX, steps=64, method="rk4", prior=prior)
    hutch = L.pf_ode_log_likelihood(ring.denoise, x, SMIN, SMAX, steps=64, method="rk4", prior=prior,
                                    divergence="hutchinson", n_probes=64, generator=gen(1))
    z = (hutch.log_prob - exact.log_prob) / hutch.stderr
    assert (z.abs() < 4).all(), z
    assert (hutch.stderr > 0).all() and torch.equal(exact.stderr, torch.zeros(6, dtype=torch.float64))
