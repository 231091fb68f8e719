"""The sampler comparison of Chapter 8 at a larger sample size than the chapter uses.

NFE ∈ {5, 10, 20, 50} × sampler {DDIM, DDPM, Heun (EDM), gradient estimation (γ = 2)} × the schedules
of ``cp.projection.SCHEDULES`` (DDPM timesteps trailing and leading, EDM's, log-linear with DDPM's end
points and with end points from the U-Net's training range; Permenter & Yuan 2024, Tables 1–2), plus
a γ sweep at 10 NFE on every schedule:

* digits: Fréchet distance between the digits-classifier features of samples of the zoo's
  ``digits_unet`` and of the 1,797 training digits (``cp.metrics.digits_fd``; lower is better).
  For scale it records the same statistic for ``n`` real digits at the same sample size: ``n``
  training digits against all 1,797, and against the other 1,797 − ``n`` (see :func:`fd_references`);
* 2-D: the ring mixture ``cp.gmm.ring()`` with its exact denoiser; each deterministic sampler is
  scored by the mean Euclidean distance between its sample and the exact probability-flow-ODE
  solution from the same starting noise to the same final σ (``cp.projection.ode_reference``, Heun
  on 1,000 levels; its change from 500 levels is recorded). DDPM has no such reference.

NFE accounting: see ``cp.projection.budget_schedule`` (Heun's calls are shown where they differ from
the budget). All runs of one table start from the same noise.

The results are printed as markdown tables and written to ``companion/results/sampler_table.json``
(atomically), which Chapter 8 reads. Usage::

    OMP_NUM_THREADS=1 python benchmarks/sampler_table.py --n-digits 1000 --n-2d 2000
    python benchmarks/sampler_table.py --n-digits 200 --n-2d 200 --nfe 5 10 --out /tmp/t.json  # quick

On a CPU shared with other jobs set ``OMP_NUM_THREADS=1``: thread oversubscription can make the
U-Net 20 times slower.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import companion as cp

P = cp.projection
OUT = Path(cp.__file__).parent / "results" / "sampler_table.json"


def fd_references(images, n: int, seed: int = 0):
    """FD of ``n`` training digits against all of them, and against the held-out rest (NaN if none)."""
    m = images.shape[0]
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    if n >= m:
        idx = torch.randint(m, (n,), generator=torch.Generator().manual_seed(seed))
        return cp.metrics.digits_fd(images[idx], images).item(), float("nan")
    return (cp.metrics.digits_fd(images[perm[:n]], images).item(),
            cp.metrics.digits_fd(images[perm[:n]], images[perm[n:]]).item())


def _rows(res):
    return [[s, sc, n, v, used] for (s, sc, n), (v, used) in res.items()]


def _tables(D, noise, score, nfes, gammas, seed, samplers, digits):
    t = time.time()
    res = P.sampler_table(D, noise, score, nfes=nfes, samplers=samplers, seed=seed)
    print(P.format_table(res, digits))
    print(f"\n({time.time() - t:.0f} s)\n\n### γ sweep at 10 NFE (γ = 1 is DDIM, γ = 2 gradient estimation)\n")
    specs = {f"γ = {g:g}": dict(gamma=g) for g in gammas}
    sweep = P.sampler_table(D, noise, score, nfes=(10,), samplers=specs, seed=seed)
    print(P.format_table(sweep, digits))
    return {"table": _rows(res), "gamma_sweep": _rows(sweep)}


def digits_tables(n: int, nfes, gammas, seed: int, model_name: str = "digits_unet"):
    model = cp.training.load(model_name)
    dev = next(model.parameters()).device
    images, _ = cp.data.digits()
    inside, held_out = fd_references(images, n, seed)
    m = images.shape[0]
    print(f"\n## Digits: classifier Fréchet distance to the {m} training digits ({n} samples per cell)\n")
    print(f"references: FD of {n} training digits to all {m} = {inside:.2f}; "
          f"to the other {m - n} = {held_out:.2f}\n")
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dev)

    def score(x, sigmas):
        return cp.metrics.digits_fd(x.clamp(-1, 1).cpu(), images)

    out = _tables(lambda x, s: model(x, s), noise, score, nfes, gammas, seed, None, 2)
    return dict(out, n=n, fd_inside=inside, fd_held_out=held_out, model=model_name)


def two_d_tables(n: int, nfes, gammas, seed: int):
    ring = cp.gmm.ring()
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cache = {}

    def score(x, sigmas):
        key = (float(sigmas[0]), float(sigmas[-1]))
        if key not in cache:
            cache[key] = P.ode_reference(ring.denoise, sigmas, noise)
        return (x - cache[key]).norm(dim=1).mean()

    s = P.budget_schedule("ddpm", 10)
    check = (P.ode_reference(ring.denoise, s, noise) - P.ode_reference(ring.denoise, s, noise, 500))
    err = check.norm(dim=1).mean().item()
    print(f"\n## 2-D ring mixture: mean distance to the exact PF-ODE solution ({n} points per cell)\n")
    print(f"reference: Heun on 1,000 levels; its change from 500 levels = {err:.1e}\n")
    out = _tables(ring.denoise, noise, score, nfes, gammas, seed, ["DDIM", "Heun (EDM)", "gradient estimation"], 4)
    return dict(out, n=n, reference_error=err)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-digits", type=int, default=1000, help="digit samples per cell (0: skip)")
    parser.add_argument("--n-2d", type=int, default=2000, help="2-D points per cell (0: skip)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="digits_unet", help="zoo name or .pt file of the digits denoiser")
    parser.add_argument("--out", type=Path, default=OUT, help="where to write the JSON results")
    args = parser.parse_args(argv)
    cp.runtime.seed(args.seed)
    print(cp.runtime.describe())
    results = {"command": "python benchmarks/sampler_table.py " + " ".join(sys.argv[1:] if argv is None else argv),
               "schedules": {k: [sp, ends] for k, (sp, ends) in P.SCHEDULES.items()}}
    t = time.time()
    if args.n_digits:
        results["digits"] = digits_tables(args.n_digits, args.nfe, args.gammas, args.seed, args.model)
    if args.n_2d:
        results["two_d"] = two_d_tables(args.n_2d, args.nfe, args.gammas, args.seed)
    results["seconds"] = round(time.time() - t)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, args.out)
    print(f"\nwrote {args.out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
