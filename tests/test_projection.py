"""Tests of companion.projection (Chapter 8) and of the samplers it relies on."""
import math

import pytest
import torch

import companion as cp
from companion import projection as P
from companion.gmm import GaussianMixture

DT = torch.float64


def _ideal(data):
    """The ideal denoiser of a finite set, from the exact-mixture module (point masses)."""
    return GaussianMixture(data.reshape(data.shape[0], -1), 0.0).denoise


def _grad_half_smoothed(x, data, sigma):
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(P.smoothed_dist2(x, data, sigma).sum(), x)
    return 0.5 * g


# ------------------------------------------------------------- the gradient identity
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("sigma", [1e-2, 0.3, 1.0, 5.0])
def test_smoothed_distance_gradient_is_sigma_eps_star_2d(seed, sigma):
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(int(torch.randint(1, 12, (), generator=g)), 2, generator=g, dtype=DT)
    x = 2 * torch.randn(9, 2, generator=g, dtype=DT)
    lhs = _grad_half_smoothed(x, data, sigma)
    rhs = x - _ideal(data)(x, sigma)  # = sigma * eps*(x, sigma)
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)


def test_smoothed_distance_gradient_per_sample_sigma():
    g = torch.Generator().manual_seed(1)
    data, x = torch.randn(6, 2, generator=g, dtype=DT), torch.randn(4, 2, generator=g, dtype=DT)
    sig = torch.tensor([0.1, 0.5, 1.0, 3.0], dtype=DT)
    lhs = _grad_half_smoothed(x, data, sig)
    rhs = torch.stack([x[i] - _ideal(data)(x[i:i + 1], sig[i].item())[0] for i in range(4)])
    torch.testing.assert_close(lhs, rhs)


def test_smoothed_distance_gradient_on_digits():
    images, _ = cp.data.digits()
    data = images[:300].to(DT)
    g = torch.Generator().manual_seed(0)
    x = data[:3] + 0.5 * torch.randn(3, *data.shape[1:], generator=g, dtype=DT)
    for sigma in (0.2, 1.0):
        lhs = _grad_half_smoothed(x, data, sigma)
        rhs = x - _ideal(data)(x.reshape(3, -1), sigma).reshape(x.shape)
        assert lhs.shape == x.shape
        torch.testing.assert_close(lhs, rhs, rtol=1e-8, atol=1e-9)


