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
    x = ring.sample(40, generator=gen())
    prior = lambda z: ring.log_prob(z, SMAX)  # noqa: E731
    exact = L.pf_ode_log_likelihood(ring.denoise, x, SMIN, SMAX, steps=32, method="rk4", prior=prior)
    hutch = L.pf_ode_log_likelihood(ring.denoise, x, SMIN, SMAX, steps=32, method="rk4", prior=prior,
                                    divergence="hutchinson", n_probes=16, generator=gen(1))
    z = (hutch.log_prob - exact.log_prob) / hutch.stderr
    assert (z.abs() < 4.5).all(), z
    # the standard error is calibrated: the standardized errors spread like N(0, 1) (t with 15 d.o.f.)
    assert 0.7 < z.std() < 1.5, z.std()
    assert (hutch.stderr > 0).all() and torch.equal(exact.stderr, torch.zeros(40, dtype=torch.float64))


# ------------------------------------------------------------------------------------ ELBO
def shrink_denoiser(tau):
    """The exact denoiser of N(0, τ² I): D = τ²/(τ² + σ²) x."""
    def D(x, sigma):
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        return tau**2 / (tau**2 + s**2) * x
    return D


def closed_form_diffusion(x0, tau, smin, smax, n=20001):
    """∫ E_ε‖x0 − a(x0 + σε)‖² σ⁻³ dσ with a = τ²/(τ²+σ²), by a fine trapezoid rule in log σ."""
    s = torch.exp(torch.linspace(math.log(smin), math.log(smax), n, dtype=torch.float64))
    a = tau**2 / (tau**2 + s**2)
    d = x0.shape[1]
    mse = (1 - a)[None] ** 2 * (x0**2).sum(1, keepdim=True) + (a**2 * s**2 * d)[None]
    return torch.trapezoid(mse / s**2, torch.log(s), dim=1)


@pytest.mark.parametrize("law", ["loguniform", "lognormal", "quadrature"])
def test_diffusion_loss_sigma_form_equals_t_form_and_closed_form(law):
    tau, smin, smax = 0.7, 0.01, 50.0
    x0 = torch.tensor([[0.5, -1.0], [2.0, 0.3]], dtype=torch.float64)
    D = shrink_denoiser(tau)
    truth = closed_form_diffusion(x0, tau, smin, smax)
    # (a wide log-normal truncated to a third of its mass on each side: the truncation matters)
    sig = L.diffusion_loss(D, x0, smin, smax, n_samples=20000, sigma_law=law, n_nodes=16, P_mean=0.0,
                           P_std=3.0, generator=gen())
    assert ((sig.value - truth).abs() < 4 * sig.stderr).all(), (sig, truth)
    for process in (cp.sde.VE(0.001, 100.0), cp.sde.VP()):
        t = L.diffusion_loss_t(D, x0, process, smin, smax, n_samples=20000, generator=gen(1))
        assert ((t.value - truth).abs() < 4 * t.stderr).all(), (process, t, truth)


def test_elbo_of_exact_mixture_denoiser_is_below_the_log_likelihood():
    ring = cp.gmm.ring()
    x = ring.sample(64, generator=gen())
    smin = 1e-2
    out = L.elbo(ring.denoise, x, smin, SMAX, n_samples=64, sigma_law="quadrature", n_nodes=24, generator=gen(1))
    # the model is p_{σ_min} smoothed by the Gaussian decoder: its density is p at sqrt(2) σ_min
    gap = ring.log_prob(x, math.sqrt(2) * smin) - out.elbo
    se = torch.sqrt((out.stderr**2).sum()) / 64
    assert gap.mean() > -3 * se
    assert gap.mean() < 0.05  # ... and the bound is tight for the exact denoiser (module docstring)
    assert torch.allclose(out.elbo, -out.prior - out.diffusion.value + out.reconstruction.value)
    # the prior term is KL(N(x0, σ_max² I) ‖ N(0, σ_max² I))
    N = torch.distributions.MultivariateNormal
    cov = SMAX**2 * torch.eye(2, dtype=torch.float64)
    kl = torch.distributions.kl_divergence(N(x, cov), N(torch.zeros_like(x), cov))
    assert torch.allclose(out.prior, kl)


def test_discrete_decoder_is_a_distribution_on_the_grid():
    levels = torch.linspace(-1, 1, 5, dtype=torch.float64)
    z = torch.tensor([[0.1, -0.7]], dtype=torch.float64)
    total = sum(L.discrete_decoder_log_prob(torch.tensor([[a, b]], dtype=torch.float64), z, 0.3, levels).exp()
                for a in levels for b in levels)
    assert torch.allclose(total, torch.ones(1, dtype=torch.float64))
    # at small σ the decoder is sure of the nearest grid value
    x0 = torch.tensor([[0.0, -0.5]], dtype=torch.float64)
    assert L.discrete_decoder_log_prob(x0, x0 + 0.01, 0.02, levels).item() > -1e-6


