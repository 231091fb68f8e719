import math

import pytest
import torch

import companion as cp
from companion import fokker_planck as fp

F64 = torch.float64


def mixture_1d():
    return cp.gmm.GaussianMixture(torch.tensor([[-2.0], [0.5], [2.5]], dtype=F64),
                                  torch.tensor([0.3, 0.5, 0.2], dtype=F64), torch.tensor([0.3, 0.5, 0.2], dtype=F64))


@pytest.mark.parametrize("process, half_width", [(cp.sde.VP(), 6.0), (cp.sde.VE(0.01, 5.0), 36.0)])
def test_mass_conserved_and_positive(process, half_width):
    grid = fp.uniform_grid(half_width, 1500 if half_width > 10 else 400)
    p0 = fp.mixture_density(mixture_1d(), grid)
    P = fp.solve(p0, grid, process, [0.1, 0.5, 1.0], n_steps=300)
    m0 = fp.mass(p0, grid)
    for p in P:
        assert abs(fp.mass(p, grid) - m0) < 1e-10
    assert (P >= 0).all()


def test_positive_for_compactly_supported_density_and_huge_steps():
    grid = fp.uniform_grid(6.0, 400)
    p0 = torch.clamp(1 - grid**2, min=0) ** 2  # exact zeros outside [-1, 1], unnormalised
    P = fp.solve(p0, grid, cp.sde.VP(), [0.01, 1.0], n_steps=2)
    assert (P >= 0).all() and (P[0] > 0).sum() > (p0 > 0).sum()  # spreads, never negative
    assert abs(fp.mass(P[-1], grid) - fp.mass(p0, grid)) < 1e-10


def test_positive_when_drift_dominates():
    """Far from the origin the VP drift beats diffusion (cell Péclet |x h| up to 4): central differences
    would produce negative values, the exponentially fitted flux does not."""
    grid = fp.uniform_grid(40.0, 800)
    p0 = fp.mixture_density(cp.gmm.GaussianMixture(torch.tensor([[30.0]], dtype=F64), 2.0), grid)
    P = fp.solve(p0, grid, cp.sde.VP(), [0.02, 0.1, 1.0], n_steps=50)
    assert (P >= 0).all()
    assert abs(fp.mass(P[-1], grid) - fp.mass(p0, grid)) < 1e-10


def test_default_grid_matches_exact_marginal_to_1e_3():
    """The chapter's default: VP, 400 cells on [-6, 6], the default 4000 steps."""
    gm, process = mixture_1d(), cp.sde.VP()
    grid = fp.uniform_grid(6.0, 400)
    ts = [0.05, 0.1, 0.3, 0.6, 1.0]
    P = fp.solve(fp.mixture_density(gm, grid), grid, process, ts)
    for p, t in zip(P, ts):
        assert fp.l1_error(p, fp.mixture_density(gm, grid, process, t), grid) <= 1e-3


def test_error_falls_as_the_grid_is_refined():
    """Second order in space (time error made negligible on a wide mixture)."""
    gm = cp.gmm.GaussianMixture(torch.tensor([[-1.5], [1.5]], dtype=F64), 0.8)
    process, t = cp.sde.VP(), 0.3
    errs = []
    for n in (64, 128, 256):
        grid = fp.uniform_grid(8.0, n)
        p = fp.solve(fp.mixture_density(gm, grid), grid, process, [t], n_steps=6000)[0]
        errs.append(fp.l1_error(p, fp.mixture_density(gm, grid, process, t), grid))
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] / errs[1] > 3 and errs[1] / errs[2] > 2.5  # ≈ 4 for second order


def test_error_falls_with_the_number_of_time_steps():
    """First order in time (implicit Euler)."""
    gm, process, t = mixture_1d(), cp.sde.VP(), 0.2
    grid = fp.uniform_grid(6.0, 1600)
    exact = fp.mixture_density(gm, grid, process, t)
    errs = [fp.l1_error(fp.solve(fp.mixture_density(gm, grid), grid, process, [t], n_steps=n)[0], exact, grid)
            for n in (50, 100, 200)]
    assert 1.6 < errs[0] / errs[1] < 2.6 and 1.6 < errs[1] / errs[2] < 2.6


