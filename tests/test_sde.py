import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import companion as cp

PROCESSES = [cp.sde.VE(0.01, 10.0), cp.sde.VP(0.1, 20.0), cp.sde.VP(1.0, 5.0)]


def trapezoid(fn, t, n=20001):
    xs = torch.linspace(0.0, t, n, dtype=torch.float64)
    return torch.trapezoid(fn(xs), xs)


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
@pytest.mark.parametrize("t", [0.1, 0.5, 1.0])
def test_closed_forms_match_integrals(proc, t):
    """s(t) = exp(int f) and sigma(t)^2 = int g^2 / s^2 (the lecture's solution of the SDE)."""
    s_int = math.exp(trapezoid(proc.f, t))
    var_int = trapezoid(lambda u: proc.g(u) ** 2 / proc.s(u) ** 2, t)
    tt = torch.tensor(t, dtype=torch.float64)
    assert abs(proc.s(tt).item() - s_int) < 1e-6 * max(1, s_int)
    assert abs(proc.sigma(tt).item() ** 2 - var_int.item()) < 1e-5 * max(1.0, var_int.item())


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_endpoints(proc):
    assert proc.sigma(0.0).item() == 0 and proc.s(0.0).item() == 1


def test_vp_preserves_unit_variance():
    p = cp.sde.VP()
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(p.s(t) ** 2 * (1 + p.sigma(t) ** 2), torch.ones_like(t))


@settings(max_examples=30, deadline=None)
@given(st.floats(0.0, 1.0))
def test_t_of_sigma_inverts_sigma(t):
    for proc in PROCESSES:
        tt = torch.tensor(t, dtype=torch.float64)
        assert abs(proc.t_of_sigma(proc.sigma(tt)).item() - t) < 1e-7


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_marginal_moments(proc):
    """x_t = s(t)(x0 + sigma(t) eps): mean s x0, std s sigma (Monte Carlo, 5 standard errors)."""
    n, t = 200_000, 0.4
    x0 = torch.full((n, 1), 1.5, dtype=torch.float64)
    xt, eps = proc.marginal(x0, t, generator=torch.Generator().manual_seed(0))
    t64 = torch.tensor(t, dtype=torch.float64)
    s, sig = proc.s(t64).item(), proc.sigma(t64).item()
    assert torch.allclose(xt, s * (x0 + sig * eps), rtol=1e-12, atol=1e-12)
    se = s * sig / math.sqrt(n)
    assert abs(xt.mean().item() - s * 1.5) < 5 * se
    assert abs(xt.std().item() - s * sig) < 5 * s * sig / math.sqrt(2 * n)


@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_euler_maruyama_matches_closed_form(proc):
    """Simulated mean and variance at t = 0.5 agree with N(s x0, s^2 sigma^2) (discretisation + MC error)."""
    n = 20_000
    x0 = torch.full((n, 2), 2.0, dtype=torch.float64)
    ts, xs = proc.simulate(x0, 400, generator=torch.Generator().manual_seed(1), t_end=0.5)
    assert xs.shape == (401, n, 2) and torch.equal(xs[0], x0) and ts[-1] == 0.5
    s, sig = proc.s(0.5).item(), proc.sigma(0.5).item()
    std = s * sig
    assert abs(xs[-1].mean().item() - 2.0 * s) < 0.02 * max(1.0, 2 * s) + 5 * std / math.sqrt(2 * n)
    assert abs(xs[-1].std().item() / std - 1) < 0.03


def test_per_sample_times():
    p = cp.sde.VP()
    x0 = torch.zeros(3, 4)
    t = torch.tensor([0.0, 0.5, 1.0])
    xt, eps = p.marginal(x0, t)
    assert torch.allclose(xt, (p.s(t) * p.sigma(t))[:, None] * eps, atol=1e-6)


def test_bad_inputs():
    p = cp.sde.VE()
    with pytest.raises(ValueError, match="t must lie in"):
        p.sigma(1.5)
    with pytest.raises(ValueError, match="t must lie in"):
        p.marginal(torch.zeros(2, 2), -0.1)
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        p.marginal(torch.zeros(2, 2), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="batch dimension"):
        p.marginal(torch.tensor(1.0), 0.5)
    with pytest.raises(ValueError, match="n_steps"):
        p.simulate(torch.zeros(2, 2), 0)
    with pytest.raises(ValueError, match="sigma_max"):
        cp.sde.VE(1.0, 0.5)
    with pytest.raises(ValueError, match="beta_min"):
        cp.sde.VP(-1.0, 2.0)


def test_python_float_times_give_float64_coefficients():
    """vp.s(0.5) is computed in float64, like vp.s(tensor(0.5, dtype=float64)); tensors keep their dtype."""
    for proc in (cp.sde.VP(), cp.sde.VE(0.01, 50.0)):
        for name in ("s", "sigma", "f", "g"):
            fn = getattr(proc, name)
            assert fn(0.5).dtype == torch.float64, (proc, name)
            assert fn(0.5).item() == fn(torch.tensor(0.5, dtype=torch.float64)).item()
            assert fn(torch.tensor(0.5)).dtype == torch.float32
    # σ(t) at a tiny time: relative precision of float64, not float32
    vp = cp.sde.VP()
    t = 1e-7
    exact = math.sqrt(math.expm1(0.1 * t + 0.5 * 19.9 * t * t))
    assert abs(vp.sigma(t).item() / exact - 1) < 1e-12


@pytest.mark.parametrize("every", [1, 4, 10])
def test_simulate_keeps_only_what_is_asked_for(every):
    """``every`` thins the returned path; the kept states are those of the full path (same noise)."""
    p, x0 = cp.sde.VP(), torch.randn(5, 3, dtype=torch.float64)
    ts_all, xs_all = p.simulate(x0, 10, generator=torch.Generator().manual_seed(2))
    ts, xs = p.simulate(x0, 10, generator=torch.Generator().manual_seed(2), every=every)
    kept = {1: list(range(11)), 4: [0, 4, 8, 10], 10: [0, 10]}[every]
    assert xs.shape == (len(kept), 5, 3)
    torch.testing.assert_close(ts, ts_all[kept], rtol=0, atol=0)
    torch.testing.assert_close(xs, xs_all[kept], rtol=0, atol=0)
    with pytest.raises(ValueError, match="every"):
        p.simulate(x0, 10, every=0)
