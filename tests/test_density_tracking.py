import math

import pytest
import torch

import companion as cp
from companion import density_tracking as dt
from companion import reverse as rv

F64 = torch.float64


def _mixture(D, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return cp.gmm.GaussianMixture(torch.randn(K, D, generator=g, dtype=F64), torch.full((K,), 0.3, dtype=F64))


def _start(gm, process, n, seed=1):
    p1 = rv.mixture_marginal(gm, process, 1.0)
    x1 = p1.sample(n, generator=torch.Generator().manual_seed(seed))
    return x1, p1.log_prob(x1)


def _errors(gm, process, N, lam, n=32, seed=2):
    x1, lp1 = _start(gm, process, n)
    out = dt.track(rv.mixture_score(gm, process), process, x1, lp1, N, lam=lam,
                   divergence=dt.mixture_divergence(gm, process), generator=torch.Generator().manual_seed(seed),
                   return_path=True)
    exact = torch.stack([rv.mixture_marginal(gm, process, float(t)).log_prob(x) for t, x in zip(out.ts, out.path)])
    return (out.log_p_path - exact).abs()


@pytest.mark.parametrize("process, ode_tol", [(cp.sde.VP(), 0.02), (cp.sde.VE(0.01, 20.0), 0.12)])
def test_tracking_matches_exact_log_p_along_the_path(process, ode_tol, one_thread):
    """Reverse SDE (no divergence) and PF-ODE trackers vs the exact log p_t of an 8-D mixture, at every t.

    Tolerances from the step counts (worst trajectory, worst t): the SDE tracker's error falls roughly like
    N^{-1/2}…N^{-1} (measured on VP: 0.53 → 0.15 nats per dimension from N = 256 to 2048), the ODE tracker's
    like N^{-1} (0.046 → 0.012 from N = 128 to 512; on VE 0.30 → 0.08: equal steps in t are coarse there)."""
    gm, D = _mixture(8), 8
    sde = [_errors(gm, process, N, 1.0).max().item() / D for N in (256, 2048)]
    ode = [_errors(gm, process, N, 0.0).max().item() / D for N in (128, 512)]
    assert sde[1] < 0.25 and ode[1] < ode_tol, (sde, ode)
    assert sde[1] < 0.6 * sde[0] and ode[1] < 0.4 * ode[0], (sde, ode)  # convergence


def test_track_moves_x_exactly_like_integrate():
    gm, vp = _mixture(3), cp.sde.VP()
    x1, lp1 = _start(gm, vp, 5)
    score = rv.mixture_score(gm, vp)
    for lam in (1.0, 0.5):
        out = dt.track(score, vp, x1, lp1, 40, lam=lam, divergence=dt.mixture_divergence(gm, vp),
                       generator=torch.Generator().manual_seed(3))
        ref = rv.integrate(score, vp, x1, 40, lam=lam, generator=torch.Generator().manual_seed(3))
        assert torch.equal(out.x, ref)


def test_one_step_is_the_formula_written_out():
    """First step of the reverse-SDE tracker: Δ log p = (−f D − ½ g²‖s‖²)Δt + g s·√|Δt| z, same z as x."""
    gm, vp = _mixture(2), cp.sde.VP()
    x1, lp1 = _start(gm, vp, 4)
    score = rv.mixture_score(gm, vp)
    N, t0 = 10, torch.tensor(1.0, dtype=F64)
    out = dt.track(score, vp, x1, lp1, N, generator=torch.Generator().manual_seed(5), t_end=0.9)
    dtt = (0.9 - 1.0) / N
    z = torch.randn(x1.shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    f, g, s = float(vp.f(t0)), float(vp.g(t0)), score(x1, 1.0)
    one = dt.track(score, vp, x1, lp1, 1, generator=torch.Generator().manual_seed(5), t_end=1.0 + dtt)
    expected = lp1 + (-f * 2 - 0.5 * g**2 * (s**2).sum(1)) * dtt + g * (s * z).sum(1) * math.sqrt(-dtt)
    torch.testing.assert_close(one.log_p, expected)
    assert out.log_p.shape == (4,) and out.log_p.dtype == F64


def test_mixture_divergence_equals_autograd():
    gm = _mixture(5)
    x = torch.randn(6, 5, dtype=F64) * 2
    for process in (cp.sde.VP(), cp.sde.VE()):
        for t in (1e-3, 0.3, 1.0):
            exact = cp.likelihood.exact_divergence(lambda y: rv.mixture_score(gm, process)(y, t), x)
            torch.testing.assert_close(dt.mixture_divergence(gm, process)(x, t), exact)
            torch.testing.assert_close(dt.divergence(rv.mixture_score(gm, process))(x, t), exact)
    est = dt.divergence(rv.mixture_score(gm, cp.sde.VP()), "hutchinson", 4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(est(x, 0.5), dt.mixture_divergence(gm, cp.sde.VP())(x, 0.5), rtol=0.05, atol=0.3)


def test_gaussian_euler_law_matches_simulation():
    vp, mu, tau = cp.sde.VP(), torch.tensor([0.5, -1.0], dtype=F64), 0.6
    wrong = cp.gmm.GaussianMixture(mu[None], tau)
    n = 40000
    x1 = torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 1.2 + 0.3
    x = rv.integrate(rv.mixture_score(wrong, vp), vp, x1, 50, lam=1.0, generator=torch.Generator().manual_seed(1))
    _, m, V = dt.gaussian_euler_law(vp, mu, tau, 0.3, 1.2**2, 50)
    torch.testing.assert_close(x.mean(0), m[-1], atol=4 * math.sqrt(V[-1] / n), rtol=0)
    assert abs(x.var(0).mean() / V[-1] - 1) < 0.03


def _bias_run(scale, n=2000, N=1600, D=4):
    """Data N(0, I): the chain starts exactly at p_1; the score is ``scale`` times the exact one."""
    vp = cp.sde.VP()
    std1 = math.sqrt(float(vp.s(1.0)) ** 2 * (1 + float(vp.sigma(1.0)) ** 2))
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(n, D, generator=g, dtype=F64) * std1
    lp1 = torch.distributions.Normal(0.0, std1).log_prob(x1).sum(1)
    mu = torch.zeros(D, dtype=F64)
    ts, m, V = dt.gaussian_euler_law(vp, mu, 1.0, 0.0, std1**2, N, score_scale=scale)
    law = {float(t): (m[k], V[k]) for k, t in enumerate(ts)}
    ref = lambda x, t: -(x - law[t][0]) / law[t][1]  # noqa: E731  (∇ log p^SDE of the Euler chain)
    exact = rv.mixture_score(cp.gmm.GaussianMixture(mu[None], 1.0), vp)
    out = dt.track(lambda x, t: scale * exact(x, t), vp, x1, lp1, N, generator=g, reference_score=ref)
    true = torch.distributions.Normal(m[-1], V[-1].sqrt()).log_prob(out.x).sum(1)
    return out.log_p - true, out.bias


def test_bias_matches_the_papers_formula(one_thread):
    """Tracked − log p^SDE has mean ½∫g² E‖s_θ − ∇log p^SDE‖² dt (Karczewski et al. 2025) within its MC error
    plus the tracker's own discretization error, measured with the exact score (scale 1: no bias term)."""
    X1, bias1 = _bias_run(1.0)
    assert bias1.mean() < 1e-3
    disc = abs(X1.mean()) + 3 * X1.std() / math.sqrt(len(X1))   # ≈ 0.05 nats at N = 1600
    X, bias = _bias_run(0.7)
    se = math.sqrt(X.var() / len(X) + bias.var() / len(bias))
    assert bias.mean() > 2.0  # a clearly visible bias (≈ 2.7 nats)
    assert abs(X.mean() - bias.mean()) < 4 * se + disc, (X.mean(), bias.mean(), se, disc)


def test_mode_tracking_ode_is_reverse_drift_without_noise():
    """integrate(lam=1, noise=0): y ← y + (f y − g² s) Δt, written out; and the HD sampler's two phases."""
    gm, vp = _mixture(2), cp.sde.VP()
    score = rv.mixture_score(gm, vp)
    y = x1 = _start(gm, vp, 6)[0]
    ts = torch.linspace(1.0, 1e-3, 21, dtype=F64)
    for k in range(20):
        t, h = ts[k], float(ts[k + 1] - ts[k])
        y = y + (float(vp.f(t)) * y - float(vp.g(t)) ** 2 * score(y, float(t))) * h
    torch.testing.assert_close(rv.integrate(score, vp, x1, 20, lam=1.0, noise=0.0), y)
    # a noise scale apart from λ: drift coefficient ½(1 + λ²) with λ = 0.5, noise ν = 1.5
    y2, gen = x1, torch.Generator().manual_seed(7)
    for k in range(20):
        t, h = ts[k], float(ts[k + 1] - ts[k])
        z = torch.randn(y2.shape, generator=gen, dtype=F64)
        y2 = y2 + (float(vp.f(t)) * y2 - 0.625 * float(vp.g(t)) ** 2 * score(y2, float(t))) * h \
            + 1.5 * float(vp.g(t)) * math.sqrt(-h) * z
    torch.testing.assert_close(rv.integrate(score, vp, x1, 20, lam=0.5, noise=1.5,
                                            generator=torch.Generator().manual_seed(7)), y2)
    torch.testing.assert_close(dt.high_density_sample(score, vp, x1, 20, t_threshold=1.0), y)
    ordinary = rv.integrate(score, vp, x1, 20, lam=1.0, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(dt.high_density_sample(score, vp, x1, 20, 1e-3, lam=1.0,
                                                      generator=torch.Generator().manual_seed(4)), ordinary)
    half = rv.integrate(score, vp, x1, 10, lam=0.0, t_end=float(ts[10]))
    torch.testing.assert_close(dt.high_density_sample(score, vp, x1, 20, float(ts[10]) + 1e-4),
                               rv.integrate(score, vp, half, 10, lam=1.0, noise=0.0, t_start=float(ts[10])))


def test_high_density_sampler_raises_log_p():
    """On a mixture, pure mode tracking ends at higher exact log p than PF-ODE samples from the same noise."""
    gm, vp = _mixture(16), cp.sde.VP()
    score, x1 = rv.mixture_score(gm, vp), _start(gm, vp, 64)[0]
    p0 = rv.mixture_marginal(gm, vp, 1e-3)
    hd = p0.log_prob(dt.high_density_sample(score, vp, x1, 200, t_threshold=0.5))
    ode = p0.log_prob(rv.integrate(score, vp, x1, 200))
    assert (hd > ode).float().mean() > 0.95


def test_denoiser_score_and_prior():
    gm, vp = _mixture(4), cp.sde.VP()
    D = lambda x, sigma: gm.denoise(x.reshape(x.shape[0], 4), sigma).reshape(x.shape)  # noqa: E731
    x = torch.randn(5, 4, dtype=F64)
    for t in (1e-3, 0.4, 1.0):
        torch.testing.assert_close(dt.denoiser_score(D, vp, (2, 2))(x, t), rv.mixture_score(gm, vp)(x, t))
    var = float(vp.std(1.0)) ** 2
    torch.testing.assert_close(dt.prior_log_prob(x, vp), torch.distributions.Normal(0, math.sqrt(var)).log_prob(x).sum(1))


def test_compressed_sizes():
    flat, g = torch.zeros(3, 1, 8, 8), torch.Generator().manual_seed(0)
    noisy = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    assert (cp.metrics.zlib_size(flat) < 20).all() and (cp.metrics.zlib_size(noisy) >= 64).all()
    assert (cp.metrics.png_size(noisy) > cp.metrics.png_size(flat)).all()
    big = cp.metrics.png_size(noisy, upsample=4)
    assert (big > cp.metrics.png_size(noisy)).all() and big.shape == (3,)
    # lossless: the PNG decodes to the quantized pixels
    import io
    from PIL import Image
    import numpy as np
    buf = io.BytesIO()
    Image.fromarray(cp.metrics._quantized(noisy)[0], mode="L").save(buf, format="PNG")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue()))), cp.metrics._quantized(noisy)[0])
    assert torch.equal(cp.metrics.png_size(noisy[:, 0]), cp.metrics.png_size(noisy))


