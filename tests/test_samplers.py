"""Tests of companion.samplers: schedules, the (γ, μ) sampler, Heun and classifier-free guidance."""
import math

import pytest
import torch

from companion import samplers as S
from companion.denoisers import IdealDenoiser
from companion.gmm import ring

SCHEDULES = {
    "loglinear": lambda n: S.loglinear(n, 0.02, 20.0),
    "karras": lambda n: S.karras(n, 0.002, 80.0),
    "cosine": lambda n: S.cosine(n, 0.01, 50.0),
    "ddpm": lambda n: S.ddpm(n),
}


# ----------------------------------------------------------------------- schedules
@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("n", [1, 2, 10, 37])
def test_schedule_shape_monotone_zero(name, n):
    s = SCHEDULES[name](n)
    assert s.shape == (n + 1,) and s.dim() == 1 and s.is_floating_point()
    assert (s[1:] < s[:-1]).all()
    assert s[-1] == 0 and (s[:-1] > 0).all()
    S.check_sigmas(s)


@pytest.mark.parametrize("name", ["loglinear", "karras", "cosine"])
def test_schedule_endpoints(name):
    fn = getattr(S, name)
    s = fn(20, 0.01, 30.0)
    assert math.isclose(s[0].item(), 30.0, rel_tol=1e-5) and math.isclose(s[-2].item(), 0.01, rel_tol=1e-5)
    assert fn(20, 0.01, 30.0, append_zero=False).shape == (20,)


def test_loglinear_is_geometric():
    s = S.loglinear(6, 0.1, 10.0, append_zero=False).double()
    ratios = s[1:] / s[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 10 ** (-2 / 5)), rtol=1e-5, atol=0)


def test_karras_formula():
    s = S.karras(3, 0.002, 80.0, rho=7.0, append_zero=False).double()
    mid = ((80.0 ** (1 / 7) + 0.002 ** (1 / 7)) / 2) ** 7
    assert math.isclose(s[1].item(), mid, rel_tol=1e-5)


def test_cosine_alpha_bar_is_cos_squared():
    s = S.cosine(9, 0.05, 20.0, append_zero=False).double()
    alpha_bar = 1 / (1 + s**2)
    t = torch.acos(alpha_bar.sqrt()) * 2 / math.pi  # alpha_bar = cos^2(pi t / 2)
    steps = t[1:] - t[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, steps.mean().item()), rtol=1e-4, atol=0)


def test_ddpm_matches_definition():
    s = S.ddpm(1000).double()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alpha_bar = torch.cumprod(1 - betas, 0)
    ref = torch.sqrt((1 - alpha_bar) / alpha_bar).flip(0)  # sigma_1000 ... sigma_1
    torch.testing.assert_close(s[:-1], ref, rtol=1e-6, atol=0)
    assert math.isclose(s[-2].item(), math.sqrt(1e-4 / (1 - 1e-4)), rel_tol=1e-5)  # sigma_1, beta_1 = 1e-4
    assert 150 < s[0].item() < 160  # sigma_T of DDPM's linear schedule ≈ 157
    # uniform timestep subsampling: n = 10 uses t = 1000, 900, ..., 100
    torch.testing.assert_close(S.ddpm(10).double()[:-1], ref[::100], rtol=1e-6, atol=0)
    # DDIM's original (leading) spacing: t = 901, 801, ..., 1 (Song et al. 2021's range(0, T, T // n) + 1)
    torch.testing.assert_close(S.ddpm(10, spacing="leading").double()[:-1], ref[99::100], rtol=1e-6, atol=0)
    torch.testing.assert_close(S.ddpm(1000, spacing="leading"), S.ddpm(1000))


def test_schedule_bad_inputs():
    with pytest.raises(ValueError, match="n"):
        S.loglinear(0)
    with pytest.raises(ValueError, match="sigma_min"):
        S.karras(10, 0.0, 80.0)
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        S.cosine(10, 5.0, 1.0)
    with pytest.raises(ValueError, match="n must be <="):
        S.ddpm(2000)
    with pytest.raises(ValueError, match="spacing"):
        S.ddpm(10, spacing="middle")


