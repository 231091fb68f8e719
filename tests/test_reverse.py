import math

import pytest
import torch

import companion as cp
from companion import reverse as rv

F64 = torch.float64


@pytest.mark.parametrize("process", [cp.sde.VP(), cp.sde.VE(0.01, 20.0)])
def test_mixture_score_is_gradient_of_log_marginal(process):
    ring = cp.gmm.ring()
    x = torch.randn(16, 2, dtype=F64) * 3
    for t in (0.05, 0.5, 1.0):
        xx = x.clone().requires_grad_(True)
        rv.mixture_marginal(ring, process, t).log_prob(xx).sum().backward()
        torch.testing.assert_close(rv.mixture_score(ring, process)(x, t), xx.grad)


def test_ode_on_gaussian_data_is_the_exact_linear_map():
    """For x0 ~ N(0, τ²) the probability-flow ODE maps x_1 to x_1 · std_t / std_1 exactly."""
    tau, process = 0.7, cp.sde.VP()
    gauss = cp.gmm.GaussianMixture(torch.zeros(1, 1, dtype=F64), tau)
    std = lambda t: float(process.s(t)) * math.sqrt(tau**2 + float(process.sigma(t)) ** 2)  # noqa: E731
    x1 = torch.linspace(-2, 2, 5, dtype=F64)[:, None]
    exact = x1 * std(1e-3) / std(1.0)
    errs = {}
    for method in ("euler", "heun"):
        errs[method] = [(rv.integrate(rv.mixture_score(gauss, process), process, x1, n, method=method) - exact).abs().max().item()
                        for n in (50, 100)]
    assert 1.6 < errs["euler"][0] / errs["euler"][1] < 2.5  # first order
    assert 3.2 < errs["heun"][0] / errs["heun"][1] < 5.0  # second order
    assert errs["heun"][1] < 1e-3


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_lambda_family_shares_marginals(lam):
    """Every λ carries N(0, s(1)²σ(1)²) through p_t back to the data (exact score, 8-Gaussian ring)."""
    ring, process = cp.gmm.ring(), cp.sde.VP()
    g = torch.Generator().manual_seed(1)
    n = 3000
    x1 = float(process.std(1.0)) * torch.randn(n, 2, generator=g, dtype=F64)
    x, ts, path = rv.integrate(rv.mixture_score(ring, process), process, x1, 100, lam=lam, generator=g,
                               return_path=True)
    assert path.shape == (101, n, 2) and torch.equal(path[-1], x) and ts[0] == 1.0
    for k in (50, 80, 100):  # t = 0.5, ~0.2, 1e-3
        pt = rv.mixture_marginal(ring, process, float(ts[k]))
        ref = pt.sample(n, generator=g)
        gap = pt.log_prob(path[k]).mean() - pt.log_prob(ref).mean()
        assert abs(gap) < 0.1, (lam, float(ts[k]), gap)
    # and the modes are equally occupied (within binomial noise: sd ≈ 0.006)
    counts = torch.bincount(ring.responsibilities(x).argmax(1), minlength=8) / n
    assert (counts - 1 / 8).abs().max() < 0.03


def test_wrong_lambda_coefficient_breaks_marginals():
    """Control: λ = 1 noise with the ODE's ½ g² score coefficient (not (1+λ²)/2) misses the data."""
    ring, process = cp.gmm.ring(), cp.sde.VP()
    g = torch.Generator().manual_seed(2)
    x1 = float(process.std(1.0)) * torch.randn(2000, 2, generator=g, dtype=F64)
    score = rv.mixture_score(ring, process)
    half = lambda x, t: score(x, t) / 2  # noqa: E731  -- (1 + λ²)/2 = 1 times half the score
    x = rv.integrate(half, process, x1, 100, lam=1.0, generator=g)
    gap = ring.log_prob(x).mean() - ring.log_prob(ring.sample(2000, generator=g)).mean()
    assert gap < -0.3


def test_ode_is_deterministic_and_encode_inverts_it():
    ring, process = cp.gmm.ring(), cp.sde.VE(0.01, 20.0)
    score = rv.mixture_score(ring, process)
    x1 = float(process.std(1.0)) * torch.randn(200, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    a = rv.integrate(score, process, x1, 50, method="heun")
    b = rv.integrate(score, process, x1, 50, method="heun", generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    errs = []
    for n in (50, 100, 200):
        x0 = rv.integrate(score, process, x1, n, method="heun")
        errs.append((rv.encode(score, process, x0, n) - x1).norm(dim=1).max().item())
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-2 * float(process.std(1.0))


def test_sde_uses_generator_reproducibly():
    ring, process = cp.gmm.ring(), cp.sde.VP()
    score = rv.mixture_score(ring, process)
    x1 = torch.randn(50, 2, dtype=F64)
    run = lambda s: rv.integrate(score, process, x1, 20, lam=1.0, generator=torch.Generator().manual_seed(s))  # noqa: E731
    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))


