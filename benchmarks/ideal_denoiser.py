"""Time and memory of the ideal denoiser on MNIST-sized data: 60,000 × 784 random points, batch 256 (CPU).

Each chunk size runs in a fresh subprocess. Columns: seconds per call (median of ``--repeats``); the
resident memory (RSS) after the denoiser was built and the input data freed (the denoiser's centred copy
of the data plus torch itself); the extra RSS during the calls (sampled every millisecond by a thread:
the work space of a call); the documented work-space estimate ``B·chunk + B·D + chunk·D`` float32 numbers
(logits/weights, running sum, and a packed copy of a data chunk that the matrix product may make);
and the process's peak RSS (``ru_maxrss``, which includes building the data: the input and the centred
copy coexist briefly). Timings depend on the machine's load; the table is printed, never asserted.

Usage: ``python benchmarks/ideal_denoiser.py [--n 60000] [--dim 784] [--batch 256] [--repeats 3]
[--chunks 2048 8192 16384 60000] [--threads N]``
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import threading
import time


def rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """Current resident set size in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


class RSSSampler(threading.Thread):
    """Samples the current RSS every millisecond and keeps the maximum (the peak during a block of code)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self._done = current_rss_mb(), threading.Event()

    def run(self):
        while not self._done.is_set():
            self.peak = max(self.peak, current_rss_mb())
            time.sleep(0.001)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self.join()
        self.peak = max(self.peak, current_rss_mb())


def child(args) -> dict:
    import torch

    from companion.denoisers import IdealDenoiser

    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    data = torch.rand(args.n, args.dim, generator=g).mul_(2).sub_(1)
    x = data[: args.batch] + 0.5 * torch.randn(args.batch, args.dim, generator=g)
    D = IdealDenoiser(data, chunk_size=args.chunk)  # keeps its own (centred) copy of the data
    del data
    base = current_rss_mb()
    times = []
    with RSSSampler() as rss:
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = D(x, 0.5)
            times.append(time.perf_counter() - t0)
    assert torch.isfinite(out).all()
    return dict(chunk=args.chunk, seconds=statistics.median(times), peak_mb=rss_mb(), base_mb=base,
                work_mb=rss.peak - base,
                bound_mb=((args.batch + args.dim) * min(args.chunk, args.n) + args.batch * args.dim) * 4 / 2**20,
                data_mb=args.n * args.dim * 4 / 2**20, threads=torch.get_num_threads())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=60000)
    p.add_argument("--dim", type=int, default=784)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunks", type=int, nargs="+", default=[2048, 8192, 16384, 60000])
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--chunk", type=int, default=None, help=argparse.SUPPRESS)  # child mode
    args = p.parse_args(argv)
    if args.chunk is not None:
        print(json.dumps(child(args)))
        return
    import torch

    print(f"ideal denoiser: data {args.n} x {args.dim} float32 ({args.n * args.dim * 4 / 2**20:.0f} MiB), "
          f"batch {args.batch}, torch {torch.__version__}, CPU")
    print(f"{'chunk':>7} {'s/call':>8} {'RSS after build MiB':>19} {'work MiB':>8} {'estimate MiB':>12}"
          f" {'process peak MiB':>16}")
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--chunk", str(chunk), "--n", str(args.n), "--dim", str(args.dim),
               "--batch", str(args.batch), "--repeats", str(args.repeats), "--threads", str(args.threads)]
        r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
        print(f"{r['chunk']:>7} {r['seconds']:>8.2f} {r['base_mb']:>19.0f} {r['work_mb']:>8.1f} {r['bound_mb']:>12.1f}"
              f" {r['peak_mb']:>16.0f}")
    print(f"(torch threads: {r['threads']})")


if __name__ == "__main__":
    main()
