"""Speed of companion.jacobian.jacobian (batched VJPs) against the one-backward-per-pixel loop.

Both compute the full d×d Jacobian of the same bias-free U-Net (``nets.BiasFreeUNet()``, the
architecture of Chapter 7, random weights after a few training-mode batches, eval mode) at the same
random inputs, in float32, on one CPU thread. The script checks that they agree to 1e-5 (max absolute
difference) and prints the time of each and the speed-up, at 16×16 and 32×32 (d = 256 and 1024). Times are
process CPU seconds (``time.process_time``, robust to other jobs on a shared machine), after one warm-up call.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/jacobian.py`` (about a minute on an idle core).
"""
from __future__ import annotations

import time

import torch

from companion import jacobian as jac, nets


def bench(size: int, batch: int = 1, chunk_size: int = 128):
    torch.manual_seed(0)
    net = nets.BiasFreeUNet()
    with torch.no_grad():
        for _ in range(3):
            net(torch.rand(8, 1, size, size))
    net.eval()
    y = torch.rand(batch, 1, size, size)
    jac.jacobian(net, y, chunk_size=chunk_size)  # warm-up (torch.func's first call)
    t0 = time.process_time()
    fast = jac.jacobian(net, y, chunk_size=chunk_size)
    t1 = time.process_time()
    slow = jac.jacobian_loop(net, y)
    t2 = time.process_time()
    err = (fast - slow).abs().max().item()
    return t1 - t0, t2 - t1, err


def main():
    torch.set_num_threads(1)
    print(f"{'image':>7} {'d':>6} {'batched VJP s':>14} {'loop s':>9} {'speed-up':>9} {'max |diff|':>11}")
    for size in (16, 32):
        fast, slow, err = bench(size)
        print(f"{size:>4}²   {size * size:>6} {fast:>14.2f} {slow:>9.2f} {slow / fast:>8.1f}× {err:>11.1e}")
        assert err < 1e-5, f"Jacobians differ by {err:.2e} at {size}x{size}"


if __name__ == "__main__":
    main()
