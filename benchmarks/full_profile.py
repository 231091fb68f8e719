"""Peak memory and time of every chapter's *full* profile, measured on this CPU or extrapolated.

No GPU is used or needed. Two kinds of measurement, chosen per chapter in ``PLAN``:

* ``notebook``: the chapter's notebook is executed whole with ``COMPANION_PROFILE=full`` on this
  CPU (one thread, ``--budget`` seconds of wall time at most); we record the kernel's CPU time
  (from ``/proc``: the machine's other jobs inflate it little) and its peak resident memory
  (``VmHWM``). These chapters compute on the CPU in both profiles (float64 ground truth, tiny
  networks), so a Colab GPU runtime runs them at about the same speed: their "T4" time is this CPU
  time (an assumption: a Colab CPU core is about as fast as one here). A chapter stopped by the
  budget is reported with lower bounds ("at least"): the CPU time and memory used until then.
* ``training``: the chapter's full branch is dominated by training networks on the GPU. We count the
  FLOPs of one training step at full size (``torch.utils.flop_counter``: convolutions and matrix
  products, forward and backward) and its tensor operations on the ``meta`` device (nothing is
  computed), time one step at 1/4 of the batch on this CPU and measure the peak resident memory of
  a subprocess at 1/8 and 1/4 of the batch, and extrapolate linearly to the full batch and number
  of steps. The T4 time is an ESTIMATE, not a measurement: FLOPs / ``T4_FLOPS`` (an assumed
  sustained 4 TFLOP/s in float32, half the T4's 8.1 TFLOP/s peak) plus the number of tensor
  operations of a step (counted here; about one GPU kernel each) × ``T4_LAUNCH_S`` (10 µs assumed).

Usage (minutes to an hour per chapter on a shared machine; the results go to
``companion/results/full_profile.json``, written atomically, merged with the chapters there)::

    OMP_NUM_THREADS=1 python benchmarks/full_profile.py [CHAPTER ...] [--budget 540]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "companion" / "results" / "full_profile.json"
#: assumed sustained float32 throughput of a T4 for the training steps (peak 8.1 TFLOP/s)
T4_FLOPS = 4e12
#: assumed cost of one GPU kernel launch (small networks are launch-bound, not FLOP-bound)
T4_LAUNCH_S = 10e-6


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20   # kB -> GB (Linux)


# ---------------------------------------------------------------- notebook: the whole chapter on CPU
def _peak_rss_gb(pid: int) -> float:
    """Peak resident memory so far of process ``pid`` (Linux ``VmHWM``), in GB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    raise RuntimeError(f"no VmHWM for process {pid}")


def _cpu_s(pid: int) -> float:
    """CPU time (user + system, its children included) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def run_notebook(chapter: str, budget: int) -> dict:
    """Execute ``book/<chapter>.ipynb`` in the full profile: the kernel's CPU time and peak RSS.

    CPU time, not wall time: the shared machine's other jobs then inflate the result little. The
    run stops when ``budget`` seconds of wall time are spent; its time and memory are then lower
    bounds ("at least"), measured up to that point."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(ROOT / "book" / f"{chapter}.ipynb", as_version=4)
    os.environ.update(COMPANION_PROFILE="full", TQDM_DISABLE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1",
                      PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    row = dict(chapter=chapter, kind="notebook", where="CPU (the chapter's own cells)")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COMPANION_CACHE"] = tmp
        client = NotebookClient(nb, timeout=budget, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "book")}})
        with client.setup_kernel():
            pid, deadline, finished = client.km.provisioner.process.pid, time.time() + budget, True
            try:
                for index, cell in enumerate(nb.cells):
                    client.timeout = max(1, int(deadline - time.time()))
                    client.execute_cell(cell, index)
            except CellTimeoutError:
                finished = False
            except CellExecutionError as exc:   # a full branch that fails: say so, go on
                row["error"] = f"cell {index}: {str(exc).strip().splitlines()[-1][:200]}"
                finished = False
            seconds, peak = _cpu_s(pid), _peak_rss_gb(pid)
    bound = "" if finished else "at least (stopped by the time limit) "
    row.update(finished=finished, cpu_s=round(seconds), peak_gb=round(peak, 2),
               memory=f"measured {bound}(peak RSS of the kernel)", t4_s=round(seconds),
               t4_how=f"{bound}the CPU time: these cells run on the CPU (Colab's CPU assumed as fast)")
    return row


# ---------------------------------------------------------------- training: FLOPs and time per step
def _ch6_nets():
    """Chapter 6's full profile: both architectures, trained at batch 256 on 32×32×1 MNIST."""
    import companion as cp

    archs = [cp.nets.ResNet(channels=1, width=128, depth=4, kernel=3),
             cp.nets.UNet(channels=1, base=64, mults=(1, 2, 2))]
    return [(cp.nets.Denoiser(a, target="v", sigma_data=0.5), 32, True) for a in archs]


