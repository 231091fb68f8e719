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
for arguments below -87; the clamp adds at most N e^-87 relative weight). The column "vs exp2" times the same
baseline with its weights taken as 2^(logit log2 e) (torch's float32 exp2: ~1 ulp like exp, ~4x faster on
one thread, no slow path): the machine does this too, and the baseline could take it over unchanged, so the
ratio of the two speed-ups shows how much of ours is that one substitution and how much is deduplication,
skipping and tile shapes.

``companion.els`` (default ``tol = 1e-7``; ``--tol`` sets it) deduplicates identical patches and skips candidates
whose total weight is provably below tol times the normalizer, by k-means clusters with a triangle-inequality
bound or by a window in one projection, whichever is cheaper per call (companion/_els_bank.py). Both
run in float32 on the same inputs and the same number of threads (``--threads``; default: torch's, one per
core, two on this project's CI machine and on Colab; ``--threads 1`` for one), with
denormal numbers flushed to zero (without it the exp of very negative logits slows the baseline down
3-4x at low noise): 32 noisy queries, 1,000 training images,
k = 3 and 5, zero padding, for the 8x8 digits and for the digits upsampled to 16x16
(companion.recipes.digits16). Each time is the best of ``--repeat`` calls, the baseline's and the machine's
taken in turn in each round (:func:`timed_rounds`: a shared machine's speed drifts over minutes), with freed
memory kept for reuse (:func:`keep_freed_memory`: otherwise the baseline's large tiles are faulted in afresh
on every allocation, which slowed it down by 1.5-3x, varying from run to run). The machine is timed twice: the
first call includes building its patch banks (done once per patch size and reused by every later call, e.g.
along a sampler's trajectory), then steady-state calls. The outputs are compared with a float64 evaluation of
the plain machine (``bank_min=inf``), which is exact up to float64 rounding.

"needed" is the fraction of deduplicated (query, candidate) pairs, over all queries and all position classes
(float64), that a method exact to tol must keep: for each query, every candidate except the lightest ones whose
weights sum to at most tol times its normalizer (skipping the lightest first skips the most candidates for a
given mass, so no method that is exact to tol -- ours: the machine's ``tol`` -- can keep fewer).
"ceiling" is the speed-up over the baseline of the machine's own inner loop driven by an oracle: it
evaluates exactly the needed pairs, each at the cost per pair of that loop measured here (:func:`pair_seconds`:
the fused kernel of companion._native -- logits with P + 3 columns, exp2 and weighted sums of a block of pairs
kept in registers -- or, where it cannot be built, torch's two products with exp2 between them), with
no bounds, planning or other overhead. It is the most this design (deduplicate, skip exactly to tol,
evaluate each kept pair by a dot product and exp2) can gain with perfect skipping on this CPU; it is not a bound
for every conceivable method (one that never forms a logit per kept pair, e.g. a series expansion, is not
covered; an earlier version of this benchmark took one float32 exp per pair as the floor, which exp2, at a
quarter of the cost, showed to be no floor at all). At high noise nearly every pair is needed, so the
ceiling is the baseline's cost per pair over the loop's; ``needed`` falls steeply with sigma. "ceil@5e-5" is
the same ceiling for tol = 5e-5, the loosest tol whose guarantee (2 tol max|x0| with max|x0| = 1) still meets
the issue's 1e-4. "needed" and the ceilings are estimated on 256 queries of each position class (a fixed
random subset).

The trajectory rows repeat the measurement along the noise levels Chapter 6's quick profile samples at
(``samplers.loglinear(12, 0.01, 10.0)``, 12 calls), with the queries at each level approximated by
x0 + sigma eps, at a fixed patch size: total times over the 12 calls, and the ceiling of the totals.

With two threads both use them: the baseline's products, exp and reductions through torch's
thread pool, the machine's torch operations likewise and its kernel by sharing its pairs among threads
(companion._native); planning and bookkeeping stay largely serial, and ``pair_seconds`` is then the
kernel's cost per pair on that many threads.

Run: ``.venv/bin/python benchmarks/els_speed.py [--quick] [--threads N] [--repeat R]``.
"""
from __future__ import annotations

import argparse
import ctypes
import math
import time

import torch
import torch.nn.functional as F

import companion as cp
from companion import _native, els, recipes, samplers

LOG2E = 1 / math.log(2)


def padding_classes(H, W, k):
    """Flat positions grouped by their zero-padding pattern (rows/columns padded on each side)."""
    d = k // 2
    key = lambda i, n: (max(0, d - i), max(0, i + d - n + 1))  # noqa: E731
    groups = {}
    for i in range(H):
        for j in range(W):
            groups.setdefault((key(i, H), key(j, W)), []).append(i * W + j)
    return [torch.tensor(g) for g in groups.values()]


def batched_els(x, data, sigma, k, tile=2**20, exp2=False):
    """The authors' formulation: each query patch against the whole bank of its class, batched.

    ``exp2=True``: the weights as 2^(logit log2 e) (torch's exp2 is ~4x faster than its exp on one CPU
    thread and has no slow path down to -126), the one change of implementation the machine makes
    that this formulation could take over unchanged."""
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
            if exp2:                                        # logits in log2 units
                logit = -(qn - 2 * q @ y.T + (y**2).sum(1)) * (LOG2E / (2 * sigma**2))
                m_new = torch.maximum(m_run, logit.amax(1, keepdim=True))
                w, scale = torch.exp2(logit - m_new), torch.exp2(m_run - m_new)
            else:
                logit = -(qn - 2 * q @ y.T + (y**2).sum(1)) / (2 * sigma**2)
                m_new = torch.maximum(m_run, logit.amax(1, keepdim=True))
                w = torch.exp((logit - m_new).clamp_min_(-87.0))   # exp is ~100x slower below -87
                scale = torch.exp(m_run - m_new)
            num = num * scale + (v.T @ w.T).T
            den = den * scale + w.sum(1, keepdim=True)
            m_run = m_new
        out[:, :, pos] = (num / den).reshape(B, n, C).permute(0, 2, 1)
    return out.reshape(B, C, H, W)


def keep_freed_memory():
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system: ``True`` if set.

    By default a large buffer (here the baseline's tiles of logits, ~4 MB) is mapped fresh on each allocation and
    unmapped when freed, and its pages are faulted in again every time; how often depends on malloc's adaptive
    threshold, i.e. on what the process allocated before. That made the baseline's time at 8x8 vary 1.5-3x
    between runs of the same call (e.g. 1.75 s against 2.8-4.5 s along the trajectory at k = 3 on one thread)
    and slowed it down; with the thresholds fixed high both contenders reuse their memory. No effect (``False``)
    where the C library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False


def timed(fn, repeat=1):
    """``(output, best wall time of repeat calls)``."""
    (out,), (best,) = timed_rounds([fn], repeat)
    return out, best


def timed_rounds(fns, repeat=1):
    """``(outputs, best wall times)`` of the functions ``fns``, called in turn in each of ``repeat`` rounds.

    Interleaved, so that every function is timed in the same phases of a shared machine (whose speed can
    drift by tens of percent over minutes), and the ratios of the best times compare like with like."""
    outs, best = [None] * len(fns), [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            outs[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return outs, best


def pairs(x, data, k):
    """(query, candidate) pairs of the plain machine: sum over position classes of (B n) (N n)."""
    return sum(len(x) * len(data) * len(pos) ** 2 for pos in padding_classes(*x.shape[2:], k))


def dedup_classes(x, data, k):
    """Per position class: its flat positions and the deduplicated candidates ``(y, log count)``
    (float64; a (patch, centre) pair that occurs c times is one row of weight c)."""
    d = k // 2
    out = []
    for pos in padding_classes(*x.shape[2:], k):
        y = F.unfold(F.pad(data.double(), (d, d, d, d)), k)[:, :, pos]               # (N, P, n)
        v = data.double().flatten(2)[:, :, pos]                                    # (N, C, n)
        rows = torch.cat([y, v], 1).permute(0, 2, 1).reshape(-1, y.shape[1] + v.shape[1])
        rows, counts = torch.unique(rows, dim=0, return_counts=True)
        out.append((pos, rows[:, :y.shape[1]], counts.double().log()))
    return out


def needed_pairs(x, classes, sigma, k, tols, chunk=2**22, max_queries=None):
    """``([needed for each tol], pairs)``: for each query, the fewest deduplicated candidates that must be
    kept so that the skipped ones weigh at most tol times its normalizer (float64, all position classes;
    the lightest candidates are the ones to skip), summed; and all pairs. With ``max_queries``, each
    class counts on that many of its queries (a fixed random subset) and scales up: an estimate."""
    d = k // 2
    qall = F.unfold(F.pad(x.double(), (d, d, d, d)), k)
    need, total = [0.0] * len(tols), 0
    for pos, y, logc in classes:
        q = qall[:, :, pos].permute(0, 2, 1).reshape(-1, y.shape[1])
        n_q = len(q)
        if max_queries is not None and n_q > max_queries:
            q = q[torch.randperm(n_q, generator=torch.Generator().manual_seed(1))[:max_queries]]
        step = max(1, chunk // len(y))
        for a in range(0, len(q), step):
            logw = logc - torch.cdist(q[a:a + step], y).pow(2) / (2 * sigma**2)
            light = (logw - torch.logsumexp(logw, 1, keepdim=True)).exp().sort(1).values.cumsum(1)
            for i, tol in enumerate(tols):               # skip the lightest while their sum is <= tol
                need[i] += int((light > tol).sum()) * n_q / len(q)
        total += n_q * len(y)
    return [round(v) for v in need], total


def pair_seconds(P, rows=2**16, shape=(512, 512), repeat=5):
    """Seconds per (query, candidate) pair of the machine's inner loop on this machine (torch's threads),
    with nothing skipped and no planning, bounds or other overhead: ``shape[0]`` queries against
    ``rows`` candidates, logits with P + 3 columns, their exp2 and the weighted sums ``[v, 1]``. That is
    the fused kernel (companion._native, one segment, fixed shift) when it is available, else torch's
    products ``(n, P + 3) x (P + 3, m)`` in tiles of ``shape`` with exp2 in place in between."""
    g = torch.Generator().manual_seed(0)
    n, m = shape
    lhs, table = torch.randn(n, P + 3, generator=g) / P, torch.randn(rows, P + 3, generator=g) / P
    vals = torch.randn(2, rows, generator=g)
    if _native.load() is not None:
        tab_t = F.pad(table.T, (0, _native.PAD))
        vals_t = F.pad(vals, (0, _native.PAD))

        def loop():
            return _native.softmax_sums(lhs, tab_t, vals_t, [0], [n], [0], [rows], [False], -126.0)
    else:
        def loop():
            acc = torch.zeros(2, n, dtype=torch.float64)
            for a in range(0, rows, m):
                acc += (vals[:, a:a + m] @ (lhs @ table[a:a + m].T).exp2_().T).double()
            return acc
    _, best = timed(loop, repeat)
    return best / (n * rows)


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
          f"{tflops:g} TFLOP/s and {exps_per_s:.0e} exp/s; {torch.get_num_threads()} CPU thread(s) at the measured "
          f"{cpu_flops / 1e9:.1f} GFLOP/s):")
    for name, C in (("MNIST", 1), ("CIFAR-10", 3)):
        for k in (3, 5, 7):
            pairs = n_train * sum(g.shape[0] * g.shape[1] ** 2
                                  for g in els.position_classes("els", "zeros", size, size, k))
            flops = pairs * flops_per_pair(C, k)
            gpu = flops / (tflops * 1e12) + pairs / exps_per_s
            print(f"{name:>9} k={k}: {pairs:.2e} pairs, {flops:.2e} FLOP; GPU ~{gpu:.2f} s, "
                  f"CPU ~{flops / cpu_flops:.0f} s")


def measure(machine, exact, classes, data, x, sigma, k, repeat, t_pair):
    """One (inputs, sigma): baseline and machine times, their errors, needed pairs and the ceiling."""
    (base, _, fast), (t_base, t_base2, t_fast) = timed_rounds(
        [lambda: batched_els(x, data, sigma, k), lambda: batched_els(x, data, sigma, k, exp2=True),
         lambda: machine(x, sigma)], repeat)
    ref = exact(x.double(), sigma)
    (need, need_loose), total = needed_pairs(x, classes, sigma, k, (machine.tol, 5e-5), max_queries=256)
    return dict(base=t_base, base2=t_base2, els=t_fast, diff=(fast - base).abs().max().item(),
                e_base=(base.double() - ref).abs().max().item(),
                e_els=(fast.double() - ref).abs().max().item(),
                need=need, total=total, ideal=need * t_pair, ideal_loose=need_loose * t_pair)


def main(quick=False, repeat=3, tol=1e-7, threads=0):
    reuse = keep_freed_memory()
    if threads > 0:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    sets = {"8x8": cp.data.digits()[0][:1000], "16x16": recipes.digits16(16, 1000)[0]}
    sigmas = (2.0, 0.5, 0.1) if quick else (2.0, 0.5, 0.1, 0.02)
    trajectory = samplers.loglinear(12, 0.01, 10.0, append_zero=False).tolist()
    n_query = 8 if quick else 32
    t_pair = {k: pair_seconds(k * k) for k in (3, 5)}
    print(f"ELS, zero padding, digits, {n_query} queries vs 1000 training images, float32, "
          f"{torch.get_num_threads()} thread(s), best of {repeat}, freed memory "
          f"{'kept for reuse' if reuse else 'returned (not glibc)'}; times in seconds; machine tol {tol:g}; "
          f"inner loop ({'fused kernel' if _native.load() is not None else 'torch: ' + _native.reason}) per pair: "
          + ", ".join(f"k={k} {t * 1e9:.2f} ns" for k, t in t_pair.items()))
    head = (f"{'data':>5} {'k':>1} {'sigma':>5} {'batched':>7} {'els 1st':>7} {'els':>6} {'speed-up':>8} "
            f"{'vs exp2':>7} {'max|diff|':>9} {'base err':>8} {'els err':>7} {'needed':>6} {'ceiling':>7} "
            f"{'ceil@5e-5':>9}")
    print(head)
    totals, paths = {}, {}
    for name, data in sets.items():
        g = torch.Generator().manual_seed(0)
        x0 = data[torch.randperm(len(data), generator=g)[:n_query]]
        for k in (3, 5):
            machine = els.equivariant_local(data, k, tol=tol)
            exact = els.equivariant_local(data.double(), k, bank_min=float("inf"))
            classes = dedup_classes(x0, data, k)
            _, t_first = timed(lambda: machine(x0 + sigmas[0] * torch.randn(x0.shape, generator=g), sigmas[0]))
            for sigma in sigmas:
                x = x0 + sigma * torch.randn(x0.shape, generator=g)
                r = measure(machine, exact, classes, data, x, sigma, k, repeat, t_pair[k])
                if sigma == sigmas[0]:                 # nothing pruned: FLOP rate of the last set
                    cpu_flops = pairs(x, data, k) * flops_per_pair(data.shape[1], k) / r["els"]
                tot = totals.setdefault((name, k), [0.0, 0.0, 0.0])
                for i, key in enumerate(("base", "base2", "els")):
                    tot[i] += r[key]
                first = f"{t_first:>7.3f}" if sigma == sigmas[0] else f"{'':>7}"
                print(f"{name:>5} {k:>1} {sigma:>5.2g} {r['base']:>7.3f} {first} {r['els']:>6.3f} "
                      f"{r['base'] / r['els']:>7.1f}x {r['base2'] / r['els']:>6.1f}x {r['diff']:>9.1e} "
                      f"{r['e_base']:>8.1e} {r['e_els']:>7.1e} {r['need'] / r['total']:>6.4f} "
                      f"{r['base'] / r['ideal']:>6.0f}x {r['base'] / r['ideal_loose']:>8.0f}x", flush=True)
            if not quick:
                path = paths.setdefault((name, k), [0.0] * 6)
                for sigma in trajectory:
                    x = x0 + sigma * torch.randn(x0.shape, generator=g)
                    r = measure(machine, exact, classes, data, x, sigma, k, repeat, t_pair[k])
                    for i, key in enumerate(("base", "base2", "els", "ideal", "ideal_loose")):
                        path[i] += r[key]
                    path[5] = max(path[5], r["diff"])
    print("over all sigma levels of the table (steady state):")
    for (name, k), (tb, tb2, tf) in totals.items():
        per = tf / (len(sigmas) * n_query)
        print(f"{name:>5} k={k}: batched {tb:.2f} s (exp2: {tb2:.2f} s), els {tf:.2f} s, speed-up {tb / tf:.1f}x "
              f"(vs exp2: {tb2 / tf:.1f}x); els per image and step {per * 1e3:.1f} ms")
    if paths:
        print(f"along Chapter 6's quick trajectory (12 levels, sigma {trajectory[0]:g} to {trajectory[-1]:g}; "
              "totals of the 12 calls):")
        for (name, k), (tb, tb2, tf, ti, tl, diff) in paths.items():
            print(f"{name:>5} k={k}: batched {tb:.2f} s (exp2: {tb2:.2f} s), els {tf:.2f} s, speed-up "
                  f"{tb / tf:.1f}x (vs exp2: {tb2 / tf:.1f}x), ceiling {tb / ti:.1f}x, ceil@5e-5 {tb / tl:.1f}x, "
                  f"max|diff| {diff:.1e}")
    full_profile_estimate(cpu_flops)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="8 queries and 3 noise levels")
    parser.add_argument("--repeat", type=int, default=3, help="time each call this many times (best)")
    parser.add_argument("--tol", type=float, default=1e-7, help="the machine's tol")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both (torch and the kernel); 0: torch's default, one per core")
    args = parser.parse_args()
    main(args.quick, args.repeat, args.tol, args.threads)
