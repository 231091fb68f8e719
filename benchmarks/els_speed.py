"""Speed of the ELS machine (companion.els) against a straightforward per-pixel reference.

The reference loops over the query images and pixels in Python; for each pixel it compares the
pixel's k×k patch with every allowed training patch (vectorized over the candidates), takes the
softmax of −‖Δ‖²/2σ² and averages the candidates' centre pixels. Both run on the same inputs (eight
noisy 8×8 digits; K = 1797 training digits) and are timed in float32. Their outputs are compared in float64,
where both are exact up to rounding, and must agree to 1e-4 (in float32 both carry rounding errors of up to a
few 1e-4 from softmaxes over ~10⁵ candidates; these are printed too). Then the script times ELS sampling of 16
digits with 20 DDIM steps.

Run: ``.venv/bin/python benchmarks/els_speed.py`` (a few minutes on 2 CPU cores).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

import companion as cp
from companion import els


def reference_els(x, data, sigma, k, padding="zeros"):
    """Per-pixel ELS: a Python loop over images and pixels, vectorized over candidate patches."""
    B, C, H, W = x.shape
    d = k // 2
    mode = "circular" if padding == "circular" else "constant"
    pad = lambda t: F.pad(t, (d, d, d, d), mode=mode)  # noqa: E731
    cand = F.unfold(pad(data), k).permute(0, 2, 1)               # (K, H·W, P)
    centres = data.reshape(data.shape[0], C, H * W).permute(0, 2, 1)  # (K, H·W, C)
    # the padding pattern of each position: (rows padded above, below, columns left, right)
    key = [(max(0, d - i), max(0, i + d - H + 1), max(0, d - j), max(0, j + d - W + 1))
           for i in range(H) for j in range(W)]
    out = torch.empty_like(x)
    query = F.unfold(pad(x), k).permute(0, 2, 1)                 # (B, H·W, P)
    for b in range(B):
        for pos in range(H * W):
            if padding == "circular":
                allowed = list(range(H * W))
            else:
                allowed = [p for p in range(H * W) if key[p] == key[pos]]
            y = cand[:, allowed].reshape(-1, cand.shape[-1])
            logw = -((query[b, pos] - y) ** 2).sum(1) / (2 * sigma**2)
            w = torch.softmax(logw, 0)
            out[b, :, pos // W, pos % W] = w @ centres[:, allowed].reshape(-1, C)
    return out


def timed(fn, repeat=1):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def main():
    torch.manual_seed(0)
    data, _ = cp.data.digits()
    x0 = data[torch.randperm(len(data))[:8]]
    rows = []
    for padding in ("zeros", "circular"):
        for k in (3, 5):
            sigma = 0.5
            x = x0 + sigma * torch.randn_like(x0)
            machine = els.equivariant_local(data, k, padding)
            fast, t_fast = timed(lambda: machine(x, sigma), repeat=3)
            ref, t_ref = timed(lambda: reference_els(x, data, sigma, k, padding))
            # equality in float64 (both exact up to rounding), on the first two images
            f64 = els.equivariant_local(data.double(), k, padding)(x[:2].double(), sigma)
            r64 = reference_els(x[:2].double(), data.double(), sigma, k, padding)
            err64 = (f64 - r64).abs().max().item()
            assert err64 < 1e-4, f"outputs differ by {err64:.2e}"
            # float32 rounding of each implementation against the float64 result
            e_fast, e_ref = ((fast[:2].double() - r64).abs().max().item(), (ref[:2].double() - r64).abs().max().item())
            rows.append((padding, k, t_ref, t_fast, t_ref / t_fast, err64, e_ref, e_fast))
    print(f"ELS machine vs per-pixel reference: {len(x0)} noisy digits (σ = 0.5), K = {len(data)} training digits, "
          f"float32, {torch.get_num_threads()} threads")
    print(f"{'padding':>9} {'k':>2} {'reference s':>12} {'els s':>8} {'speed-up':>9} "
          f"{'|els-ref| f64':>14} {'ref f32 err':>12} {'els f32 err':>12}")
    for p, k, tr, tf, su, e, er, ef in rows:
        print(f"{p:>9} {k:>2} {tr:>12.2f} {tf:>8.3f} {su:>8.0f}x {e:>14.1e} {er:>12.1e} {ef:>12.1e}")

    sigmas = cp.samplers.loglinear(20, 0.01, 10.0)
    schedule = els.LocalitySchedule(sigmas[:-1], [5 if s > 0.5 else 3 for s in sigmas[:-1].tolist()])
    machine = els.equivariant_local(data, schedule)
    noise = sigmas[0] * torch.randn(16, 1, 8, 8)
    _, t = timed(lambda: cp.samplers.sample(machine, sigmas, noise))
    print(f"ELS sampling (zero padding, k = 5 then 3), 16 digits, 20 steps: {t:.1f} s")


if __name__ == "__main__":
    main()