def test_gradient_identity_with_companion_ideal_denoiser():
    denoisers = pytest.importorskip("companion.denoisers")
    images, _ = cp.data.digits()
    data = images[:200].to(DT)
    x = data[5:8] + 0.3 * torch.randn(3, *data.shape[1:], generator=torch.Generator().manual_seed(2), dtype=DT)
    lhs = _grad_half_smoothed(x, data, 0.4)
    rhs = x - denoisers.IdealDenoiser(data)(x, 0.4)
    torch.testing.assert_close(lhs, rhs, rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------- smoothed distance, dist, proj
def test_smoothed_distance_is_a_soft_minimum():
    g = torch.Generator().manual_seed(3)
    data, x = torch.randn(20, 3, generator=g, dtype=DT), 3 * torch.randn(50, 3, generator=g, dtype=DT)
    exact = ((x[:, None] - data[None]) ** 2).sum(-1).min(1).values
    for sigma in (1e-4, 0.1, 1.0, 10.0):
        f = P.smoothed_dist2(x, data, sigma)
        assert torch.all(f <= exact + 1e-12)
        assert torch.all(f >= exact - 2 * sigma**2 * math.log(20) - 1e-12)
    torch.testing.assert_close(P.smoothed_dist2(x, data, 1e-4), exact, rtol=0, atol=1e-7)


def test_smoothed_distance_finite_at_tiny_sigma_float32():
    g = torch.Generator().manual_seed(4)
    data, x = torch.randn(30, 2, generator=g), 5 * torch.randn(10, 2, generator=g)
    assert torch.isfinite(P.smoothed_dist2(x, data, 1e-4)).all()


@pytest.mark.parametrize("chunk", [1, 7, 1 << 23])
def test_dist_and_project_match_brute_force(monkeypatch, chunk):
    monkeypatch.setattr(P, "_CHUNK_ELEMENTS", chunk)
    g = torch.Generator().manual_seed(5)
    data, x = torch.randn(13, 1, 2, 2, generator=g, dtype=DT), torch.randn(11, 1, 2, 2, generator=g, dtype=DT)
    d2 = ((x.reshape(11, 1, -1) - data.reshape(1, 13, -1)) ** 2).sum(-1)
    idx = d2.argmin(1)
    torch.testing.assert_close(P.dist(x, data), d2.min(1).values.sqrt())
    proj, got_idx = P.project(x, data, return_index=True)
    assert torch.equal(got_idx, idx) and torch.equal(proj, data[idx])
    # the smoothed distance does not depend on the chunking either
    torch.testing.assert_close(P.smoothed_dist2(x, data, 0.7), -2 * 0.49 * torch.logsumexp(-d2 / 0.98, 1))


def test_projection_is_the_low_noise_limit_of_the_ideal_denoiser():
    g = torch.Generator().manual_seed(6)
    data, x = torch.randn(10, 2, generator=g, dtype=DT), torch.randn(20, 2, generator=g, dtype=DT)
    torch.testing.assert_close(_ideal(data)(x, 1e-3), P.project(x, data))


# ------------------------------------------------------------- error measurements
def test_relative_error_is_relative_eps_error():
    g = torch.Generator().manual_seed(7)
    x, ref, den = (torch.randn(5, 3, generator=g, dtype=DT) for _ in range(3))
    sigma = 0.7
    eps_model, eps_ref = (x - den) / sigma, (x - ref) / sigma
    expected = (eps_model - eps_ref).norm(dim=1) / eps_ref.norm(dim=1)
    torch.testing.assert_close(P.relative_error(den, x, ref), expected)


def test_error_model_of_the_exact_projection_has_zero_eta():
    g = torch.Generator().manual_seed(8)
    data = torch.randn(6, 4, generator=g, dtype=DT)
    xs = torch.randn(3, 5, 4, generator=g, dtype=DT)
    sig = torch.tensor([2.0, 1.0, 0.5], dtype=DT)[:, None].expand(3, 5)
    den = P.project(xs.reshape(15, 4), data).reshape(3, 5, 4)
    m = P.error_model(xs, sig, den, data)
    assert m.eta.abs().max().item() < 1e-12
    torch.testing.assert_close(m.ratio, 2.0 * sig / P.dist(xs.reshape(15, 4), data).reshape(3, 5))
    assert m.nu() == pytest.approx(torch.maximum(m.ratio, 1 / m.ratio).max().item())
    # a denoiser that returns its input has eta = 1 everywhere
    assert torch.allclose(P.error_model(xs, sig, xs, data).eta, torch.ones(3, 5, dtype=DT))


def test_eta_within_the_nu_band():
    ratio = torch.tensor([[0.1, 0.5, 1.0, 2.0, 10.0]])
    eta = torch.tensor([[9.0, 0.2, 0.1, 0.4, 7.0]])
    em = P.ErrorModel(torch.ones(1, 5), ratio, eta)
    assert em.eta_within(2.0) == pytest.approx(0.4)        # only the three points with 1/2 <= ratio <= 2
    assert em.eta_within(2.0, 0.5) == pytest.approx(0.2)
    assert em.eta_within(10.0) == pytest.approx(9.0) and em.eta_max() == pytest.approx(9.0)
    assert math.isnan(P.ErrorModel(torch.ones(1, 1), torch.tensor([[5.0]]), torch.ones(1, 1)).eta_within(2.0))
    with pytest.raises(ValueError, match="nu"):
        em.eta_within(0.5)


def test_recorder_counts_and_records_a_hand_written_ddim():
    data = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=DT)
    rec = P.Recorder(_ideal(data))
    sigmas = [4.0, 2.0, 1.0, 0.5]
    x = torch.tensor([[3.0, -1.0], [0.5, 0.5]], dtype=DT)
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (s_next - s) * (x - rec(x, s)) / s
    xs, ss, outs = rec.stacked()
    assert rec.nfe == 3 and xs.shape == (3, 2, 2) and ss.shape == (3, 2)
    torch.testing.assert_close(ss[:, 0], torch.tensor(sigmas[:-1], dtype=DT))
    torch.testing.assert_close(outs[1], _ideal(data)(xs[1], 2.0))
    rec.reset()
    assert rec.nfe == 0 and rec.xs == []


