"""The fused softmax-sums kernel (``_softmax_sums.cpp``), compiled for this machine on first use.

The ELS machine's patch bank (:mod:`companion._els_bank`) and the plain loop of :mod:`companion.els`
(LS machines, small ELS classes) evaluate their float32 (query, candidate) pairs on the CPU through
:func:`softmax_sums` when it is available, and through torch otherwise (the same results to float32
rounding; ``tests/test_native.py`` checks both). Why a kernel of our own: per pair, torch's path
writes the logits out of one matrix product, reads them back for ``exp2`` and again for a second
product; the fused loop keeps a block of logits in registers from the product to the sums, about
2-2.5x faster per pair on one CPU thread (``benchmarks/els_speed.py`` prints its cost per pair).
KeOps, the maintained library for such reductions, is built for GPUs: its CPU backend measured
6.5 ns per pair here, ~8x slower than the torch path.

The kernel shares its pairs among ``torch.get_num_threads()`` threads (fewer on small calls). It is
built with OpenMP (``-fopenmp``) so that it runs on the OpenMP runtime torch has already loaded (GNU
OpenMP in torch's Linux wheels): torch's idle workers spin for a while after each of its operations,
and threads of our own competed with them (two such threads made an ELS call at 16x16 hardly faster
than one). A compiler without OpenMP gives a kernel on one thread. The work is cut into items by the
segments alone and combined in a fixed order, so the results do not depend on the number of threads.

The source is compiled with the C++ compiler ``$CXX`` (default ``c++``) and ``-O3 -march=native``
(and ``-fopenmp`` where the compiler takes it) into ``$COMPANION_CACHE`` (default
``~/.cache/companion``), under a name that hashes the source, the compiler's version, the flags and
the CPU's feature flags, so a cache shared between machines never loads a library built for another
CPU; the file is written under a temporary name and renamed, so an
interrupted build leaves nothing half-written. Before first use the library is checked against torch
on a small problem. No compiler, a failed build or a failed check: :func:`load` returns ``None``,
:data:`reason` says why, and the torch path is used. ``COMPANION_NATIVE=0`` turns the kernel off.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading

import torch

__all__ = ["load", "runs", "softmax_sums", "max_logits", "cluster_sums", "PAD"]

SOURCE = pathlib.Path(__file__).with_name("_softmax_sums.cpp")
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
OPENMP = ["-fopenmp"]    # tried first; without it (e.g. a compiler without OpenMP) the kernel runs on one thread
PAD = 32                  # finite (zero) columns a table needs past its last segment (the kernel's W * U)
reason = "not loaded yet"
openmp = False            # whether the loaded kernel was built with OpenMP (can use several threads)
_lib: ctypes.CDLL | None = None
_tried = False
_lock = threading.Lock()


def _cpu_flags() -> str:
    try:
        return next(line for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith(("flags", "Features")))
    except (OSError, StopIteration):
        return platform.machine() + platform.processor()


def _path(version: str, flags: list) -> pathlib.Path:
    """Where the library built with ``flags`` by the compiler of ``version`` lives in the cache."""
    key = hashlib.sha256("\n".join([SOURCE.read_text(), version, " ".join(flags), _cpu_flags()]).encode())
    cache = pathlib.Path(os.environ.get("COMPANION_CACHE") or pathlib.Path.home() / ".cache" / "companion")
    return cache / f"softmax_sums-{key.hexdigest()[:16]}.so"


def _write(path: pathlib.Path, make) -> None:
    """Create ``path`` by ``make(temporary path)`` under a temporary name, then rename it (readable by
    others: mkstemp's 0600 would keep a shared cache private); nothing is left behind on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        make(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o755 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _compile(cxx: str, flags: list, tmp: str) -> None:
    try:
        run = subprocess.run([cxx, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{cxx} took longer than {e.timeout:g} s") from None
    if run.returncode:
        raise RuntimeError(f"{cxx} failed: {run.stderr.strip()[-500:]}")


def _open(cxx: str, version: str, flags: list) -> ctypes.CDLL:
    """The library built with ``flags`` (compiled unless cached), loaded and checked against torch."""
    path = _path(version, flags)
    try:
        if not path.exists():
            _write(path, lambda tmp: _compile(cxx, flags, tmp))
        lib = ctypes.CDLL(str(path))
        for fn, real in ((lib.softmax_sums_f32, ctypes.c_float), (lib.softmax_sums_f64, ctypes.c_double)):
            fn.restype = ctypes.c_int
            ptr, long = ctypes.c_void_p, ctypes.c_long
            fn.argtypes = ([long] + [ptr] * 5 + [ctypes.c_int] * 2 + [ptr] * 2
                           + [long, ptr, long, real, ptr, ptr, ctypes.c_int, ctypes.c_int])
        lib.softmax_sums_openmp.restype = ctypes.c_int
        lib.cluster_sums.restype = ctypes.c_int
        lib.cluster_sums.argtypes = ([ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_long] + [ctypes.c_void_p] * 10
                                     + [ctypes.c_long] + [ctypes.c_void_p] * 2 + [ctypes.c_long]
                                     + [ctypes.c_double] * 4 + [ctypes.c_void_p] * 2 + [ctypes.c_int])
    except Exception as e:
        raise RuntimeError(f"could not be built or loaded: {e}") from None
    error = _self_check(lib)
    if error:
        raise RuntimeError(f"failed its check against torch: {error}")
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled kernel, or ``None`` (then :data:`reason` says why); built and checked once.

    The build with OpenMP is tried first; where it fails and the one without succeeds, a note next to
    the library (``.no-openmp``) keeps later processes from trying again, and :data:`reason` says so."""
    global _lib, _tried, reason, openmp
    with _lock:
        if _tried:
            return _lib
        cxx = os.environ.get("CXX", "c++")
        if os.environ.get("COMPANION_NATIVE", "1") == "0":
            reason = "turned off by COMPANION_NATIVE=0"
        elif shutil.which(cxx) is None:
            reason = f"no C++ compiler ({cxx}) on PATH"
        else:
            try:
                version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
                note = _path(version, FLAGS + OPENMP).with_suffix(".no-openmp")
                failed = note.read_text() if note.exists() else None
                if failed is None:
                    try:
                        _lib = _open(cxx, version, FLAGS + OPENMP)
                    except RuntimeError as e:
                        failed = str(e)
                if _lib is None:
                    _lib = _open(cxx, version, FLAGS)
                    if not note.exists():
                        _write(note, lambda tmp: pathlib.Path(tmp).write_text(failed))
                openmp = bool(_lib.softmax_sums_openmp())
                reason = "loaded" if failed is None else f"loaded, on one thread (the build with OpenMP {failed})"
            except Exception as e:          # any failure to build, load or check: the torch path
                _lib, reason = None, str(e) if isinstance(e, RuntimeError) else f"could not be built or loaded: {e}"
        _tried = True
        return _lib


def runs(x: torch.Tensor, channels: int) -> bool:
    """Whether the kernel evaluates pairs for queries ``x`` with ``channels`` values per candidate:
    float32 on the CPU, at most 3 channels (``[v, 1]`` has at most 4 rows), and the kernel loaded."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and channels <= 3 and load() is not None


def softmax_sums(lhs, table, vals, pair_lo, pair_hi, col_lo, col_hi, own_max, floor, threads=None):
    """Per pair ``p`` of segment ``s`` (the rows ``pair_lo[s]:pair_hi[s]`` of ``lhs``): ``top_p`` and
    ``Σ_j 2^(lhs_p·table_j − top_p) vals_j`` over the columns ``col_lo[s] ≤ j < col_hi[s]``, with
    ``top_p = 0`` or, where ``own_max[s]``, the pair's largest logit; logits clamped below at ``floor``
    and not above: ``lhs_p·table_j − top_p`` must stay below 127 (float64: 1023), else the weight overflows.

    Args: ``lhs`` ``(n, K)``; ``table`` ``(K, ld)`` and ``vals`` ``(V1, ld)`` (2 ≤ V1 ≤ 4), with
    ``ld ≥ max(col_hi) + PAD`` (finite, e.g. zeros); ``pair_lo``, ``pair_hi``, ``col_lo``, ``col_hi``
    ``(S,)`` integers, no two segments sharing a pair; ``own_max`` ``(S,)`` bool. Contiguous CPU
    tensors, all float32 or all float64 (the logits' type; the weights are accurate to float32 either
    way); ``floor`` between the least normal exponent (−126 or −1022) and 0. Returns ``(sums (n, V1)
    float64, top (n,))``, zero for the pairs of no segment.

    ``threads`` (default ``torch.get_num_threads()``): at most this many threads share the work (fewer
    on small calls, where a thread would cost more than it saves); the results do not depend on it.
    """
    return _call(load(), lhs, table, vals, pair_lo, pair_hi, col_lo, col_hi, own_max, floor, threads)


def cluster_sums(q, inv2s2, ref, keep, centre, radius, log_cmax, start, tables32, tables64, floor, margin, margin64,
                 limit, threads=None):
    """:meth:`companion._els_bank.PatchBank._by_cluster` with the fused kernel, in one call: for the queries ``q``
    ``(Q, P)`` with ``inv2s2`` = 1/2σ² and references ``ref`` ``(Q,)`` (natural log units) and the clusters
    ``keep`` ``(n_clusters, Q)`` (bool: cluster c is evaluated for query i), ``(sums, flags)``: per query
    ``Σ_p [Σ w v, Σ w]_p 2^(top_p − best)`` over its pairs p (``(Q, V1)`` float64, relative to its largest pair
    top, zero for a query with no cluster) and per cluster ``flags`` = fixed shift + 2·float64 logits
    (``(n_clusters,)`` uint8); the shifts and types are those ``_by_cluster`` documents (``margin``, ``margin64``:
    natural log units; ``limit``: the float32 rounding allowed; ``floor``: log2 units, as in :func:`softmax_sums`).

    The clusters' centres ``centre`` ``(n_clusters, P)``, radii, largest log-counts and column ranges ``start``
    ``(n_clusters + 1,)``; ``tables32`` and ``tables64``: the centred tables ``(P + 3, ld)`` and ``[v, 1]``
    ``(V1, ld)`` in float32 and float64 with ``ld ≥ start[-1] + PAD`` (:meth:`PatchBank._native_tables`). The
    queries and per-query and per-cluster values are contiguous CPU float64 tensors."""
    lib = load()
    if lib is None:
        raise RuntimeError(f"the fused kernel is not available: {reason}")
    (Q, P), K = q.shape, centre.shape[0]
    if P < 1:
        raise ValueError(f"q must have at least one column, got {tuple(q.shape)}")
    for name, x, shape in (("q", q, (Q, P)), ("inv2s2", inv2s2, (Q,)), ("ref", ref, (Q,)), ("centre", centre, (K, P)),
                           ("radius", radius, (K,)), ("log_cmax", log_cmax, (K,))):
        if not (x.dtype == torch.float64 and x.device.type == "cpu" and x.is_contiguous() and x.shape == shape):
            raise ValueError(f"{name} must be a contiguous CPU float64 tensor of shape {shape}, "
                             f"got {x.dtype} {tuple(x.shape)}")
    keep = keep.to(torch.uint8).contiguous()
    start = torch.as_tensor(start, dtype=torch.long).contiguous()
    if keep.shape != (K, Q) or start.shape != (K + 1,):
        raise ValueError(f"keep must be (n_clusters, Q) = {(K, Q)} and start (n_clusters + 1,), "
                         f"got {tuple(keep.shape)} and {tuple(start.shape)}")
    if K and (int(start[0]) < 0 or bool((start.diff() < 0).any())):
        raise ValueError("start must be non-decreasing from 0 or more")
    V1 = tables32[1].shape[0]
    for (tab, vals), dt in ((tables32, torch.float32), (tables64, torch.float64)):
        if not all(x.dtype == dt and x.device.type == "cpu" and x.is_contiguous() for x in (tab, vals)) \
                or tab.shape[0] != P + 3 or vals.shape[0] != V1 or tab.shape[1] != vals.shape[1] \
                or tab.shape[1] < int(start[-1]) + PAD:
            raise ValueError(f"tables{dt.itemsize * 8} must be contiguous {dt} (P + 3, ld) and ({V1}, ld) "
                             f"with ld ≥ start[-1] + {PAD}")
    if not 2 <= V1 <= 4:
        raise ValueError(f"the values [v, 1] must have 2 to 4 rows, got {V1}")
    if not -126.0 <= floor <= 0:
        raise ValueError(f"floor must lie in [-126, 0], got {floor!r}")
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    sums, flags = torch.zeros(Q, V1, dtype=torch.float64), torch.zeros(K, dtype=torch.uint8)
    (t32, v32), (t64, v64) = tables32, tables64
    rc = lib.cluster_sums(Q, P, V1, K, keep.data_ptr(), q.data_ptr(), inv2s2.data_ptr(), ref.data_ptr(),
                          centre.data_ptr(), radius.data_ptr(), log_cmax.data_ptr(), start.data_ptr(),
                          t32.data_ptr(), v32.data_ptr(), t32.stride(0), t64.data_ptr(), v64.data_ptr(), t64.stride(0),
                          float(floor), float(margin), float(margin64), float(limit), sums.data_ptr(),
                          flags.data_ptr(), min(threads, 1024))
    if rc:
        raise MemoryError("the fused kernel ran out of memory for the clusters' pairs")
    return sums, flags


def max_logits(lhs, table, pair_lo, pair_hi, col_lo, col_hi, threads=None):
    """Per pair ``p`` of segment ``s``: ``max_j lhs_p·table_j`` over the columns ``col_lo[s] ≤ j < col_hi[s]``
    (``-inf`` where there are none), the first pass of :func:`softmax_sums` with ``own_max``, without its
    sums. Arguments as there; returns ``top`` ``(n,)`` in ``lhs``'s dtype, zero for the pairs of no segment."""
    S = len(pair_lo)
    return _call(load(), lhs, table, None, pair_lo, pair_hi, col_lo, col_hi, [True] * S, -126.0, threads)[1]


def _call(lib, lhs, table, vals, pair_lo, pair_hi, col_lo, col_hi, own_max, floor, threads=None):
    if lib is None:
        raise RuntimeError(f"the fused kernel is not available: {reason}")
    n, K = lhs.shape
    want_sums = vals is not None                       # None: maxima only (vals and sums are not read)
    V1 = vals.shape[0] if want_sums else 2
    if not want_sums and not all(bool(o) for o in own_max):
        raise ValueError("maxima only (vals=None) needs own_max for every segment")
    pair_lo, pair_hi, col_lo, col_hi = (torch.as_tensor(t, dtype=torch.long).contiguous()
                                        for t in (pair_lo, pair_hi, col_lo, col_hi))
    if not 2 <= V1 <= 4:
        raise ValueError(f"vals must have 2 to 4 rows, got {V1}")
    if table.shape[0] != K or (want_sums and table.shape[1] != vals.shape[1]):
        raise ValueError(f"table {tuple(table.shape)} and vals {None if vals is None else tuple(vals.shape)} "
                         f"do not match lhs {tuple(lhs.shape)}")
    if len(col_hi) and int(col_hi.max()) + PAD > table.shape[1]:
        raise ValueError(f"table needs {PAD} readable columns past the last segment's end")
    if not len(pair_lo) == len(pair_hi) == len(col_lo) == len(col_hi) == len(own_max):
        raise ValueError("pair_lo, pair_hi, col_lo, col_hi and own_max must have one entry per segment")
    if len(pair_hi) and (int(pair_hi.max()) > n or int(pair_lo.min()) < 0 or int(col_lo.min()) < 0):
        raise ValueError(f"segments must lie within lhs's {n} rows and the table's columns")
    order = torch.argsort(pair_lo)
    if len(pair_lo) > 1 and bool((pair_hi[order[:-1]] > pair_lo[order[1:]]).any()):
        raise ValueError("segments must not share pairs (pair_lo:pair_hi ranges overlap)")
    least = -126.0 if lhs.dtype == torch.float32 else -1022.0
    if not least <= floor <= 0:
        raise ValueError(f"floor must lie in [{least:g}, 0] (the least normal exponent), got {floor!r}")
    threads = torch.get_num_threads() if threads is None else threads
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    dtype = lhs.dtype
    for name, t in (("lhs", lhs), ("table", table)) + ((("vals", vals),) if want_sums else ()):
        if t.dtype != dtype or dtype not in (torch.float32, torch.float64) or t.device.type != "cpu" \
                or not t.is_contiguous():
            raise ValueError(f"{name} must be a contiguous CPU tensor of lhs's dtype (float32 or float64)")
    own = torch.as_tensor(own_max).to(torch.uint8).contiguous()
    sums = torch.zeros(n, V1, dtype=torch.float64)
    top = torch.zeros(n, dtype=dtype)
    fn = lib.softmax_sums_f32 if dtype == torch.float32 else lib.softmax_sums_f64
    rc = fn(len(col_lo), pair_lo.data_ptr(), pair_hi.data_ptr(), col_lo.data_ptr(), col_hi.data_ptr(), own.data_ptr(),
            K, V1, lhs.data_ptr(), table.data_ptr(), table.stride(0), (vals if want_sums else table).data_ptr(),
            vals.stride(0) if want_sums else 0, float(floor), sums.data_ptr(), top.data_ptr(), min(threads, 1024),
            int(want_sums))
    if rc == 1:
        raise ValueError(f"lhs must have at least one column, got {K}")
    if rc:
        raise MemoryError("the fused kernel ran out of memory for its work items")
    return sums, top


def _self_check(lib) -> str:
    """An empty string if the kernel matches torch on a small problem (odd sizes, both modes, both types)."""
    g = torch.Generator().manual_seed(0)
    n, K, m = 11, 7, 45
    for dtype in (torch.float32, torch.float64):
        lhs, table = torch.randn(n, K, generator=g, dtype=dtype), torch.randn(K, m + PAD, generator=g, dtype=dtype)
        vals = torch.rand(3, m + PAD, generator=g, dtype=dtype)
        pair_lo, pair_hi, col_lo, col_hi = [0, 5], [5, 11], [0, 3], [m, 20]
        sums, top = _call(lib, lhs, table, vals, pair_lo, pair_hi, col_lo, col_hi, [False, True], -126.0)
        logit = lhs.double() @ table.double()
        for s in range(2):
            p, c = slice(pair_lo[s], pair_hi[s]), slice(col_lo[s], col_hi[s])
            t = logit[p, c].amax(1) if s else torch.zeros(p.stop - p.start, dtype=torch.float64)
            want = torch.exp2(logit[p, c] - t[:, None]) @ vals[:, c].double().T
            if not (torch.allclose(sums[p], want, rtol=1e-5, atol=0)
                    and torch.allclose(top[p].double(), t, atol=1e-5)):
                return f"{dtype}, segment {s}: max relative error {float(((sums[p] - want) / want).abs().max()):.1e}"
        top = _call(lib, lhs, table, None, pair_lo, pair_hi, col_lo, col_hi, [True, True], -126.0)[1]
        want = torch.cat([logit[a:b, c:d].amax(1) for a, b, c, d in zip(pair_lo, pair_hi, col_lo, col_hi)])
        if not torch.allclose(top.double(), want, atol=1e-5):
            return f"{dtype}, maxima only: max error {float((top.double() - want).abs().max()):.1e}"
    return ""
