"""The sampler comparison of Chapter 8 at a larger sample size than the chapter uses.

NFE ∈ {5, 10, 20, 50} × sampler {DDIM, DDPM, Heun (EDM), gradient estimation (γ = 2)} × spacing
{DDPM-uniform, log-linear} (Permenter & Yuan 2024, Tables 1–2), plus a γ sweep at 10 NFE:

* digits: Fréchet distance between the digits-classifier features of samples of the zoo's
  ``digits_unet`` and of the 1,797 training digits (``cp.metrics.digits_fd``; lower is better).
  For scale it prints the same statistic for ``n`` real digits at the same sample size (the Fréchet
  distance has a positive bias that depends on ``n``): ``n`` training digits against all 1,797 (a
  sampler that reproduces training digits), and against the other 1,797 − ``n`` (a sampler of new
  digits, scored against a smaller reference set) — see :func:`fd_references`;
* 2-D: the ring mixture ``cp.gmm.ring()`` with its exact denoiser; each deterministic sampler is
  scored by the mean Euclidean distance between its sample and the exact probability-flow-ODE
  solution from the same starting noise (computed with EDM's Heun sampler at 1,999 denoiser calls,
  i.e. 1,000 noise levels; its change from the 999-call solution is printed), so there is no
  sampling-noise floor. DDPM solves a different (stochastic) problem and has no such reference.

NFE accounting: the (γ, μ) samplers make one denoiser call per step; Heun makes two per step except
the last (an Euler step to σ = 0), i.e. 2k − 1 calls for k levels; for an even budget it gets one
call fewer (shown in parentheses). All runs of one table start from the same noise.

Usage::

    python benchmarks/sampler_table.py                 # digits (2,000 samples) and 2-D (2,000 points)
    python benchmarks/sampler_table.py --n-digits 500 --n-2d 500 --nfe 5 10   # quicker

On a CPU shared with other jobs set ``OMP_NUM_THREADS=1``: thread oversubscription can make the
U-Net 20 times slower.
"""
from __future__ import annotations

import argparse
import time

import torch

import companion as cp

P = cp.projection


def fd_references(images, n: int, seed: int = 0):
    """FD of ``n`` training digits against all of them, and against the held-out rest (NaN if none)."""
    m = images.shape[0]
    perm = torch.randperm(m, generator=torch.Generator().manual_seed(seed))
    if n >= m:
        idx = torch.randint(m, (n,), generator=torch.Generator().manual_seed(seed))
        return cp.metrics.digits_fd(images[idx], images).item(), float("nan")
    return (cp.metrics.digits_fd(images[perm[:n]], images).item(),
            cp.metrics.digits_fd(images[perm[:n]], images[perm[n:]]).item())


def digits_tables(n: int, nfes, gammas, seed: int, model_name: str = "digits_unet"):
    model = cp.training.load(model_name)
    dev = next(model.parameters()).device
    images, _ = cp.data.digits()

    def D(x, sigma):
        return model(x, sigma)

    m = images.shape[0]
    inside, held_out = fd_references(images, n)
    print(f"\n## Digits: classifier Fréchet distance to the 1,797 training digits ({n} samples per cell)\n")
    print(f"references: FD of {n} training digits to all {m} = {inside:.2f}; "
          f"to the other {m - n} = {held_out:.2f}\n")
    noise = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dev)

    def score(x):
        return cp.metrics.digits_fd(x.clamp(-1, 1).cpu(), images)

    t = time.time()
    res = P.sampler_table(D, noise, score, nfes=nfes, seed=seed)
    print(P.format_table(res, 2))
    print(f"\n({time.time() - t:.0f} s)")
    for sp in P.SPACINGS:
        if 10 in nfes:
            ratio = res[("gradient estimation", sp, 10)][0] / res[("DDIM", sp, 10)][0]
            print(f"ratio FD(gradient estimation, 10) / FD(DDIM, 10), {sp} spacing: {ratio:.2f}")
    best = min((v[0], k) for k, v in res.items() if k[2] == 10) if 10 in nfes else None
    if best:
        print(f"best at 10 NFE: {best[1][0]} / {best[1][1]} (FD {best[0]:.2f})")
    print("\n### γ sweep at 10 NFE (γ = 1 is DDIM, γ = 2 gradient estimation)\n")
    specs = {f"γ = {g:g}": dict(gamma=g) for g in gammas}
    print(P.format_table(P.sampler_table(D, noise, score, nfes=(10,), samplers=specs, seed=seed), 2))
    return res


def two_d_tables(n: int, nfes, gammas, seed: int):
    ring = cp.gmm.ring()
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    exact, used = P.run_sampler(ring.denoise, "heun", "loglinear", 1999, noise)
    check, _ = P.run_sampler(ring.denoise, "heun", "loglinear", 999, noise)
    print(f"\n## 2-D ring mixture: mean distance to the exact PF-ODE solution ({n} points per cell)\n")
    print(f"reference: Heun with {used} calls; its own error (vs {used // 2} calls) = "
          f"{(exact - check).norm(dim=1).mean().item():.1e}\n")

    def score(x):
        return (x - exact).norm(dim=1).mean()

    deterministic = ["DDIM", "Heun (EDM)", "gradient estimation"]
    res = P.sampler_table(ring.denoise, noise, score, nfes=nfes, samplers=deterministic, seed=seed)
    print(P.format_table(res, 4))
    if 10 in nfes:
        for sp in P.SPACINGS:
            ratio = res[("gradient estimation", sp, 10)][0] / res[("DDIM", sp, 10)][0]
            print(f"ratio error(gradient estimation, 10) / error(DDIM, 10), {sp} spacing: {ratio:.2f}")
    print("\n### γ sweep at 10 NFE\n")
    specs = {f"γ = {g:g}": dict(gamma=g) for g in gammas}
    print(P.format_table(P.sampler_table(ring.denoise, noise, score, nfes=(10,), samplers=specs, seed=seed), 4))
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-digits", type=int, default=2000, help="digit samples per cell (0: skip)")
    parser.add_argument("--n-2d", type=int, default=2000, help="2-D points per cell (0: skip)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--gammas", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="digits_unet", help="zoo name or .pt file of the digits denoiser")
    args = parser.parse_args(argv)
    cp.runtime.seed(args.seed)
    print(cp.runtime.describe())
    if args.n_digits:
        digits_tables(args.n_digits, args.nfe, args.gammas, args.seed, args.model)
    if args.n_2d:
        two_d_tables(args.n_2d, args.nfe, args.gammas, args.seed)


if __name__ == "__main__":
    main()