# ------------------------------------------------------------- bad input
def test_bad_input_is_rejected():
    data = torch.randn(5, 2)
    with pytest.raises(ValueError, match="data"):
        P.dist(torch.randn(3, 3), data)
    with pytest.raises(ValueError, match="data"):
        P.smoothed_dist2(torch.randn(3, 2), torch.randn(0, 2), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        P.smoothed_dist2(torch.randn(3, 2), data, 0.0)
    with pytest.raises(ValueError, match="sigma"):
        P.smoothed_dist2(torch.randn(3, 2), data, torch.ones(4))
    with pytest.raises(ValueError, match="x"):
        P.project(torch.randn(2), data)
    with pytest.raises(ValueError, match="same shape"):
        P.relative_error(torch.randn(3, 2), torch.randn(3, 2), torch.randn(2, 2))
    with pytest.raises(ValueError, match="spacing"):
        P.budget_schedule("cosine", 5)
    with pytest.raises(ValueError, match="nfe"):
        P.budget_schedule("loglinear", 1, heun=True)
    with pytest.raises(ValueError, match="nfe"):
        P.budget_schedule("ddpm", 0)
    with pytest.raises(ValueError, match="sampler"):
        P.run_sampler(lambda x, s: x, "Euler", "ddpm", 5, torch.randn(2, 2))
    with pytest.raises(TypeError, match="D"):
        P.Recorder(3)
    with pytest.raises(ValueError, match="recorded"):
        P.Recorder(lambda x, s: x).stacked()
    with pytest.raises(ValueError, match="xs"):
        P.error_model(torch.randn(2, 3, 2), torch.ones(2, 4), torch.randn(2, 3, 2), data)


# ------------------------------------------------------------- samplers (Chapter 3's module)
def _algorithm2(D, sigmas, x):
    """Permenter & Yuan (2024), Algorithm 2, written out line by line."""
    eps = lambda x, s: (x - D(x, s)) / s  # noqa: E731
    N = len(sigmas) - 1
    s = [float(v) for v in sigmas]  # s[0] = sigma_N, ..., s[N] = sigma_0
    eps_prev = eps(x, s[0])
    x = x + (s[1] - s[0]) * eps_prev  # x_{N-1} <- x_N + (sigma_{N-1} - sigma_N) eps(x_N, sigma_N)
    for i in range(1, N):  # t = N-1, ..., 1
        eps_t = eps(x, s[i])
        eps_bar = 2 * eps_t - eps_prev
        x = x + (s[i + 1] - s[i]) * eps_bar
        eps_prev = eps_t
    return x


@pytest.mark.parametrize("n", [1, 2, 5, 10, 20])
def test_gamma_two_sampler_is_algorithm_2(n):
    samplers = pytest.importorskip("companion.samplers")
    g = torch.Generator().manual_seed(n)
    data = 2 * torch.randn(7, 2, generator=g, dtype=DT)
    D = _ideal(data)
    # the paper's setting: sigma_N > ... > sigma_0 > 0 (its last step is a gradient-estimation step too)
    sigmas = torch.logspace(math.log10(30.0), math.log10(0.02), n + 1, dtype=DT)
    x = 30.0 * torch.randn(25, 2, generator=g, dtype=DT)
    got = samplers.sample(D, sigmas, x.clone(), gamma=2.0, mu=0.0)
    torch.testing.assert_close(got, _algorithm2(D, sigmas, x), rtol=1e-10, atol=1e-10)
    # ... and differs from DDIM (gamma = 1) once there are two or more steps
    if len(sigmas) > 2:
        assert not torch.allclose(samplers.sample(D, sigmas, x.clone(), gamma=1.0), got)


def test_gamma_two_sampler_is_algorithm_2_on_digits_shapes():
    samplers = pytest.importorskip("companion.samplers")
    images, _ = cp.data.digits()
    data = images[:50].to(DT)
    D = lambda x, s: _ideal(data)(x.reshape(x.shape[0], -1), s).reshape(x.shape)  # noqa: E731
    sigmas = torch.logspace(1, -2, 6, dtype=DT)
    x = 10 * torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=DT)
    torch.testing.assert_close(samplers.sample(D, sigmas, x.clone(), gamma=2.0), _algorithm2(D, sigmas, x))