def test_float32_in_float32_out():
    ring, process = cp.gmm.ring(), cp.sde.VP()
    x = rv.integrate(rv.mixture_score(ring, process), process, torch.randn(10, 2), 10)
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


def test_bad_inputs():
    process = cp.sde.VP()
    score = rv.mixture_score(cp.gmm.ring(), process)
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(ValueError, match="heun"):
        rv.integrate(score, process, x, 10, lam=1.0, method="heun")
    with pytest.raises(ValueError, match="method"):
        rv.integrate(score, process, x, 10, method="rk4")
    with pytest.raises(ValueError, match="lam"):
        rv.integrate(score, process, x, 10, lam=-1.0)
    with pytest.raises(ValueError, match="x1"):
        rv.integrate(score, process, x[0], 10)
    with pytest.raises(ValueError, match="n_steps"):
        rv.integrate(score, process, x, 0)
    with pytest.raises(ValueError, match="differ"):
        rv.integrate(score, process, x, 10, t_start=0.5, t_end=0.5)
    with pytest.raises(ValueError, match="t_end"):
        rv.integrate(score, process, x, 10, t_end=1.5)
    with pytest.raises(ValueError, match="forwards"):
        rv.encode(score, process, x, 10, t_start=1.0, t_end=0.5)


def test_checker_accepts_reference_and_rejects_wrong_drift():
    def good(x, t, process, score, lam):
        return process.f(t) * x - 0.5 * (1 + lam**2) * process.g(t) ** 2 * score(x, t)

    def ode_only(x, t, process, score, lam):
        return process.f(t) * x - 0.5 * process.g(t) ** 2 * score(x, t)

    assert cp.exercises.check_reverse_drift(good, quiet=True)
    assert not cp.exercises.check_reverse_drift(ode_only, quiet=True)


@pytest.mark.parametrize("process", [cp.sde.VE(0.01, 1.5), cp.sde.VP(0.1, 3.0)])
def test_reverse_sde_on_gaussian_data_has_the_posterior_mean(process):
    """For x0 ~ N(0, τ²) and λ = 1, x_t given x_1 is Gaussian with mean x_1 s(1) m_t² / (s(t) m_1²) and
    variance m_t² (1 - s(1)² m_t² / (s(t)² m_1²)), m_t² = s(t)²(τ² + σ(t)²) (Chapter 2, exercise ch2-ex-gauss);
    the ODE's factor m_t / m_1 is clearly different."""
    tau, n, t_end = 0.7, 20_000, 1e-3
    gauss = cp.gmm.GaussianMixture(torch.zeros(1, 1, dtype=F64), tau)
    T = lambda t: torch.tensor(t, dtype=F64)  # noqa: E731
    m2 = lambda t: float(process.s(T(t))) ** 2 * (tau**2 + float(process.sigma(T(t))) ** 2)  # noqa: E731
    factor = float(process.s(T(1.0))) * m2(t_end) / (float(process.s(T(t_end))) * m2(1.0))
    var = m2(t_end) * (1 - float(process.s(T(1.0))) ** 2 * m2(t_end) / (float(process.s(T(t_end))) ** 2 * m2(1.0)))
    x1 = torch.full((n, 1), 1.5, dtype=F64)
    x = rv.integrate(rv.mixture_score(gauss, process), process, x1, 400, lam=1.0, generator=torch.Generator().manual_seed(4))
    se = math.sqrt(var / n)
    assert abs(x.mean().item() - 1.5 * factor) < 4 * se + 0.01 * 1.5 * factor
    assert abs(x.var().item() / var - 1) < 0.05
    assert abs(1.5 * math.sqrt(m2(t_end) / m2(1.0)) - 1.5 * factor) > 50 * se  # the ODE factor would fail


def test_float64_times_give_float64_coefficients():
    """A Python-float time gives float32 process coefficients (relative error ~6e-8); the marginal
    density must be computed with float64 times: its time derivative by a central difference of
    step 1e-5 matches the Fokker–Planck right-hand side to ~1e-6 (float32 times: ~7e-4)."""
    from companion import fokker_planck as fp

    gm = cp.gmm.GaussianMixture(torch.tensor([[-2.0], [0.5], [2.5]], dtype=F64),
                                torch.tensor([0.3, 0.5, 0.2], dtype=F64), torch.tensor([0.3, 0.5, 0.2], dtype=F64))
    process, grid, t, dt = cp.sde.VP(), fp.uniform_grid(6.0, 4000), 0.5, 1e-5
    dp_dt = (fp.mixture_density(gm, grid, process, t + dt) - fp.mixture_density(gm, grid, process, t - dt)) / (2 * dt)
    tt = torch.tensor(t, dtype=F64)
    v = process.f(tt).item() * grid - 0.5 * process.g(tt).item() ** 2 * rv.mixture_score(gm, process)(grid[:, None], t)[:, 0]
    rhs = -torch.gradient(v * fp.mixture_density(gm, grid, process, t), spacing=(grid,))[0]
    assert (dp_dt - rhs).abs().max() < 1e-5