def test_check_sigmas_rejects_bad_schedules():
    with pytest.raises(ValueError, match="decreasing"):
        S.check_sigmas(torch.tensor([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="decreasing"):
        S.check_sigmas(torch.tensor([2.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2"):
        S.check_sigmas(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="1-D"):
        S.check_sigmas(torch.ones(2, 2))
    with pytest.raises(ValueError, match="> 0"):
        S.check_sigmas(torch.tensor([1.0, 0.0, -1.0]))


# ----------------------------------------------------------------------- the sampler
@pytest.fixture
def denoiser():
    gmm = ring(6, radius=3.0, std=0.2)  # float64, exact denoiser
    calls = []

    def D(x, sigma):
        calls.append(sigma)
        return gmm.denoise(x, sigma)

    D.calls = calls
    return D


def x_start(sigmas, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return sigmas[0].item() * torch.randn(n, 2, generator=g, dtype=torch.float64)


def test_gamma1_mu0_is_ddim(denoiser):
    """DDIM written in its own variables: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Song et al. 2021)."""
    sigmas = S.ddpm(25).double()
    x = x_start(sigmas)
    out = S.sample(denoiser, sigmas, x, gamma=1.0, mu=0.0)
    abar = 1 / (1 + sigmas**2)
    xt = abar[0].sqrt() * x  # the VP variable
    for i in range(len(sigmas) - 1):
        a, a_next = abar[i], abar[i + 1]
        x0_hat = denoiser(xt / a.sqrt(), sigmas[i].item())
        eps_hat = (xt - a.sqrt() * x0_hat) / (1 - a).sqrt()
        xt = a_next.sqrt() * x0_hat + (1 - a_next).sqrt() * eps_hat
    torch.testing.assert_close(out, xt, rtol=0, atol=1e-9)


def test_gamma1_mu_half_is_ddpm(denoiser):
    """The ancestral DDPM update (Ho et al. 2020, Alg. 2) with beta_t generalized to skipped steps."""
    sigmas = S.ddpm(40).double()
    x = x_start(sigmas)
    out = S.sample(denoiser, sigmas, x, gamma=1.0, mu=0.5, generator=torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    abar = 1 / (1 + sigmas**2)
    xt = abar[0].sqrt() * x
    for i in range(len(sigmas) - 1):
        a, a_next = abar[i], abar[i + 1]
        x0_hat = denoiser(xt / a.sqrt(), sigmas[i].item())
        eps_hat = (xt - a.sqrt() * x0_hat) / (1 - a).sqrt()
        if i == len(sigmas) - 2:  # last step to sigma = 0: output the denoised estimate
            xt = x0_hat
            break
        alpha = a / a_next
        beta = 1 - alpha
        beta_tilde = (1 - a_next) / (1 - a) * beta
        z = torch.randn(xt.shape, generator=g, dtype=xt.dtype)
        xt = (xt - beta / (1 - a).sqrt() * eps_hat) / alpha.sqrt() + beta_tilde.sqrt() * z
    torch.testing.assert_close(out, xt, rtol=0, atol=1e-9)


def _algorithm2_written_out(D, sigmas, x):
    """Permenter & Yuan (2024), Algorithm 2: a DDIM step, then ε̄_t = 2ε_t − ε_{t+1} on every step, the last one
    included (σ_0 may be 0: the step is then x_0 = x_1 − σ_1 ε̄_1)."""
    s = [float(v) for v in sigmas]
    eps_prev = (x - D(x, s[0])) / s[0]
    x = x + (s[1] - s[0]) * eps_prev
    for i in range(1, len(s) - 1):
        eps_t = (x - D(x, s[i])) / s[i]
        x = x + (s[i + 1] - s[i]) * (2 * eps_t - eps_prev)
        eps_prev = eps_t
    return x


ENDINGS = {
    "loglinear to 0": lambda: S.loglinear(6, 0.05, 10.0).double(),
    "loglinear to sigma_min": lambda: S.loglinear(7, 0.05, 10.0, append_zero=False).double(),
    "ddpm to 0": lambda: S.ddpm(5).double(),
    "karras to 0": lambda: S.karras(4, 0.01, 20.0).double(),
    "two levels to 0": lambda: torch.tensor([3.0, 0.0], dtype=torch.float64),
}


@pytest.mark.parametrize("ending", ENDINGS)
def test_gradient_estimation_is_algorithm_2_on_every_step(denoiser, ending):
    """γ = 2, μ = 0 is Algorithm 2 step by step, for schedules ending at 0 and at σ_min; it is not Algorithm 2
    followed by a plain denoiser call (the sampler's former last step at σ = 0)."""
    sigmas = ENDINGS[ending]()
    x = x_start(sigmas)
    out = S.sample(denoiser, sigmas, x, gamma=2.0, mu=0.0)
    torch.testing.assert_close(out, _algorithm2_written_out(denoiser, sigmas, x), rtol=0, atol=1e-12)
    if sigmas[-1] == 0 and len(sigmas) > 2:
        plain_last = denoiser(_algorithm2_written_out(denoiser, sigmas[:-1], x), float(sigmas[-2]))
        assert (out - plain_last).abs().max() > 1e-3


@pytest.mark.parametrize("ending", ENDINGS)
def test_gamma1_is_unchanged_ddim(denoiser, ending):
    """γ = 1, μ = 0: every step before the last is bit for bit x + (σ_next − σ) ε; a last step to 0 gives
    D(x, σ) up to rounding (x − σ·(x − D)/σ)."""
    sigmas = ENDINGS[ending]()
    x = x_start(sigmas)
    out, path = S.sample(denoiser, sigmas, x, return_path=True)
    ref = x
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        d = denoiser(ref, s)
        ref = d if s_next == 0 else ref + (s_next - s) * ((ref - d) / s)
        if s_next > 0:
            assert torch.equal(path[i + 1], ref)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_nfe_and_path(denoiser):
    sigmas = S.karras(12, 0.01, 20.0)
    x = x_start(sigmas)
    denoiser.calls.clear()
    out, path = S.sample(denoiser, sigmas, x, gamma=2.0, return_path=True)
    assert len(denoiser.calls) == len(sigmas) - 1
    assert path.shape == (len(sigmas), *x.shape)
    torch.testing.assert_close(path[0], x)
    torch.testing.assert_close(path[-1], out)


def test_sample_hits_the_data(denoiser):
    """With the exact denoiser every sampler ends near the ring of means (radius 3)."""
    sigmas = S.karras(40, 0.01, 30.0)
    x = x_start(sigmas, n=256)
    for gamma, mu in [(1.0, 0.0), (1.0, 0.5), (2.0, 0.0)]:
        out = S.sample(denoiser, sigmas, x, gamma=gamma, mu=mu, generator=torch.Generator().manual_seed(1))
        r = out.norm(dim=1)
        assert (r - 3.0).abs().median() < 0.25, (gamma, mu)
    out = S.heun(denoiser, sigmas, x)
    assert (out.norm(dim=1) - 3.0).abs().median() < 0.25


def test_ideal_denoiser_sampling_reproduces_training_points():
    """Sampling the ideal denoiser of a finite set returns (copies of) the training points."""
    g = torch.Generator().manual_seed(3)
    data = torch.randn(20, 4, generator=g, dtype=torch.float64)
    sigmas = S.karras(30, 0.002, 20.0).double()
    x = 20.0 * torch.randn(16, 4, generator=g, dtype=torch.float64)
    out = S.sample(IdealDenoiser(data), sigmas, x)
    d = torch.cdist(out, data).min(1).values
    assert d.max() < 1e-3


def test_heun_matches_written_out_edm(denoiser):
    sigmas = S.karras(8, 0.02, 10.0).double()
    x = x_start(sigmas)
    denoiser.calls.clear()
    out = S.heun(denoiser, sigmas, x)
    assert len(denoiser.calls) == 2 * (len(sigmas) - 1) - 1
    ref = x.clone()
    for i in range(len(sigmas) - 1):
        s, s_next = sigmas[i].item(), sigmas[i + 1].item()
        d = (ref - denoiser(ref, s)) / s
        euler = ref + (s_next - s) * d
        if s_next > 0:
            d2 = (euler - denoiser(euler, s_next)) / s_next
            euler = ref + (s_next - s) * (d + d2) / 2
        ref = euler
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def test_convergence_orders_on_a_gaussian():
    """For x0 ~ N(0, τ²) the PF-ODE solution is x(σ) = x(σ_max) sqrt(τ² + σ²)/sqrt(τ² + σ_max²).

    Euler (DDIM) is first order, Heun second order: doubling the steps divides their errors by ≈ 2 and ≈ 4.
    """
    tau2 = 0.5**2
    D = lambda x, sigma: tau2 / (tau2 + sigma**2) * x  # noqa: E731
    x = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None] * 10.0

    def errors(fn, n):
        sig = S.loglinear(n, 0.05, 10.0, append_zero=False).double()
        exact = x * math.sqrt(tau2 + 0.05**2) / math.sqrt(tau2 + 100.0)
        return (fn(D, sig, x) - exact).abs().max().item()

    e1, e2 = errors(S.sample, 20), errors(S.sample, 40)
    h1, h2 = errors(S.heun, 20), errors(S.heun, 40)
    assert 1.7 < e1 / e2 < 2.3
    assert 3.4 < h1 / h2 < 4.6
    assert h1 < e2


def test_step_function():
    x, eps, z = torch.ones(3), torch.full((3,), 2.0), torch.full((3,), 0.5)
    torch.testing.assert_close(S.step(x, eps, 2.0, 1.0, 0.0), x + (1.0 - 2.0) * eps)  # DDIM
    sp, eta = 1.0**2 / 2.0, math.sqrt(1.0 - 0.25)
    torch.testing.assert_close(S.step(x, eps, 2.0, 1.0, 0.5, z), x + (sp - 2.0) * eps + eta * z)  # DDPM
    with pytest.raises(ValueError, match="z"):
        S.step(x, eps, 2.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="mu"):
        S.step(x, eps, 2.0, 1.0, 1.0, z)


def test_sample_bad_inputs(denoiser):
    x = torch.zeros(4, 2, dtype=torch.float64)
    good = S.loglinear(5, 0.1, 1.0)
    with pytest.raises(ValueError, match="decreasing"):
        S.sample(denoiser, good.flip(0), x)
    with pytest.raises(ValueError, match="sigmas"):
        S.sample(denoiser, torch.tensor([1.0, -0.5]), x)
    with pytest.raises(ValueError, match="gamma"):
        S.sample(denoiser, good, x, gamma=0.0)
    with pytest.raises(ValueError, match="mu"):
        S.sample(denoiser, good, x, mu=1.0)
    with pytest.raises(ValueError, match="batch"):
        S.sample(denoiser, good, torch.tensor(1.0))
    with pytest.raises(ValueError, match="decreasing"):
        S.heun(denoiser, torch.tensor([1.0, 1.0, 0.0]), x)


# ----------------------------------------------------------------------- guidance
def cond_model():
    g = torch.Generator().manual_seed(5)
    data = torch.randn(30, 2, generator=g, dtype=torch.float64) * 2
    return IdealDenoiser(data, labels=torch.arange(30) % 3)


def test_cfg_w1_is_conditional_w0_unconditional():
    D = cond_model()
    x = torch.randn(6, 2, dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 2, 1, 0])
    torch.testing.assert_close(S.cfg(D, c, 1.0)(x, 0.7), D(x, 0.7, c))
    torch.testing.assert_close(S.cfg(D, c, 0.0)(x, 0.7), D(x, 0.7))


def test_cfg_formula():
    D = cond_model()
    x = torch.randn(6, 2, dtype=torch.float64)
    c = torch.tensor([0, 1, 2, 2, 1, 0])
    du, dc = D(x, 0.7), D(x, 0.7, c)
    torch.testing.assert_close(S.cfg(D, c, 3.0)(x, 0.7), du + 3.0 * (dc - du))
    # usable as a denoiser in the sampler
    out = S.sample(S.cfg(D, c, 2.0), S.karras(5, 0.05, 5.0), x * 5)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_cfg_bad_inputs():
    D = cond_model()
    with pytest.raises(ValueError, match="labels"):
        S.cfg(D, torch.tensor([0.5]), 1.0)
    with pytest.raises(ValueError, match="w"):
        S.cfg(D, torch.tensor([0]), float("nan"))
    with pytest.raises(TypeError, match="D"):
        S.cfg(None, torch.tensor([0]), 1.0)
    with pytest.raises(ValueError, match="batch"):
        S.cfg(D, torch.tensor([0, 1]), 2.0)(torch.zeros(3, 2, dtype=torch.float64), 1.0)


# ----------------------------------------------------------------------- exercise checker
def test_check_sampler_step(capsys):
    from companion.exercises import check_sampler_step

    def right(x, eps, sigma, sigma_next, mu, z):
        sigma_p = (sigma_next / sigma**mu) ** (1 / (1 - mu))
        return x + (sigma_p - sigma) * eps + math.sqrt(sigma_next**2 - sigma_p**2) * z

    def ddim_only(x, eps, sigma, sigma_next, mu, z):
        return x + (sigma_next - sigma) * eps

    assert check_sampler_step(right)
    assert "✓" in capsys.readouterr().out
    assert not check_sampler_step(ddim_only)
    assert "differs" in capsys.readouterr().out