@pytest.mark.parametrize("n", [2, 5, 10, 50])
def test_loglinear_schedule_endpoints(n):
    samplers = pytest.importorskip("companion.samplers")
    sigma_min, sigma_max = 0.002, 80.0
    s = samplers.loglinear(n, sigma_min, sigma_max)  # n levels, then 0
    assert s.dim() == 1 and len(s) == n + 1
    assert s[0].item() == pytest.approx(sigma_max, rel=1e-6)
    assert s[-2].item() == pytest.approx(sigma_min, rel=1e-6)
    assert s[-1].item() == 0.0
    s2 = samplers.loglinear(n, sigma_min, sigma_max, append_zero=False)
    assert len(s2) == n and s2[-1].item() == pytest.approx(sigma_min, rel=1e-6)
    # log-linear: a constant ratio sigma_{t-1}/sigma_t = 1 - beta (the paper's admissible schedules)
    ratios = (s2[1:] / s2[:-1]).double()
    torch.testing.assert_close(ratios, torch.full_like(ratios, (sigma_min / sigma_max) ** (1 / (n - 1))), rtol=1e-5, atol=0)


@pytest.mark.parametrize("spacing", P.SPACINGS)
@pytest.mark.parametrize("nfe", [1, 2, 5, 10, 20])
def test_budget_schedules_and_nfe_accounting(spacing, nfe):
    samplers = pytest.importorskip("companion.samplers")
    sigma_T = samplers.ddpm(1000, append_zero=False)[0].item()
    for name in P.SAMPLERS:
        heun = name.startswith("Heun")
        if heun and spacing == "loglinear" and nfe == 1:
            with pytest.raises(ValueError, match="nfe"):
                P.budget_schedule(spacing, nfe, heun=True)
            continue
        rec = P.Recorder(lambda x, sig: 0 * x, keep=False)
        _, used = P.run_sampler(rec, name, spacing, nfe, torch.zeros(2, 2))
        s = P.budget_schedule(spacing, nfe, heun=heun)
        steps = len(s) - 1
        assert used == rec.nfe == ((2 * steps - (s[-1] == 0).item()) if heun else nfe)
        assert nfe - 1 <= used <= nfe
        assert (s[-1].item() == 0.0) == (spacing != "loglinear")
        first = {"ddpm": sigma_T, "karras": 80.0, "loglinear": sigma_T}.get(spacing, s[0].item())
        assert s[0].item() == pytest.approx(first)
    if spacing == "loglinear":  # nfe + 1 levels, 157 -> 0.01, constant ratio: no call at sigma_min
        s = P.budget_schedule(spacing, nfe).double()
        assert len(s) == nfe + 1 and s[-1].item() == pytest.approx(0.01)
        torch.testing.assert_close(s[1:] / s[:-1], torch.full((nfe,), (0.01 / sigma_T) ** (1 / nfe), dtype=DT))
        s = P.budget_schedule(spacing, nfe, sigma_min=0.1, sigma_max=12.3)
        assert s[0].item() == pytest.approx(12.3) and s[-1].item() == pytest.approx(0.1)
    if spacing == "ddpm-leading":
        torch.testing.assert_close(P.budget_schedule(spacing, nfe), samplers.ddpm(nfe, spacing="leading"))
    if spacing == "karras":
        torch.testing.assert_close(P.budget_schedule(spacing, nfe), samplers.karras(nfe, 0.002, 80.0))