def test_patches():
    a, b = cp.data.patches(24), cp.data.patches(24, split="test")
    assert a.shape == (24, 1, 8, 8) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, cp.data.patches(24)) and not torch.equal(a, b)
    with pytest.raises(ValueError, match="split"):
        cp.data.patches(4, split="val")


def test_bad_inputs():
    gm, vp = _mixture(2), cp.sde.VP()
    score = rv.mixture_score(gm, vp)
    x1, lp1 = _start(gm, vp, 3)
    with pytest.raises(ValueError, match="divergence"):
        dt.track(score, vp, x1, lp1, 5, lam=0.0)
    with pytest.raises(ValueError, match="x1"):
        dt.track(score, vp, x1[0], lp1, 5)
    with pytest.raises(ValueError, match="log_p1"):
        dt.track(score, vp, x1, lp1[:2], 5)
    with pytest.raises(ValueError, match="noise"):
        dt.track(score, vp, x1, lp1, 5, noise=-1.0)
    with pytest.raises(ValueError, match="noise"):
        rv.integrate(score, vp, x1, 5, noise=float("nan"))
    with pytest.raises(ValueError, match="heun"):
        rv.integrate(score, vp, x1, 5, method="heun", callback=lambda *a: None)
    with pytest.raises(ValueError, match="t_threshold"):
        dt.high_density_sample(score, vp, x1, 5, t_threshold=2.0)
    with pytest.raises(ValueError, match="method"):
        dt.divergence(score, "trace")
    with pytest.raises(ValueError, match="upsample"):
        cp.metrics.png_size(torch.zeros(1, 8, 8), upsample=0)
    with pytest.raises(ValueError, match="images"):
        cp.metrics.zlib_size(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="level"):
        cp.metrics.zlib_size(torch.zeros(1, 8, 8), level=12)


