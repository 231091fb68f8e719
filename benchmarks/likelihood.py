"""PF-ODE log-likelihood (companion.likelihood): time per point and error against the exact value.

The target is a Gaussian mixture whose log-density is known at every noise level (``cp.gmm``): by default
20 isotropic components (std 0.3) with standard-normal means in d = 64 dimensions, the size of the 8×8
digits, and also the 2-D ring of the book. For B points sampled from it the script integrates the
probability-flow ODE from σ_min = 1e-3 to σ_max = 100 with the exact denoiser (float64) and the exact
prior at σ_max, so the only errors are the integrator's and the divergence estimator's. It prints, per
setting: the number of divergence evaluations (NFE; each costs one denoiser pass per probe, forward and
backward), the wall time per point, the mean absolute error against the exact log p_{σ_min} in nats per
dimension, and for Hutchinson the mean standard error it reports. Rows: fixed-step Euler, Heun and RK4 with
4–64 steps (exact trace), scipy's adaptive RK45, and Hutchinson's estimator with 1, 4 and 16 Rademacher
probes (RK4, 16 steps). Times are for one CPU thread; a GPU or a network denoiser changes them.

Run: ``.venv/bin/python benchmarks/likelihood.py [--dim 64] [--points 32]`` (about a minute on one core).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import companion as cp
from companion import likelihood as L

S_MIN, S_MAX = 1e-3, 100.0


def mixture(dim: int, k: int = 20, seed: int = 0) -> cp.gmm.GaussianMixture:
    """``k`` isotropic components (std 0.3) with N(0, I) means in ``dim`` dimensions (float64)."""
    if dim == 2:
        return cp.gmm.ring()
    g = torch.Generator().manual_seed(seed)
    return cp.gmm.GaussianMixture(torch.randn(k, dim, generator=g, dtype=torch.float64), 0.3)


def run(gm, x, **kw):
    start = time.perf_counter()
    out = L.pf_ode_log_likelihood(gm.denoise, x, S_MIN, S_MAX, prior=lambda z: gm.log_prob(z, S_MAX), **kw)
    per_point = (time.perf_counter() - start) / x.shape[0]
    err = ((out.log_prob - gm.log_prob(x, S_MIN)).abs().mean() / gm.dim).item()
    se = (out.stderr.mean() / gm.dim).item()
    return out.nfe, per_point, err, se


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, nargs="+", default=[64, 2])
    parser.add_argument("--points", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    settings = [(m, dict(method=m, steps=n)) for m in ("euler", "heun", "rk4") for n in (4, 16, 64)]
    settings += [("RK45", dict(method="RK45", rtol=1e-5, atol=1e-5))]
    settings += [(f"rk4 + Hutchinson {p}", dict(method="rk4", steps=16, divergence="hutchinson", n_probes=p,
                                                generator=torch.Generator().manual_seed(1))) for p in (1, 4, 16)]
    for dim in args.dim:
        gm = mixture(dim)
        x = gm.sample(args.points, generator=torch.Generator().manual_seed(0))
        print(f"\nmixture in d = {dim} ({gm.n_components} components), {args.points} points, "
              f"σ from {S_MIN:g} to {S_MAX:g}")
        print(f"{'setting':24s} {'steps':>5s} {'NFE':>5s} {'ms/point':>9s} {'|error| nats/dim':>17s} "
              f"{'reported SE':>12s}")
        for name, kw in settings:
            nfe, t, err, se = run(gm, x, **kw)
            steps = str(kw.get("steps", "adapt"))
            se_text = "—" if kw.get("divergence") != "hutchinson" or math.isnan(se) else f"{se:.1e}"
            print(f"{name:24s} {steps:>5s} {nfe:5d} {1e3 * t:9.2f} {err:17.1e} {se_text:>12s}")


if __name__ == "__main__":
    main()