def test_bits_per_dim_constant_on_a_uniform_model():
    # 17 levels on [-1, 1] (spacing 1/8): the uniform density on the union of bins has the exact
    # discrete likelihood of the uniform categorical, log2(17) bits/dim
    dim, delta, k = 64, 1 / 8, 17
    log_density = -dim * math.log(k * delta)
    assert math.isclose(L.bits_per_dim(log_density, dim, bin_width=delta), math.log2(k), rel_tol=1e-12)
    assert math.isclose(L.bits_per_dim(-dim * math.log(k), dim), math.log2(k), rel_tol=1e-12)
    # 256 levels on [-1, 1]: the constant is log2(1/Δ) = 7 bits
    assert math.isclose(L.bits_per_dim(0.0, 3, bin_width=2 / 256), 7.0, rel_tol=1e-12)


def test_dequantized_uniform_model_by_monte_carlo():
    levels = torch.linspace(-1, 1, 17, dtype=torch.float64)
    x = levels[torch.randint(17, (500, 4), generator=gen())]
    y = L.dequantize(x, 1 / 8, generator=gen(1))
    assert ((y - x).abs() <= 1 / 16).all() and (y != x).all()
    inside = ((y >= -1 - 1 / 16) & (y <= 1 + 1 / 16)).all()
    log_density = torch.full((500,), -4 * math.log(17 / 8), dtype=torch.float64) if inside else None
    assert torch.allclose(L.bits_per_dim(log_density, 4, bin_width=1 / 8), torch.tensor(math.log2(17),
                                                                                       dtype=torch.float64))


# ------------------------------------------------------------------------------------ KL bound
def test_kl_bound_is_an_equality_for_self_consistent_gaussians():
    tau, shift = 0.8, torch.tensor([0.6, -0.3], dtype=torch.float64)
    p, _ = gaussian([0.0, 0.0], tau)
    q, _ = gaussian(shift, tau)
    x0 = p.sample(4000, generator=gen())
    est = L.kl_bound(q.denoise, p.denoise, x0, 1e-3, 1e3, n_samples=1, generator=gen(1))
    kl = (shift**2).sum() / (2 * tau**2)
    assert abs(est.value - kl) < 3 * est.stderr + 1e-3, (est, kl)
    assert est.stderr < 0.05 * kl
    # the paper's form (difference of the two MSEs) has the same mean and a larger variance
    mse = L.kl_bound(q.denoise, p.denoise, x0, 1e-3, 1e3, estimator="mse", generator=gen(1))
    assert abs(mse.value - kl) < 3 * mse.stderr and mse.stderr > est.stderr
    # the model is its own truth: the bound vanishes
    same = L.kl_bound(p.denoise, p.denoise, x0[:10], 1e-3, 1e3, generator=gen(1))
    assert same.value == 0


