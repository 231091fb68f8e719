"""Speed of the ELS machine (companion.els) against the authors' batched formulation.

Baseline (written from Kamb & Ganguli 2025, eq. 3, in the way their code evaluates it): for every class of
positions with the same zero-padding pattern, every query patch is compared with the *whole bank* of training
patches at the positions of that class, with batched tensor operations: the logits
-(|q|^2 - 2 q.y + |y|^2)/2 sigma^2 of all pairs by one matrix product per batch of training images (unfold),
a softmax streamed over the batches with a running maximum, and the weighted centre values by a second matrix
product. No deduplication, no pruning. The batch of training images is sized so that a tile of logits has
about 2^20 entries (64 images at a time made 300 MB tiles at 16x16 and ran ~10x slower), and the weighted sum
is taken as v^T w^T (a wide output; w v with its one-column output is several times slower in MKL); logits
more than 87 below the running maximum are clamped there before exp (torch's exp takes a ~100x slower path
for arguments below -87; the clamp adds at most N e^-87 relative weight).

``companion.els`` (default ``tol = 1e-7``) deduplicates identical patches and skips the candidates outside a window
in one projection whose total weight is provably below tol times the normalizer (companion/_els_bank.py). Both
run in float32 on one thread on the same inputs, with denormal numbers flushed to zero (without it the exp of
very negative logits slows the baseline down 3-4x at low noise): 32 noisy queries, 1,000 training images,
k = 3 and 5, zero padding, for the 8x8 digits and for the digits upsampled to 16x16
(companion.recipes.digits16). Each time is the best of ``--repeat`` calls. The machine is timed twice: the
first call includes building its patch banks (done once per patch size and reused by every later call, e.g.
along a sampler's trajectory), then steady-state calls. The outputs are compared with a float64 evaluation of
the plain machine (``bank_min=inf``), which is exact up to float64 rounding.

"needed" is the fraction of (query, candidate) pairs of the largest position class whose log-weight lies within
log(C/tol) of the query's best one (C: number of candidates), measured on 256 of its queries: no pruning that
is exact to tol can skip these pairs, so at a noise level where "needed" is near 1 only a cheaper evaluation of
each pair (and deduplication) can make the machine faster.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/els_speed.py [--quick]``.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import companion as cp
from companion import els, recipes


def padding_classes(H, W, k):
    """Flat positions grouped by their zero-padding pattern (rows/columns padded on each side)."""
    d = k // 2
    key = lambda i, n: (max(0, d - i), max(0, i + d - n + 1))  # noqa: E731
    groups = {}
    for i in range(H):
        for j in range(W):
            groups.setdefault((key(i, H), key(j, W)), []).append(i * W + j)
    return [torch.tensor(g) for g in groups.values()]


def batched_els(x, data, sigma, k, tile=2**20):
    """The authors' formulation: each query patch against the whole bank of its class, batched."""
    B, C, H, W = x.shape
    d = k // 2
    qall = F.unfold(F.pad(x, (d, d, d, d)), k)                                   # (B, P, HW)
    out = torch.empty(B, C, H * W, dtype=x.dtype)
    for pos in padding_classes(H, W, k):
        n = len(pos)
        q = qall[:, :, pos].permute(0, 2, 1).reshape(B * n, -1)                   # (B n, P)
        qn = (q**2).sum(1, keepdim=True)
        m_run = torch.full((B * n, 1), -torch.inf, dtype=x.dtype)
        num = torch.zeros(B * n, C, dtype=x.dtype)
        den = torch.zeros(B * n, 1, dtype=x.dtype)
        batch = max(1, tile // (B * n * n))                                       # images per tile
        for a in range(0, len(data), batch):
            imgs = data[a:a + batch]
            y = F.unfold(F.pad(imgs, (d, d, d, d)), k)[:, :, pos].permute(0, 2, 1).reshape(-1, q.shape[1])
            v = imgs.reshape(len(imgs), C, H * W)[:, :, pos].permute(0, 2, 1).reshape(-1, C)
            logit = -(qn - 2 * q @ y.T + (y**2).sum(1)) / (2 * sigma**2)
            m_new = torch.maximum(m_run, logit.amax(1, keepdim=True))
            w = torch.exp((logit - m_new).clamp_min_(-87.0))   # exp is ~100x slower below -87
            scale = torch.exp(m_run - m_new)
            num = num * scale + (v.T @ w.T).T
            den = den * scale + w.sum(1, keepdim=True)
            m_run = m_new
        out[:, :, pos] = (num / den).reshape(B, n, C).permute(0, 2, 1)
    return out.reshape(B, C, H, W)


def timed(fn, repeat=1):
    """``(output, best wall time of repeat calls)``."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def pairs(x, data, k):
    """(query, candidate) pairs of the plain machine: sum over position classes of (B n) (N n)."""
    return sum(len(x) * len(data) * len(pos) ** 2 for pos in padding_classes(*x.shape[2:], k))


def needed_fraction(x, data, sigma, k, tol, n_query=256):
    """Fraction of (query, candidate) pairs of the largest position class whose log-weight is within
    log(C/tol) of the query's best (float64; on ``n_query`` of its queries): what exact pruning must keep."""
    d = k // 2
    pos = max(padding_classes(*x.shape[2:], k), key=len)
    q, y = (F.unfold(F.pad(t.double(), (d, d, d, d)), k)[:, :, pos].permute(0, 2, 1).reshape(-1, k * k)
            for t in (x, data))
    q = q[torch.randperm(len(q), generator=torch.Generator().manual_seed(1))[:n_query]]
    logw = -torch.cdist(q, y).pow(2) / (2 * sigma**2)
    cut = torch.log(torch.tensor(len(y) / tol, dtype=torch.float64))
    return (logw >= logw.amax(1, keepdim=True) - cut).double().mean().item()


def flops_per_pair(C, k):
    """FLOPs of one (query, candidate) pair: ``2(P + 3)`` for the logit, ``2(C + 1)`` for the sums."""
    return 2 * (C * k * k + 3) + 2 * (C + 1)


def full_profile_estimate(cpu_flops, n_train=50_000, size=32, tflops=10.0, exps_per_s=4e12):
    """An estimate (no GPU measured) of the time per sample and sampler step of the full profile.

    Pairs per sample and step: ``n_train * sum over position classes of n^2`` (zero padding, no
    deduplication or pruning: the cost at high noise, where nothing can be skipped), FLOPs per pair
    from :func:`flops_per_pair` plus one exp. The GPU rate is an assumption (``tflops`` sustained
    float32 on these thin products, ``exps_per_s``); the CPU time extrapolates ``cpu_flops``, the
    rate (FLOP/s, exps included in the time) measured for the machine without pruning.
    """
    print(f"full profile estimate, per sample and step ({size}x{size}, N = {n_train:,}; GPU assumed "
          f"{tflops:g} TFLOP/s and {exps_per_s:.0e} exp/s; one CPU thread at the measured "
          f"{cpu_flops / 1e9:.1f} GFLOP/s):")
    for name, C in (("MNIST", 1), ("CIFAR-10", 3)):
        for k in (3, 5, 7):
            pairs = n_train * sum(g.shape[0] * g.shape[1] ** 2
                                  for g in els.position_classes("els", "zeros", size, size, k))
            flops = pairs * flops_per_pair(C, k)
            gpu = flops / (tflops * 1e12) + pairs / exps_per_s
            print(f"{name:>9} k={k}: {pairs:.2e} pairs, {flops:.2e} FLOP; GPU ~{gpu:.2f} s, "
                  f"CPU ~{flops / cpu_flops:.0f} s")


def main(quick=False, repeat=3):
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    sets = {"digits 8x8": cp.data.digits()[0][:1000], "digits 16x16": recipes.digits16(16, 1000)[0]}
    sigmas = (2.0, 0.5, 0.1) if quick else (2.0, 0.5, 0.1, 0.02)
    n_query = 8 if quick else 32
    print(f"ELS, zero padding, {n_query} queries vs 1000 training images, float32, "
          f"{torch.get_num_threads()} thread(s), best of {repeat}; times in seconds")
    print(f"{'data':>12} {'k':>1} {'sigma':>5} {'batched':>7} {'els 1st':>7} {'els':>6} {'speed-up':>8} "
          f"{'max|diff|':>9} {'base err':>8} {'els err':>8} {'needed':>6}")
    totals = {}
    for name, data in sets.items():
        g = torch.Generator().manual_seed(0)
        x0 = data[torch.randperm(len(data), generator=g)[:n_query]]
        for k in (3, 5):
            machine = els.equivariant_local(data, k)
            exact = els.equivariant_local(data.double(), k, bank_min=float("inf"))
            first = True
            for sigma in sigmas:
                x = x0 + sigma * torch.randn(x0.shape, generator=g)
                base, t_base = timed(lambda: batched_els(x, data, sigma, k), repeat)
                fast, t_first = timed(lambda: machine(x, sigma))
                if not first:
                    t_first = float("nan")
                fast, t_fast = timed(lambda: machine(x, sigma), repeat)
                first = False
                ref = exact(x.double(), sigma)
                diff = (fast - base).abs().max().item()
                e_base, e_fast = ((base.double() - ref).abs().max().item(), (fast.double() - ref).abs().max().item())
                need = needed_fraction(x, data, sigma, k, machine.tol)
                if sigma == sigmas[0]:                 # nothing pruned: FLOP rate of the last set
                    cpu_flops = pairs(x, data, k) * flops_per_pair(data.shape[1], k) / t_fast
                tot = totals.setdefault((name, k), [0.0, 0.0])
                tot[0] += t_base
                tot[1] += t_fast
                print(f"{name:>12} {k:>1} {sigma:>5.2g} {t_base:>7.3f} {t_first:>7.3f} {t_fast:>6.3f} "
                      f"{t_base / t_fast:>7.1f}x {diff:>9.1e} {e_base:>8.1e} {e_fast:>8.1e} {need:>6.3f}", flush=True)
    print("over all sigma levels (steady state):")
    for (name, k), (tb, tf) in totals.items():
        per = tf / (len(sigmas) * n_query)
        print(f"{name:>12} {k}: batched {tb:.2f} s, els {tf:.2f} s, speed-up {tb / tf:.1f}x; "
              f"els per image and step {per * 1e3:.1f} ms")
    full_profile_estimate(cpu_flops)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 queries and 3 noise levels")
    parser.add_argument("--repeat", type=int, default=3, help="time each call this many times (best)")
    args = parser.parse_args()
    main(args.quick, args.repeat)