def test_budget_schedule_rejects_end_points_of_fixed_spacings():
    with pytest.raises(ValueError, match="sigma_min"):
        P.budget_schedule("ddpm", 5, sigma_min=0.1)


def test_sampler_table_and_format():
    pytest.importorskip("companion.samplers")
    data = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=DT)
    noise = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=DT)
    seen = []

    def score(x, sigmas):
        seen.append(len(sigmas))
        return P.dist(x, data).mean()

    res = P.sampler_table(_ideal(data), noise, score, nfes=(2, 4), samplers=["DDIM", "Heun (EDM)"],
                          schedules=["log-linear 157→0.01"], progress=False)
    assert set(res) == {(s, "log-linear 157→0.01", n) for s in ("DDIM", "Heun (EDM)") for n in (2, 4)}
    assert res[("Heun (EDM)", "log-linear 157→0.01", 4)][1] == 4 and res[("DDIM", "log-linear 157→0.01", 4)][1] == 4
    assert seen == [3, 5, 2, 3]  # the schedule each cell ran on: nfe + 1 levels, Heun nfe/2 + 1
    res = P.sampler_table(_ideal(data), noise, score, nfes=(4,), samplers=["Heun (EDM)"],
                          schedules={"ddpm": ("ddpm", {})}, progress=False)
    table = P.format_table(res, 3)
    assert table.count("\n") == 2 and "| Heun (EDM) | ddpm |" in table and "(3)" in table


def test_gamma_two_sampler_with_a_final_zero_level():
    """With a final sigma = 0 the last step is Algorithm 2's too (x - sigma_1 eps_bar), not D(x, sigma_1)."""
    samplers = pytest.importorskip("companion.samplers")
    data = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=DT)
    D = _ideal(data)
    sigmas = samplers.loglinear(6, 0.5, 20.0).to(DT)
    x = 20 * torch.randn(10, 2, generator=torch.Generator().manual_seed(4), dtype=DT)
    got = samplers.sample(D, sigmas, x.clone(), gamma=2.0)
    torch.testing.assert_close(got, _algorithm2(D, sigmas, x))
    old = D(_algorithm2(D, sigmas[:-1], x), float(sigmas[-2]))  # the former special case
    assert not torch.allclose(got, old, atol=1e-3)


def test_ode_reference_on_a_gaussian():
    """For x0 ~ N(0, τ²) the PF-ODE solution is x(σ) = x(σ_max) sqrt(τ² + σ²) / sqrt(τ² + σ_max²)."""
    tau2 = 0.3
    D = lambda x, s: tau2 / (tau2 + s**2) * x  # noqa: E731
    z = torch.linspace(-2, 2, 5, dtype=DT)[:, None]
    for sigmas in (torch.tensor([20.0, 1.0, 0.05], dtype=DT), torch.tensor([20.0, 1.0, 0.0], dtype=DT)):
        end = sigmas[-1].item()
        exact = 20.0 * z * math.sqrt(tau2 + end**2) / math.sqrt(tau2 + 400.0)
        torch.testing.assert_close(P.ode_reference(D, sigmas, z), exact, rtol=1e-4, atol=1e-5)


def test_checker_accepts_algorithm_2_and_rejects_ddim():
    samplers = pytest.importorskip("companion.samplers")
    assert cp.exercises.check_gradient_estimation(_algorithm2, quiet=True)
    ddim = lambda D, sigmas, x: samplers.sample(D, sigmas, x, gamma=1.0)  # noqa: E731
    assert not cp.exercises.check_gradient_estimation(ddim, quiet=True)
