"""Speed of the ELS machine (companion.els) against the authors' batched formulation.

Baseline (written from Kamb & Ganguli 2025, eq. 3, in the way their code evaluates it): for every class of
positions with the same zero-padding pattern, every query patch is compared with the *whole bank* of training
patches at the positions of that class, with batched tensor operations: the logits
-(|q|^2 - 2 q.y + |y|^2)/2 sigma^2 of all pairs by one matrix product per batch of 64 training images (unfold),
a softmax streamed over the batches with a running maximum, and the weighted centre values by a second matrix
product. No deduplication, no pruning.

``companion.els`` (default ``tol = 1e-7``) deduplicates identical patches and skips the candidates outside a window
in one projection whose total weight is provably below tol times the normalizer (companion/_els_bank.py). Both run in float32 on one thread on the same
inputs: 32 noisy queries, 1,000 training images, k = 3 and 5, zero padding, for the 8x8 digits and for the
digits upsampled to 16x16 (companion.training.digits16). The machine is timed twice: the first call includes
building its patch banks (done once per patch size and reused by every later call, e.g. along a sampler's
trajectory), the second is a steady-state call. The outputs are compared with a float64 evaluation of the plain
machine (``bank_min=inf``), which is exact up to float64 rounding.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/els_speed.py [--quick]``.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

import companion as cp
from companion import els, training


def padding_classes(H, W, k):
    """Flat positions grouped by their zero-padding pattern (rows/columns padded on each side)."""
    d = k // 2
    key = lambda i, n: (max(0, d - i), max(0, i + d - n + 1))  # noqa: E731
    groups = {}
    for i in range(H):
        for j in range(W):
            groups.setdefault((key(i, H), key(j, W)), []).append(i * W + j)
    return [torch.tensor(g) for g in groups.values()]


def batched_els(x, data, sigma, k, batch=64):
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
        for a in range(0, len(data), batch):
            imgs = data[a:a + batch]
            y = F.unfold(F.pad(imgs, (d, d, d, d)), k)[:, :, pos].permute(0, 2, 1).reshape(-1, q.shape[1])
            v = imgs.reshape(len(imgs), C, H * W)[:, :, pos].permute(0, 2, 1).reshape(-1, C)
            logit = -(qn - 2 * q @ y.T + (y**2).sum(1)) / (2 * sigma**2)
            m_new = torch.maximum(m_run, logit.amax(1, keepdim=True))
            w = torch.exp(logit - m_new)
            scale = torch.exp(m_run - m_new)
            num = num * scale + w @ v
            den = den * scale + w.sum(1, keepdim=True)
            m_run = m_new
        out[:, :, pos] = (num / den).reshape(B, n, C).permute(0, 2, 1)
    return out.reshape(B, C, H, W)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main(quick=False):
    torch.set_num_threads(1)
    sets = {"digits 8x8": cp.data.digits()[0][:1000], "digits 16x16": training.digits16(16, 1000)[0]}
    sigmas = (2.0, 0.5, 0.1) if quick else (2.0, 0.5, 0.1, 0.02)
    n_query = 8 if quick else 32
    print(f"ELS, zero padding, {n_query} queries vs 1000 training images, float32, "
          f"{torch.get_num_threads()} thread(s); times in seconds")
    print(f"{'data':>13} {'k':>2} {'sigma':>6} {'batched':>8} {'els 1st':>8} {'els':>7} {'speed-up':>9} "
          f"{'max|diff|':>10} {'base err':>9} {'els err':>8}")
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
                base, t_base = timed(lambda: batched_els(x, data, sigma, k))
                fast, t_first = timed(lambda: machine(x, sigma))
                if not first:
                    t_first = float("nan")
                fast, t_fast = timed(lambda: machine(x, sigma))
                first = False
                ref = exact(x.double(), sigma)
                diff = (fast - base).abs().max().item()
                e_base, e_fast = ((base.double() - ref).abs().max().item(), (fast.double() - ref).abs().max().item())
                tot = totals.setdefault((name, k), [0.0, 0.0])
                tot[0] += t_base
                tot[1] += t_fast
                print(f"{name:>13} {k:>2} {sigma:>6.2g} {t_base:>8.3f} {t_first:>8.3f} {t_fast:>7.3f} "
                      f"{t_base / t_fast:>8.1f}x {diff:>10.1e} {e_base:>9.1e} {e_fast:>8.1e}")
    print("over all sigma levels (steady state):")
    for (name, k), (tb, tf) in totals.items():
        per = tf / (len(sigmas) * n_query)
        print(f"{name:>13} {k:>2}: batched {tb:.2f} s, els {tf:.2f} s, speed-up {tb / tf:.1f}x; "
              f"els per image and step {per * 1e3:.0f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 queries and 3 noise levels")
    main(parser.parse_args().quick)
