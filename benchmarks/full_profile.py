"""Peak memory and time of every chapter's *full* profile, measured on this CPU or extrapolated.

No GPU is used or needed. Two kinds of measurement, chosen per chapter in ``PLAN``:

* ``notebook``: the chapter's notebook is executed whole with ``COMPANION_PROFILE=full`` on this
  CPU (one thread, ``--timeout`` seconds at most); we record its wall time and the peak resident
  memory of the kernel (``resource.getrusage``). These chapters compute on the CPU in both profiles
  (float64 ground truth, tiny networks), so a Colab GPU runtime runs them at about the same speed:
  their "T4" time is this CPU time (an assumption: Colab's 2 vCPUs are about as fast as a core here).
  A chapter that does not finish in time is reported as "more than" the timeout.
* ``training``: the chapter's full branch is dominated by training networks on the GPU. We count the
  FLOPs of one training step at full size (``torch.utils.flop_counter``: convolutions and matrix
  products, forward and backward), time a few steps on this CPU, measure the peak resident memory of
  a subprocess that builds the full data set and takes those steps, and extrapolate to the full
  number of steps. The T4 time is an ESTIMATE, not a measurement: FLOPs / ``T4_FLOPS`` (an assumed
  sustained 4 TFLOP/s in float32, half the T4's 8.1 TFLOP/s peak) plus the number of tensor
  operations of a step (counted here; about one GPU kernel each) × ``T4_LAUNCH_S`` (10 µs assumed).

Usage (a few minutes per chapter; the results go to ``companion/results/full_profile.json``, written
atomically, and are merged with the chapters already there)::

    OMP_NUM_THREADS=1 python benchmarks/full_profile.py [CHAPTER ...] [--timeout 540]
"""
from __future__ import annotations

import argparse
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


def run_notebook(chapter: str, timeout: int) -> dict:
    """Execute ``book/<chapter>.ipynb`` in the full profile: wall time and the kernel's peak RSS.

    A cell that runs longer than ``timeout`` seconds stops the run: the time and memory are then
    lower bounds ("more than"), measured up to that point."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError

    nb = nbformat.read(ROOT / "book" / f"{chapter}.ipynb", as_version=4)
    os.environ.update(COMPANION_PROFILE="full", TQDM_DISABLE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1",
                      PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    row = dict(chapter=chapter, kind="notebook", where="CPU (the chapter's own cells)")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["COMPANION_CACHE"] = tmp
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(ROOT / "book")}})
        with client.setup_kernel():
            pid, start, finished = client.km.provisioner.process.pid, time.time(), True
            try:
                for index, cell in enumerate(nb.cells):
                    client.execute_cell(cell, index)
            except CellTimeoutError:
                finished = False
            seconds, peak = time.time() - start, _peak_rss_gb(pid)
    bound = "" if finished else "at least (stopped by the time limit) "
    row.update(finished=finished, cpu_s=round(seconds), peak_gb=round(peak, 2),
               memory=f"measured {bound}(peak RSS of the kernel)", t4_s=round(seconds),
               t4_how=f"{bound}the CPU time: these cells run on the CPU (Colab's CPU assumed as fast)")
    return row


# ---------------------------------------------------------------- training: FLOPs and time per step
def _ch6_step():
    """One training step of Chapter 6's full profile: both architectures, batch 256, 32×32×1."""
    import torch

    import companion as cp

    data = torch.rand(5000, 1, 32, 32) * 2 - 1          # the size of the 5,000 MNIST images
    archs = [cp.nets.ResNet(channels=1, width=128, depth=4, kernel=3),
             cp.nets.UNet(channels=1, base=64, mults=(1, 2, 2))]
    models = [cp.nets.Denoiser(a, target="v", sigma_data=0.5) for a in archs]
    opts = [torch.optim.Adam(m.parameters(), lr=2e-4) for m in models]
    g = torch.Generator().manual_seed(0)

    def step():
        for model, opt in zip(models, opts):
            x0 = data[torch.randint(len(data), (256,), generator=g)]
            sigma = cp.training.sample_sigma(256, generator=g)
            loss = cp.training.dsm_loss(model, x0, sigma, torch.randn(x0.shape, generator=g))
            opt.zero_grad()
            loss.backward()
            opt.step()
    return step


def _ch7_step():
    """One training step of every Chapter 7 recipe at the full profile's 32×32, batch 64."""
    import torch

    import companion as cp

    names = sorted(cp.gahb.CONFIGS)
    nets = {n: cp.nets.BiasFreeUNet(1, 16, 3, 2) for n in names}
    opts = {n: torch.optim.Adam(m.parameters(), lr=1e-3) for n, m in nets.items()}
    g = torch.Generator().manual_seed(0)

    def step():
        for n, model in nets.items():
            side = 8 if "digits" in n else 32
            x = torch.rand(64, 1, side, side, generator=g)
            y = x + cp.gahb.sample_sigma_sqrt(64, 1.0, g)[:, None, None, None] * torch.randn(
                x.shape, generator=g)
            loss = ((model(y) - x) ** 2).mean()
            opts[n].zero_grad()
            loss.backward()
            opts[n].step()
    return step


TRAINING = {
    "06_creativity_els": dict(make=_ch6_step, steps=40_000,
                              what="2 networks × 40,000 steps, batch 256, 32×32 MNIST"),
    "07_gahb": dict(make=_ch7_step, steps=20_000,
                    what="22 blind U-Nets × 20,000 steps, batch 64, 32×32 (digits 8×8)"),
}


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


def _measure_training(chapter: str, n_steps: int = 3) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    step = TRAINING[chapter]["make"]()
    step()                                         # warm-up
    with FlopCounterMode(display=False) as counter:
        step()
    with _OpCounter() as ops:
        step()
    start = time.time()
    for _ in range(n_steps):
        step()
    return dict(flops=counter.get_total_flops(), ops=ops.n, s_per_step=(time.time() - start) / n_steps,
                peak_gb=_rss_gb())


def run_training(chapter: str) -> dict:
    """FLOPs and CPU time of one full-size training step (in a subprocess: its own peak RSS)."""
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'benchmarks')!r});"
            f"import full_profile as F; print('RESULT', json.dumps(F._measure_training({chapter!r})))")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    m = json.loads(out.stdout.split("RESULT", 1)[1])
    spec = TRAINING[chapter]
    total = m["flops"] * spec["steps"]
    launch = m["ops"] * spec["steps"] * T4_LAUNCH_S
    return dict(chapter=chapter, kind="training", what=spec["what"], finished=False,
                where="GPU (training)", peak_gb=round(m["peak_gb"], 2),
                memory="measured (one full-size step of every network, data included)",
                flops=total, cpu_s=round(m["s_per_step"] * spec["steps"]),
                cpu_how=f"extrapolated from 3 steps ({m['s_per_step']:.2f} s a step)",
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
    parser.add_argument("--timeout", type=int, default=540, help="seconds per notebook")
    args = parser.parse_args(argv)
    rows = json.loads(OUT.read_text()) if OUT.exists() else {}
    for chapter in args.chapters:
        row = run_notebook(chapter, args.timeout) if PLAN[chapter] == "notebook" else run_training(chapter)
        row["measured_on"] = time.strftime("%Y-%m-%d")
        rows[chapter] = row
        save(rows)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