def _ch7_nets():
    """Chapter 7's full profile: every recipe's blind U-Net at 32×32 (the digits recipes at 8×8)."""
    import companion as cp

    return [(cp.nets.BiasFreeUNet(1, 16, 3, 2), 8 if "digits" in name else 32, False)
            for name in sorted(cp.gahb.CONFIGS)]


TRAINING = {
    "06_creativity_els": dict(nets=_ch6_nets, batch=256, steps=40_000,
                              what="2 networks × 40,000 steps, batch 256, 32×32 MNIST"),
    "07_gahb": dict(nets=_ch7_nets, batch=64, steps=20_000,
                    what="22 blind U-Nets × 20,000 steps, batch 64, 32×32 (digits 8×8)"),
}


def _step(chapter: str, batch: int, device: str):
    """One training step of every network of ``chapter`` at batch ``batch`` on ``device``.

    The loss is the squared error of the denoised image (the cost of the chapters' losses up to a
    few elementwise operations); random images stand in for the data."""
    import torch

    nets = [(net.to(device), side, conditioned) for net, side, conditioned in TRAINING[chapter]["nets"]()]
    opts = [torch.optim.Adam(net.parameters(), lr=1e-3, foreach=True) for net, _, _ in nets]

    def step():
        for (net, side, conditioned), opt in zip(nets, opts):
            x = torch.rand(batch, 1, side, side, device=device)
            sigma = torch.rand(batch, device=device) + 0.01
            y = x + sigma[:, None, None, None] * torch.randn_like(x)
            loss = ((net(y, sigma) if conditioned else net(y)) - x).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return step


class _OpCounter:
    """Counts the tensor operations (aten calls) dispatched inside the ``with`` block."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter.n += 1
                return func(*args, **(kwargs or {}))

        self.n, self._mode = 0, Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def _measure_training(chapter: str) -> dict:
    """FLOPs and operations of a full-size step (counted on the ``meta`` device: nothing computed),
    CPU time and peak RSS at 1/8 and 1/4 of the batch (measured), extrapolated to the full batch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    batch = TRAINING[chapter]["batch"]
    step = _step(chapter, batch, "meta")
    step()
    with FlopCounterMode(display=False) as counter, _OpCounter() as ops:
        step()
    seconds, rss = {}, {}
    for frac in (8, 4):
        small = _step(chapter, batch // frac, "cpu")
        small()                                     # warm-up
        start = time.time()
        small()
        seconds[frac], rss[frac] = time.time() - start, _rss_gb()
        del small                                   # its networks: freed before the next size
        gc.collect()
    slope = (rss[4] - rss[8]) / (batch // 4 - batch // 8)   # GB per image of the batch
    return dict(flops=counter.get_total_flops(), ops=ops.n, s_per_step=seconds[4] * 4,
                peak_gb=rss[8] + slope * (batch - batch // 8))


def run_training(chapter: str) -> dict:
    """FLOPs, CPU time and peak memory of the full training (in a subprocess: its own peak RSS)."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r});"
            f"import full_profile as F; print('RESULT', json.dumps(F._measure_training({chapter!r})))")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    m = json.loads(out.stdout.split("RESULT", 1)[1])
    spec = TRAINING[chapter]
    total = m["flops"] * spec["steps"]
    launch = m["ops"] * spec["steps"] * T4_LAUNCH_S
    return dict(chapter=chapter, kind="training", what=spec["what"], finished=False,
                where="GPU (training)", peak_gb=round(m["peak_gb"], 2),
                memory=("measured at 1/8 and 1/4 of the batch, extrapolated linearly to the full "
                        "batch (CPU RSS; the GPU holds about the same tensors)"),
                flops=total, cpu_s=round(m["s_per_step"] * spec["steps"]),
                cpu_how=(f"one step at 1/4 of the batch timed ({m['s_per_step'] / 4:.2f} s), "
                         f"× 4 × {spec['steps']:,} steps"),
                t4_s=round(total / T4_FLOPS + launch),
                t4_how=(f"ESTIMATE: {total / 1e15:.1f} PFLOP at {T4_FLOPS / 1e12:.0f} TFLOP/s + "
                        f"{m['ops']:,} ops a step at {T4_LAUNCH_S * 1e6:.0f} µs, assumed"))


PLAN = {"01_forward_sdes": "notebook", "02_fokker_planck": "notebook", "03_score_estimation": "notebook",
        "04_likelihood": "notebook", "05_high_density": "notebook", "06_creativity_els": "training",
        "07_gahb": "training", "08_projection_sampling": "notebook"}


def save(rows: dict, path: Path = OUT) -> Path:
    """Write the table atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("chapters", nargs="*", default=list(PLAN))
    parser.add_argument("--budget", type=int, default=540, help="wall-clock seconds per notebook")
    args = parser.parse_args(argv)
    for chapter in args.chapters:
        row = run_notebook(chapter, args.budget) if PLAN[chapter] == "notebook" else run_training(chapter)
        row["measured_on"] = time.strftime("%Y-%m-%d")
        rows = json.loads(OUT.read_text()) if OUT.exists() else {}   # merged with the others
        rows[chapter] = row
        save(rows)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