# ------------------------------------------------------------------------------------ bad input
def test_bad_inputs_name_the_argument():
    ring = cp.gmm.ring()
    x = ring.sample(4, generator=gen())
    with pytest.raises(ValueError, match="sigma_min"):
        L.pf_ode_log_likelihood(ring.denoise, x, 2.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        L.elbo(ring.denoise, x, 0.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        L.kl_bound(ring.denoise, ring.denoise, x, 1.0, 1.0)
    with pytest.raises(ValueError, match="sigma_max must be a finite number"):
        L.elbo(ring.denoise, x, 0.1, float("inf"))
    with pytest.raises(ValueError, match="x0 must be finite"):
        L.elbo(ring.denoise, torch.full((2, 2), float("nan")), 0.1, 1.0)
    with pytest.raises(ValueError, match="x must be finite"):
        L.pf_ode_log_likelihood(ring.denoise, torch.full((2, 2), float("inf")), 0.1, 1.0)
    with pytest.raises(ValueError, match="x must have shape"):
        L.pf_ode_log_likelihood(ring.denoise, torch.zeros(3), 0.1, 1.0)
    with pytest.raises(ValueError, match="denoiser must return"):
        L.pf_ode_log_likelihood(lambda y, s: y[:, :1], x, 0.1, 1.0, steps=2)
    with pytest.raises(ValueError, match="denoiser must return"):
        L.elbo(lambda y, s: y.sum(1), x, 0.1, 1.0, n_samples=2)
    with pytest.raises(ValueError, match="true_denoiser must return"):
        L.kl_bound(ring.denoise, lambda y, s: y[:, :1], x, 0.1, 1.0)
    with pytest.raises(ValueError, match="estimator"):
        L.kl_bound(ring.denoise, ring.denoise, x, 0.1, 1.0, estimator="abs")
    with pytest.raises(ValueError, match="method"):
        L.pf_ode_log_likelihood(ring.denoise, x, 0.1, 1.0, method="leapfrog")
    with pytest.raises(ValueError, match="divergence"):
        L.pf_ode_log_likelihood(ring.denoise, x, 0.1, 1.0, divergence="trace")
    with pytest.raises(ValueError, match="sigma_law"):
        L.diffusion_loss(ring.denoise, x, 0.1, 1.0, sigma_law="uniform")
    with pytest.raises(ValueError, match="n_samples"):
        L.diffusion_loss(ring.denoise, x, 0.1, 1.0, n_samples=0)
    with pytest.raises(ValueError, match="z must have"):
        L.discrete_decoder_log_prob(x, x[:2], 0.1, [-1.0, 1.0])
    with pytest.raises(ValueError, match="grid"):
        L.discrete_decoder_log_prob(x, x, 0.1, [-1.0, 1.0])
    with pytest.raises(ValueError, match="bin_width"):
        L.bits_per_dim(1.0, 4, bin_width=0.0)
    with pytest.raises(ValueError, match="dim"):
        L.bits_per_dim(1.0, 0)
    with pytest.raises(ValueError, match="bin_width"):
        L.dequantize(x, -1.0)
    with pytest.raises(ValueError, match="sigma must be a finite number"):
        L.discrete_decoder_log_prob(x.sign(), x, 0.0, [-1.0, 1.0])
    with pytest.raises(ValueError, match="std must be a finite number"):
        L.gaussian_log_prob(x, -1.0)
    with pytest.raises(ValueError, match="bin_width"):
        L.bits_per_dim(1.0, 4, bin_width=float("nan"))


def test_finite_at_small_sigma_float32():
    ring = cp.gmm.ring().to(dtype=torch.float32)
    x = ring.sample(4, generator=gen())
    out = L.elbo(ring.denoise, x, 1e-4, 80.0, n_samples=8, generator=gen(1))
    ode = L.pf_ode_log_likelihood(ring.denoise, x, 1e-4, 80.0, steps=8, method="rk4")
    assert torch.isfinite(out.elbo).all() and torch.isfinite(ode.log_prob).all()


def test_network_path_runs_on_the_device_of_its_input():
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to("meta")
    x = torch.zeros(3, 2, device="meta")
    # (value checks cannot run on meta tensors: the shared mechanism below the checks is what runs)
    quad, fx = L.jacobian_quadratic_forms(net, x, L.rademacher(2, x))
    assert quad.device.type == "meta" and quad.shape == (2, 3) and fx.shape == x.shape


def test_recipe_digits_unet_lik_runs(tmp_path):
    model = cp.recipes.RECIPES["digits_unet_lik"]({"steps": 2, "batch_size": 8, "base": 8, "mults": [1, 2]}, progress=False)
    path = cp.training.save(model, tmp_path / "m.pt", "digits_unet_lik", model.config)
    loaded = cp.training.load(path, device="cpu")
    assert loaded.target == "eps" and model.metrics["n_train"] == 1500
    x = cp.data.digits()[0][:2]
    assert torch.isfinite(L.elbo(loaded, x, 0.01, 80.0, n_samples=2, generator=gen()).elbo).all()


# ------------------------------------------------------------------------------------ exercise checker
def test_check_divergence_accepts_a_correct_answer_and_rejects_wrong_ones():
    def loop_divergence(f, x):  # one autograd pass per coordinate, as in the chapter's solution
        x = x.detach().requires_grad_(True)
        y = f(x).flatten(1)
        xf = x
        total = torch.zeros(x.shape[0], dtype=x.dtype)
        for i in range(y.shape[1]):
            (gi,) = torch.autograd.grad(y[:, i].sum(), xf, retain_graph=True)
            total = total + gi.flatten(1)[:, i]
        return total

    assert cp.exercises.check_divergence(loop_divergence, quiet=True)

    def all_entries(f, x):  # sums the whole Jacobian instead of its diagonal
        x = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(f(x).sum(), x)
        return g.flatten(1).sum(1)

    def unfinished(f, x):
        raise NotImplementedError

    assert not cp.exercises.check_divergence(all_entries, quiet=True)
    assert not cp.exercises.check_divergence(unfinished, quiet=True)
    assert not cp.exercises.check_divergence(lambda f, x: x.flatten(1).sum(1)[:1], quiet=True)