def test_log_density_step_checker():
    right = lambda lp, s, dw, f, g, dt: lp + (-f * s.shape[1] - 0.5 * g**2 * (s**2).sum(1)) * dt + g * (s * dw).sum(1)  # noqa: E731
    assert cp.exercises.check_log_density_step(right, quiet=True)
    ode_sign = lambda lp, s, dw, f, g, dt: lp + (-f * s.shape[1] + 0.5 * g**2 * (s**2).sum(1)) * dt + g * (s * dw).sum(1)  # noqa: E731
    assert not cp.exercises.check_log_density_step(ode_sign, quiet=True)
    no_noise = lambda lp, s, dw, f, g, dt: lp + (-f * s.shape[1] - 0.5 * g**2 * (s**2).sum(1)) * dt  # noqa: E731
    assert not cp.exercises.check_log_density_step(no_noise, quiet=True)


def test_tracking_with_a_network_runs_on_the_device_of_its_input():
    """The meta device stands in for a GPU: the tracker, a denoiser's score and the HD sampler stay on it.
    (The denoiser is the ideal one of N(0, I) data, D = x/(1 + σ²): ``nets.Denoiser`` itself reads σ with
    ``.item()``, which the meta device cannot.)"""
    net = lambda x, sigma: x / (1 + sigma**2)  # noqa: E731
    ve = cp.sde.VE(0.002, 80.0)
    score = dt.denoiser_score(net, ve, (1, 8, 8))
    x1 = torch.randn(3, 64, device="meta")
    with torch.no_grad():
        out = dt.track(score, ve, x1, dt.prior_log_prob(x1, ve), 3, t_end=0.5)
        hd = dt.high_density_sample(score, ve, x1, 3, t_threshold=0.8, t_end=0.5)
    assert out.x.device.type == out.log_p.device.type == hd.device.type == "meta"
    assert out.log_p.shape == (3,) and hd.shape == (3, 64)