def test_start_time_and_output_at_start():
    gm, process = mixture_1d(), cp.sde.VE(0.01, 5.0)
    grid = fp.uniform_grid(36.0, 2000)
    p_half = fp.mixture_density(gm, grid, process, 0.5)
    P = fp.solve(p_half, grid, process, [0.5, 0.9], t0=0.5, n_steps=1000)
    assert torch.equal(P[0], p_half)
    assert fp.l1_error(P[1], fp.mixture_density(gm, grid, process, 0.9), grid) < 1e-3


def test_2d_matches_exact_and_splits_exactly_for_product_densities():
    grid = fp.uniform_grid(6.0, 120)
    ring, process = cp.gmm.ring(), cp.sde.VP()
    P = fp.solve(fp.mixture_density(ring, grid), grid, process, [0.3, 1.0], n_steps=400)
    assert abs(fp.mass(P[-1], grid) - fp.mass(fp.mixture_density(ring, grid), grid)) < 1e-10 and (P >= 0).all()
    assert fp.l1_error(P[0], fp.mixture_density(ring, grid, process, 0.3), grid) < 0.03
    # a product density evolves as the product of the 1-D solutions (the operators commute)
    grid = fp.uniform_grid(6.0, 200)
    g1 = fp.mixture_density(mixture_1d(), grid)
    g2 = g1.flip(0)  # same narrowest feature, hence the same time steps
    P2 = fp.solve(torch.outer(g1, g2), grid, process, [0.2], n_steps=100)[0]
    Pa = fp.solve(g1, grid, process, [0.2], n_steps=100)[0]
    Pb = fp.solve(g2, grid, process, [0.2], n_steps=100)[0]
    torch.testing.assert_close(P2, torch.outer(Pa, Pb), rtol=1e-9, atol=1e-12)


def test_mixture_density_is_normalised():
    grid = fp.uniform_grid(8.0, 400)
    for t in (0.0, 0.3, 1.0):
        assert math.isclose(fp.mass(fp.mixture_density(mixture_1d(), grid, cp.sde.VP(), t), grid), 1.0, abs_tol=1e-8)


def test_bad_inputs():
    process = cp.sde.VP()
    grid = fp.uniform_grid(6.0, 400)
    p0 = fp.mixture_density(mixture_1d(), grid)
    with pytest.raises(ValueError, match="uniform"):
        fp.solve(p0, grid**3 / 36, process, [0.5])
    with pytest.raises(ValueError, match="non-negative"):
        fp.solve(p0 - 1e-3, grid, process, [0.5])
    with pytest.raises(ValueError, match="too coarse"):
        coarse = fp.uniform_grid(6.0, 40)
        fp.solve(fp.mixture_density(mixture_1d(), coarse), coarse, process, [0.5])
    with pytest.raises(ValueError, match="too narrow"):
        fp.solve(p0, grid, cp.sde.VE(0.01, 50.0), [1.0])
    with pytest.raises(ValueError, match="shape"):
        fp.solve(p0[:-1], grid, process, [0.5])
    with pytest.raises(ValueError, match="times"):
        fp.solve(p0, grid, process, [0.5, 0.2])
    with pytest.raises(ValueError, match="finite"):
        fp.solve(p0 * float("nan"), grid, process, [0.5])
    with pytest.raises(ValueError, match="positive mass"):
        fp.solve(p0 * 0, grid, process, [0.5])
    with pytest.raises(ValueError, match="n_steps"):
        fp.solve(p0, grid, process, [0.5], n_steps=0)
    with pytest.raises(ValueError, match="half_width"):
        fp.uniform_grid(-1.0, 10)
    with pytest.raises(ValueError, match="grid"):
        fp.solve(p0[:4], grid[:4], process, [0.5])
