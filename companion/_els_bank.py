r"""A deduplicated, clustered bank of candidate patches: the fast path of :mod:`companion.els`.

The ELS posterior of a query patch :math:`q` is a softmax over a bank of candidate patches
:math:`y_j` with centre values :math:`v_j` (Kamb & Ganguli 2025, eq. 3):

.. math::  D(q) = \frac{\sum_j c_j\, e^{-\|q - y_j\|^2/2\sigma^2}\, v_j}{\sum_j c_j\, e^{-\|q - y_j\|^2/2\sigma^2}}

Two reductions make it fast without changing the result beyond a stated tolerance:

* **Deduplication.** Identical (patch, centre) pairs are stored once with their multiplicity
  :math:`c_j`, which enters as a log-weight :math:`\log c_j` (exact).
* **Skipping rows whose weight is provably negligible**, by two bounds on :math:`\|q - y_j\|`.
  Both use a reference :math:`L_q`, the exact best log-weight over the rows of the clusters
  nearest to :math:`q` (a lower bound on the largest log-weight), and both skip rows that carry
  together at most ``tol`` :math:`e^{L_q}`, i.e. at most ``tol`` times the softmax's normalizer, so
  the posterior mean moves by at most :math:`2\,\text{tol}\,\max_j|v_j|`.

  *Clusters.* The rows are grouped by k-means into :math:`K` clusters, each with a centre
  :math:`m_k`, a radius :math:`r_k = \max_{j\in k}\|y_j - m_k\|` and a mass :math:`C_k = \sum_{j \in
  k} c_j`. By the triangle inequality every row of cluster :math:`k` has :math:`\|q - y_j\| \ge
  \ell_k(q) = \max(0, \|q - m_k\| - r_k)`, so the cluster carries at most :math:`C_k
  e^{-s\ell_k^2}` (:math:`s = 1/2\sigma^2`); cluster :math:`k` is skipped for :math:`q` when
  :math:`\log \max_j C_j - s\ell_k^2 < L_q - \log(K/\text{tol})` (with the largest mass the test
  is one matrix product, :meth:`PatchBank._keep`). Each kept cluster is evaluated against the
  queries that keep it (per-query candidate sets), its weights relative to :math:`L_q` when no row
  can exceed that by much (a bound like :math:`\ell_k`'s), else to its own largest log-weight.

  *A window in one projection.* The rows are sorted by :math:`z_j = u\cdot y_j` (:math:`u`: the
  bank's principal axis, a unit vector). Since :math:`\|q - y\| \ge |u\cdot q - z_j|`, the rows with
  :math:`|u\cdot q - z_j| \ge h` carry at most :math:`C e^{-sh^2}` (:math:`C = \sum_j c_j`), which
  is ``tol`` :math:`e^{L_q}` for :math:`h^2 = (\log(C/\text{tol}) - L_q)/s`. Queries sorted by
  their projection share contiguous slices in groups.

  Each call evaluates the bank the cheapest way by a cost estimate (pairs to evaluate): by clusters
  (low noise: the union of a group's windows is much larger than each query's kept set), by windows,
  or the whole bank in large groups of queries (whose pairs cost ~0.8 of the windows', which
  outweighs the rows wide windows skip at moderate noise).
  Small calls (at most ``_direct_pairs`` query-row pairs) skip the planning and evaluate the whole
  bank, and so do calls at noise so high that even the narrowest window, the one for the largest
  conceivable :math:`L_q = \max_j \log c_j`, spans the whole bank (planning, 10-16% of such a call,
  could skip nothing by windows). Without planning the weights are shifted by :math:`\max_j \log
  c_j` (no log-weight exceeds it) where the best log-weight of the two rows next to the query in
  projection order (:meth:`PatchBank.near_ref`, a lower bound on the best log-weight) shows that the
  largest weight stays above :math:`e^{-40}` (float64: :math:`e^{-600}`), else by each query's own
  maximum. A machine with several banks evaluates those it does not plan in one call of the
  fused kernel (:meth:`PatchBank.unplanned_lhs`: relative to each bank's mean row, float64 logits
  where float32 would round too much).

Logits come out of one matrix product per group of queries, after shifting both sides by the
group's mean query when that reduces the float32 cancellation of :math:`\|q\|^2 - 2q\cdot y +
\|y\|^2`, and in float64 whenever the estimated float32 rounding of a logit exceeds ``1e-4``.
Weights are computed as :math:`2^{\ell \log_2 e}` for a logit :math:`\ell` (the factor
:math:`\log_2 e` is folded into the product): torch's float32 ``exp2`` is as accurate as its ``exp``
(~1 ulp) and about 4x faster on one CPU thread. Logits that could fall below the smallest normal
number are clamped there (``exp2`` is ~3x slower beyond it unless denormals are flushed; the clamped
weights change the normalizer by less than ``m·e^-47``). The softmax-weighted sums come out
of a second product laid out as ``[v, 1]ᵀ · wᵀ`` (a wide output, several times faster than
``w · [v, 1]``) and are accumulated in float64. For float32 queries on the CPU, the same three steps
run fused in :mod:`companion._native`'s kernel when it can be built (logits, ``exp2`` and sums of a
block of pairs in registers, ~2x faster per pair; float64 logits where float32 would round too much),
with the same shifts, clamps and float64 accumulation: the two paths agree to float32 rounding.
The evaluation by clusters runs there in one call, from the kept clusters to each query's sums
(:func:`companion._native.cluster_sums`). The kernel's maxima also give :meth:`PatchBank.plan` its references (in float64, whatever the
queries' type) on the CPU.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _native

__all__ = ["PatchBank"]

_EPS32 = 2.0 ** -24
_ROUNDING = 1e-4   # largest estimated float32 rounding of a logit before float64 is used
_LOG2E = 1.0 / math.log(2.0)   # weights are 2^(log-weight · log2 e): torch's exp2 is ~4x faster than exp


def _rows(y: torch.Tensor, logc: torch.Tensor) -> torch.Tensor:
    """The table ``[y, ‖y‖², log c, 1]`` ``(n, P+3)`` (float64) of rows ``y`` (relative to some point) with
    log-counts ``logc``: against it, ``PatchBank._lhs`` of queries relative to the same point gives the logits."""
    y = y.double()
    return torch.cat([y, y.pow(2).sum(1, keepdim=True), logc.double()[:, None], torch.ones_like(y[:, :1])], 1)


def _values(v: torch.Tensor) -> torch.Tensor:
    """``[v, 1]ᵀ`` ``(V+1, n)`` (float64): one product with the weights gives ``[Σ w v, Σ w]``."""
    return torch.cat([v.double(), torch.ones_like(v[:, :1], dtype=torch.float64)], 1).T


def _kmeans(y: torch.Tensor, n: int, iters: int = 6, chunk: int = 8192) -> torch.Tensor:
    """Cluster labels ``(N,)`` of rows ``y`` ``(N, P)`` (sorted by their principal projection) by
    ``iters`` Lloyd steps in float32 from ``n`` rows at evenly spaced ranks (deterministic)."""
    yf = y.float()
    c = yf[torch.linspace(0, len(yf) - 1, n, dtype=torch.float64, device=y.device).long()]
    for _ in range(iters + 1):
        cn = c.pow(2).sum(1)
        label = torch.cat([(cn - 2 * yf[a:a + chunk] @ c.T).argmin(1) for a in range(0, len(yf), chunk)])
        cnt = torch.bincount(label, minlength=n)
        sums = torch.zeros_like(c).index_add_(0, label, yf)
        c = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], c)
    return label


class PatchBank:
    """Candidate patches ``(N, P)`` with centre values ``(N, V)``, deduplicated and clustered.

    Args:
        patches: ``(N, P)`` candidate patch vectors.
        values: ``(N, V)`` the values a posterior averages (the patches' centre pixels).
        dedup: merge identical (patch, value) rows into one with its count.
        cluster_rows: mean number of rows per cluster (``K = ⌈n_rows / cluster_rows⌉`` clusters).

    ``native`` (default ``True``): evaluate float32 pairs on the CPU, and the references of
    :meth:`plan` on the CPU, with the fused kernel of :mod:`companion._native` when it is available
    (``False``: always with torch).
    """

    native = True

    def __init__(self, patches: torch.Tensor, values: torch.Tensor, dedup: bool = True,
                 cluster_rows: int = 256):
        P = patches.shape[1]
        rows = torch.cat([patches, values], 1)
        if dedup:
            rows, counts = torch.unique(rows, dim=0, return_counts=True)
        else:
            counts = torch.ones(rows.shape[0], dtype=torch.long, device=rows.device)
        y = rows[:, :P].double()
        z = y - y.mean(0)
        u = z.abs().sum(0) + 1e-12                         # principal axis by power iteration
        for _ in range(20):
            u = z.T @ (z @ u)
            u = u / u.norm().clamp_min(1e-300)
        self.u = u
        self.z, order = torch.sort(y @ u, stable=True)               # rows in projection order
        rows, counts, y = rows[order], counts[order], y[order]
        self.y, self.v = rows[:, :P].contiguous(), rows[:, P:].contiguous()
        self.logc = counts.double().log()
        self.n_rows = rows.shape[0]
        self.log_total = math.log(float(counts.sum()))
        label = _kmeans(y, max(1, math.ceil(len(y) / cluster_rows)))
        _, label = torch.unique(label, return_inverse=True)                       # drop empty ones
        K, dev = int(label.max()) + 1, y.device
        centre = torch.zeros(K, P, dtype=torch.float64, device=dev).index_add_(0, label, y)
        centre /= torch.bincount(label, minlength=K)[:, None]
        # clusters ordered by their centres' projection (neighbouring clusters are near in space)
        rank = torch.empty(K, dtype=torch.long, device=dev)
        rank[torch.argsort(centre @ u, stable=True)] = torch.arange(K, device=dev)
        label = rank[label]
        self.members = torch.argsort(label, stable=True)       # row indices, cluster by cluster
        self.centre = centre[torch.argsort(rank)]
        self.radius = torch.zeros(K, dtype=torch.float64, device=dev).scatter_reduce_(
            0, label, (y - self.centre[label]).norm(dim=1), "amax")
        self.log_mass = torch.zeros(K, dtype=torch.float64, device=dev).index_add_(0, label, counts.double()).log()
        self.log_cmax = torch.zeros(K, dtype=torch.float64, device=dev).scatter_reduce_(0, label, self.logc, "amax")
        size = torch.bincount(label, minlength=K)
        self.start = torch.cat([torch.zeros(1, dtype=torch.long, device=dev), size.cumsum(0)])   # (K + 1,)
        self.n_clusters = K

    def posterior_mean(self, q: torch.Tensor, inv2s2: torch.Tensor, tol: float, group: int = 64,
                       span: int = 2048, tile: int = 2**18) -> torch.Tensor:
        """Posterior means ``(Q, V)`` of queries ``q`` ``(Q, P)`` with ``inv2s2 = 1/2σ²`` ``(Q,)``.

        ``tol = 0`` keeps every candidate (deduplication alone, exact). Up to ``_direct_pairs``
        (query, row) pairs, and whenever the windows could skip no row whatever the reference
        (:meth:`_covers`: high noise, or ``tol = 0``), the whole bank is evaluated without planning.
        Otherwise :meth:`plan` draws the clusters and windows, and the bank is evaluated the way the
        cost estimate says is cheapest: by clusters, by windows (in tiles of about ``tile`` logits;
        windows that span the whole bank in groups of up to 512 queries), or whole (groups of 512
        queries by every row run ~1.2-1.4x faster per pair than the windows' groups of 64 on one CPU
        thread, which can outweigh the rows the windows skip).
        """
        Q, pairs = q.shape[0], q.shape[0] * self.n_rows
        if Q == 0:
            return q.new_empty(0, self.v.shape[1])
        if self.unplanned(q, inv2s2, tol):
            return self._whole(q, inv2s2, self._unplanned_ref(q, inv2s2), tile).to(q.dtype)
        ref, keep, windows = self.plan(q, inv2s2, tol, group, span)
        # cost in pairs (those of the windows' groups as the unit): by windows, by clusters (plus a fixed
        # cost each), or the whole bank
        spans = [lo == 0 and hi == self.n_rows for _, lo, hi in windows]
        by_window = sum(len(idx) * (hi - lo) for idx, lo, hi in windows)
        per = keep.sum(0)                                                  # queries per cluster
        by_cluster = float(per.double() @ self.start.diff().to(q.device).double())
        active = int((per > 0).sum())
        cost = {"clusters": self._pair_cost * by_cluster + self._overhead * active, "windows": by_window,
                "whole": self._whole_cost * pairs}
        chosen = min(cost, key=cost.get)
        self.last_cost = dict(windows=by_window, clusters=by_cluster, active=active, planned=True, chosen=chosen,
                              fixed=None)
        if chosen == "clusters":
            return self._by_cluster(q, inv2s2, ref, keep).to(q.dtype)
        if chosen == "whole":
            return self._whole(q, inv2s2, ref, tile).to(q.dtype)
        out = torch.empty(Q, self.v.shape[1], dtype=torch.float64, device=q.device)
        if any(spans):
            idx = torch.cat([w[0] for w, sp in zip(windows, spans) if sp])
            out[idx] = self._whole(q[idx], inv2s2[idx], ref[idx], tile)
        for (idx, lo, hi), sp in zip(windows, spans):
            if not sp:
                out[idx] = self._softmax_mean(q[idx], inv2s2[idx], ref[idx], slice(lo, hi), max(256, tile // len(idx)))
        return out.to(q.dtype)

    def unplanned(self, q, inv2s2, tol) -> bool:
        """Whether :meth:`posterior_mean` evaluates the whole bank for queries ``q`` without planning:
        at most ``_direct_pairs`` pairs, or no window could skip a row (:meth:`_covers`)."""
        return q.shape[0] * self.n_rows <= self._direct_pairs or (self._skip_planning and self._covers(q, inv2s2, tol))

    def _unplanned_ref(self, q, inv2s2):
        """The reference of a call without planning, and its ``last_cost``: :meth:`near_ref` where it shows
        that every query's largest weight stays above e^-40 (float64: e^-600) with the shift fixed at
        ``max log c`` (no log-weight exceeds it), else ``None`` (each query's own maximum: a reference
        far below the best would only add its rounding to float32 logits)."""
        near = self.near_ref(q, inv2s2)
        fixed = float((self.logc.max() - near).max()) <= self._margin(q.dtype)
        self.last_cost = dict(windows=q.shape[0] * self.n_rows, clusters=math.nan, active=0, planned=False,
                              chosen="whole", fixed=fixed)
        return near if fixed else None

    def unplanned_lhs(self, q, inv2s2):
        """For float32 queries ``q`` evaluated without planning by the fused kernel against
        :meth:`_about_mean`'s table (rows relative to the bank's mean row m), as one segment of a call
        shared with other banks: ``(lhs, own_max)``, the logits' left-hand side for ``q − m`` in log2
        units (float32 when their estimated rounding ``eps·(max‖q − m‖ + max‖y − m‖)²·s`` is at most 1e-4,
        else float64) and whether the queries take their own maxima (else the shift is ``max log c``;
        :meth:`_unplanned_ref`). ``None`` without queries and where even float64 would round more (then
        :meth:`posterior_mean` centres them in smaller groups)."""
        if q.shape[0] == 0:
            return None
        _, _, ymax, m = self._about_mean(q.dtype)
        qc = q.double() - m
        rounding = _EPS32 * (float(qc.norm(dim=1).max()) + ymax) ** 2 * float(inv2s2.max())
        if rounding * 2.0**-29 > _ROUNDING:                     # float64's epsilon is float32's times 2^-29
            return None
        ref = self._unplanned_ref(q, inv2s2)
        shift = torch.zeros_like(inv2s2, dtype=torch.float64) + (0.0 if ref is None else float(self.logc.max()))
        return self._lhs(qc, inv2s2, shift, q.dtype if rounding <= _ROUNDING else torch.float64), ref is None

    def _about_mean(self, dtype):
        """The rows relative to the bank's mean row m, ``[y − m, ‖y − m‖², log c, 1]`` transposed, and ``[v, 1]ᵀ``,
        both in ``dtype`` and padded for the fused kernel, with ``max ‖y − m‖`` and m (float64; cached)."""
        key = ("about mean", dtype)
        if key not in self.__dict__:
            y = self.y.double()
            m = y.mean(0)
            tab, vals = _rows(y - m, self.logc).to(dtype), _values(self.v).to(dtype)
            self.__dict__[key] = (F.pad(tab.T, (0, _native.PAD)), F.pad(vals, (0, _native.PAD)),
                                  float((y - m).norm(dim=1).max()), m)
        return self.__dict__[key]

    @staticmethod
    def _lhs(q, inv2s2, shift, dtype):
        """The left-hand side ``log2 e · [2sq, −s, 1, −s‖q‖² − shift]`` ``(Q, P + 3)`` in ``dtype`` of the
        logits ``log2 e · (−s‖q − y‖² + log c − shift)`` against the rows ``[y, ‖y‖², log c, 1]``."""
        s, q = inv2s2.to(dtype)[:, None], q.to(dtype)
        return _LOG2E * torch.cat([2 * s * q, -s, torch.ones_like(s), -s * q.pow(2).sum(1, keepdim=True)
                                   - shift.to(dtype)[:, None]], 1)

    def _whole(self, q, inv2s2, ref, tile):
        """Posterior means ``(Q, V)`` (float64) over the whole bank, in groups of up to 512 queries."""
        out = torch.empty(q.shape[0], self.v.shape[1], dtype=torch.float64, device=q.device)
        for a in range(0, q.shape[0], 512):
            g = slice(a, a + 512)
            out[g] = self._softmax_mean(q[g], inv2s2[g], None if ref is None else ref[g], slice(0, self.n_rows),
                                        max(256, tile // len(q[g])))
        return out

    def plan(self, q, inv2s2, tol, group=64, span=2048):
        """What to evaluate for queries ``q`` ``(Q, P)``: ``(ref, keep, windows)``.

        ``ref`` ``(Q,)``: :math:`L_q`, the exact best log-weight over the nearest clusters of up to
        ``group`` queries (at most ``span`` rows unless one cluster is larger). ``keep`` ``(Q, K)``:
        the clusters a query keeps; the skipped ones carry at most ``tol·e^ref``. ``windows``: a
        list of ``(query indices, lo, hi)``, up to ``group`` queries sharing the rows ``lo:hi`` (in
        projection order) outside which their rows carry at most ``tol·e^ref``.
        """
        Q, dev = q.shape[0], q.device
        s64, q64 = inv2s2.double(), q.double()
        start = self.start.tolist()
        c32 = self.centre.to(dev).float()                   # nearest centres (float32: a heuristic)
        near = torch.addmm(c32.pow(2).sum(1), q.float(), c32.T, alpha=-2).argmin(1)
        cut = math.log(self.n_clusters / tol) if tol > 0 else math.inf
        order = torch.argsort(near, stable=True)
        table64 = self._centred(torch.float64, centred=False)[0]
        qo, so = q64[order], s64[order, None]                          # queries by nearest cluster
        lhs = torch.cat([2 * so * qo, -so, torch.ones_like(so), -so * qo.pow(2).sum(1, keepdim=True)], 1)
        groups = self._groups(near[order], group, span)     # exact best over the nearest clusters
        if self.native and dev.type == "cpu" and _native.load() is not None:      # the kernel's maxima
            if ("native", "ref") not in self.__dict__:
                self.__dict__["native", "ref"] = F.pad(table64.T, (0, _native.PAD))
            a, b, f, l = zip(*groups)
            ref = _native.max_logits(lhs, self.__dict__["native", "ref"], a, b, [start[i] for i in f],
                                     [start[i + 1] for i in l])
        else:
            ref = torch.empty(Q, dtype=torch.float64, device=dev)
            for a, b, f, l in groups:
                ref[a:b] = (lhs[a:b] @ table64[start[f]:start[l + 1]].T).amax(1)
        ref = torch.empty_like(ref).index_copy_(0, order, ref)
        keep = self._keep(q64, s64, ref - cut)                                     # (Q, K)
        # the window in the projection: ‖q − y‖ ≥ |u·q − u·y|, so rows with |u·q − z| > h carry at
        # most e^(log C − s h²) = tol e^ref in all; it contains the row that gives ref
        zq = q64 @ self.u.to(dev)
        h = ((self.log_total - math.log(tol) - ref).clamp_min(0) / s64).sqrt() if tol > 0 else None
        zorder = torch.argsort(zq)
        starts = range(0, Q, group)
        if tol > 0:                              # each group's window: its queries' windows' union
            z = self.z.to(dev)
            pad = (0, -Q % group)                # consecutive groups of sorted queries, the last padded
            lo = torch.nn.functional.pad(torch.searchsorted(z, (zq - h)[zorder]), pad, value=self.n_rows)
            hi = torch.nn.functional.pad(torch.searchsorted(z, (zq + h)[zorder], right=True), pad, value=0)
            bounds = zip(lo.view(-1, group).amin(1).tolist(), hi.view(-1, group).amax(1).tolist())
        else:
            bounds = [(0, self.n_rows)] * len(starts)
        windows = [(zorder[a:a + group], lo_, hi_) for a, (lo_, hi_) in zip(starts, bounds)]
        return ref, keep, windows

    def near_ref(self, q, inv2s2):
        r"""``(Q,)`` float64: a lower bound on each query's best log-weight :math:`\max_j(\log c_j -
        s\|q - y_j\|^2)`, the better exact log-weight of the two rows next to it in projection order
        (``O(Q·P)``; at high noise within a few nats of the best, since every row is then about as
        far from the query)."""
        q64, dev = q.double(), q.device
        i = torch.searchsorted(self.z.to(dev), q64 @ self.u.to(dev)).clamp_(1, max(1, self.n_rows - 1))
        i = torch.stack([i - 1, i]).clamp_max_(self.n_rows - 1)                           # (2, Q)
        d2 = (q64 - self.y.to(dev)[i].double()).pow(2).sum(2)
        return (self.logc.to(dev)[i] - inv2s2.double() * d2).amax(0)

    def _covers(self, q, inv2s2, tol):
        """Whether every query's window (:meth:`plan`) spans the whole bank whatever its ``ref``: the
        narrowest window, for ``ref = max log c`` (no log-weight exceeds it), does. Then planning could
        skip nothing by windows (the clusters' bounds are not consulted: evaluating the whole bank
        is exact either way)."""
        if tol <= 0:
            return True
        zq = q.double() @ self.u.to(q.device)
        h = ((self.log_total - math.log(tol) - float(self.logc.max())) / inv2s2.double()).clamp_min(0).sqrt()
        return bool(((zq - h) <= float(self.z[0])).all() and ((zq + h) >= float(self.z[-1])).all())

    def cluster_bounds(self, q, inv2s2):
        """Squared distances ``(Q, K)`` of float64 queries ``q`` ``(Q, P)`` to the cluster centres, and
        the bounds ``log C_k − s ℓ_k(q)²`` ``(Q, K)`` (``s = inv2s2`` ``(Q,)``) that no row of cluster k
        can exceed: ``ℓ_k = max(0, ‖q − m_k‖ − r_k) ≤ ‖q − y‖`` (triangle inequality)."""
        c = self.centre.to(q.device)
        qn, cn = q.pow(2).sum(1, keepdim=True), c.pow(2).sum(1)
        d2 = qn - 2 * q @ c.T + cn
        # float64 rounding of d2 is below 1e-13 (‖q‖² + ‖c‖²): remove it, so that ell is a lower bound
        dist = (d2 - 1e-13 * (qn + cn)).clamp_min(0).sqrt()
        ell = (dist - self.radius.to(q.device) * (1 + 1e-12)).clamp_min(0)
        return d2, self.log_mass.to(q.device) - inv2s2[:, None] * ell.pow(2)

    def _keep(self, q, inv2s2, floor):
        """``(Q, K)``: the clusters whose bound with the largest mass, ``log max C − s ℓ_k²``, reaches
        ``floor`` ``(Q,)`` (a superset of ``log C_k − s ℓ_k² ≥ floor``), by one float64 product.

        ``max(0, ‖q − m_k‖ − r_k) ≤ T`` with ``T² = (log max C − floor)/s`` is ``‖q − m_k‖² ≤ (r_k + T)²``,
        i.e. ``[q, 1, ‖q‖² − T² − δ, T] · [−2m_k, ‖m_k‖² − r_k², 1, −2r_k] ≤ 0`` (``δ``: a margin above
        the product's float64 rounding, so that no cluster the bound keeps is dropped)."""
        if not math.isfinite(float(floor.min())):
            return torch.ones(q.shape[0], self.n_clusters, dtype=torch.bool, device=q.device)
        c, r = self.centre.to(q.device), self.radius.to(q.device) * (1 + 1e-12)
        t2 = (self.log_mass.max().to(q.device) - floor).clamp_min(0) / inv2s2
        qn = q.pow(2).sum(1)
        delta = 1e-12 * (qn.sqrt() + t2.sqrt() + float(c.norm(dim=1).max() + r.max())) ** 2
        lhs = torch.cat([q, torch.ones_like(qn)[:, None], (qn - t2 - delta)[:, None], t2.sqrt()[:, None]], 1)
        rhs = torch.cat([-2 * c, (c.pow(2).sum(1) - r.pow(2))[:, None], torch.ones_like(r)[:, None],
                         -2 * r[:, None]], 1)
        return (rhs @ lhs.T <= 0).T                   # laid out cluster by cluster, for _by_cluster

    def _groups(self, near, group, span):
        """Groups ``(a, b, first, last)`` of consecutive sorted queries ``a:b`` whose nearest clusters
        ``first..last`` hold at most ``span`` rows (or one cluster), at most ``group`` queries."""
        ids, counts = torch.unique_consecutive(near, return_counts=True)
        start, out, a, b, f = self.start.tolist(), [], 0, 0, None
        for k, n in zip(ids.tolist(), counts.tolist()):
            if f is not None and (b + n - a > group or start[k + 1] - start[f] > span):
                out.append((a, b, f, last))
                a, f = b, None
            f = k if f is None else f
            last = k
            while b + n - a > group:                           # one cluster with many queries
                out.append((a, a + group, f, k))
                a += group
            b += n
        out.append((a, b, f, last))
        return out

    # cost of the evaluation by clusters relative to the windows': per pair, and per active cluster in pairs
    # of a window. With the clusters in one call of the fused kernel (cluster_sums), 1 and 0 chose best in
    # paired runs along Chapter 6's trajectory on one CPU thread (8x8 and 16x16 digits, k = 3 and 5; the
    # torch loop over clusters had been fitted at 1.3 and 1e4; it is not tuned without the kernel). Either
    # choice gives the same result.
    _pair_cost, _overhead = 1.0, 0
    # at most this many pairs (queries x rows) are evaluated whole without planning (~1-2 ms a call),
    # which would cost more than it saves
    _direct_pairs = 2**21
    # skip planning when even the narrowest window spans the whole bank (_covers: high noise)
    _skip_planning = True
    # cost per pair of the whole bank in groups of 512 queries, relative to the windows' groups of 64
    # (measured with the fused kernel on one CPU thread, k = 3 and 5: 0.70-0.87)
    _whole_cost = 0.8

    @staticmethod
    def _margin(dtype) -> float:
        """How far (natural log units) the shift may lie above the best log-weight: the largest weight
        then stays above e^-margin, far from the clamp at the floor (e^-87; e^-700 in float64)."""
        return 600.0 if dtype == torch.float64 else 40.0

    def _by_cluster(self, q, inv2s2, ref, keep, block: int = 2**16):
        """Posterior means ``(Q, V)``: each kept cluster against the queries that keep it.

        The (cluster, query) pairs of ``keep`` ``(Q, K)`` are taken cluster by cluster; each pair gets a
        shift and the sums ``[Σ w v, Σ w]`` of its weights relative to it, and the pairs of a query are
        combined at the end in float64. The shift is the query's ``ref`` when no row of the cluster can
        exceed it by more than ``2^40`` (by the bound ``max_{j∈k} log c_j − s ℓ_k²``; ``2^600`` where the
        logits, and so the weights, are float64), otherwise the cluster's maximum log-weight (one pass more
        per pair). Logits are taken relative to the cluster's centre, in float64 when the float32 rounding
        estimate ``eps·((max ‖q − m‖ + r)²·s + max |shift| + max log c)`` exceeds 1e-4. With the fused
        kernel all of it runs in one call (:func:`companion._native.cluster_sums`, which weighs float64
        logits in float64); otherwise by torch, in blocks of about ``block`` pairs, with the weights in the
        queries' type (so float32 queries keep the 2^40 limit for float64 logits too).
        """
        Q, dev, V = q.shape[0], q.device, self.v.shape[1]
        if self._native(q):
            sums, flags = _native.cluster_sums(
                q.double().contiguous(), inv2s2.double().contiguous(), ref.double().contiguous(), keep.T,
                self.centre, self.radius, self.log_cmax, self.start, self._native_tables(True, q.dtype),
                self._native_tables(True, torch.float64), -126.0, 40.0 / _LOG2E, 600.0 / _LOG2E, _ROUNDING)
            self.n_fixed = int((flags[keep.any(0)] & 1).sum())                 # kept clusters with a fixed shift
            return sums[:, :V] / sums[:, V:]
        kk, qq = (x.contiguous() for x in keep.T.contiguous().nonzero().unbind(1))   # pairs, cluster by cluster
        per = torch.bincount(kk, minlength=self.n_clusters).tolist()
        ends = torch.tensor(per).cumsum(0).tolist()
        start = self.start.tolist()
        # log2 units: logits clamped at `floor`; a fixed shift when the bound is at most `margin` above it
        floor, margin = (-126.0, 40.0) if q.dtype != torch.float64 else (-1000.0, 600.0)
        vals = self._centred(q.dtype)[1]
        radius, log_cmax, centre = self.radius.to(dev), self.log_cmax.to(dev), self.centre.to(dev)
        q64, s64, P = q.double(), inv2s2.double(), q.shape[1]
        tops, sums = [], []                                        # per pair, in pair order
        k, a, self.n_fixed = 0, 0, 0                           # n_fixed: clusters with a fixed shift
        while a < len(qq):
            last = k                                               # clusters k..last, pairs a:b
            while last + 1 < self.n_clusters and ends[last + 1] - a <= block:
                last += 1
            b = ends[last]
            qi, ki = qq[a:b], kk[a:b]
            s, r = s64.index_select(0, qi), ref.index_select(0, qi)
            lhs = torch.empty(b - a, P + 3, dtype=torch.float64, device=dev)   # [2sqc, −s, 1, −s‖qc‖² − shift]
            qc = torch.sub(q64.index_select(0, qi), centre.index_select(0, ki), out=lhs[:, :P])
            dist = torch.linalg.vector_norm(qc, dim=1)
            seg = lambda t: torch.zeros(last + 1 - k, dtype=torch.float64, device=dev).scatter_reduce_(  # noqa: E731
                0, ki - k, t, "amax")
            ub = log_cmax.index_select(0, ki) - s * (dist - radius.index_select(0, ki)).clamp_min(0).pow(2)
            fixed = seg(ub - r) <= margin / _LOG2E                   # ub: no log-weight exceeds it
            shift = torch.where(fixed[ki - k], r, torch.zeros_like(r))
            # float32 rounding estimate per cluster: eps·((max √s‖q − m‖ + r·max √s)² + max|shift| + max log c)
            rounding = _EPS32 * ((seg(dist * s.sqrt()) + radius[k:last + 1] * seg(s).sqrt()) ** 2
                                 + seg(shift.abs()) + log_cmax[k:last + 1])
            exact, fixed = (rounding > _ROUNDING).tolist(), fixed.tolist()
            s = s.mul_(_LOG2E)[:, None]
            lhs[:, P + 2] = -(s[:, 0] * dist.pow(2) + _LOG2E * shift)
            qc.mul_(2 * s)
            lhs[:, P:P + 2] = torch.cat([-s, torch.full_like(s, _LOG2E)], 1)
            lhs32 = lhs.to(q.dtype) if not all(exact) else None
            # top: each pair's log2 weight at 0 (its shift, plus its maximum where the shift is not fixed)
            top, bsum = _LOG2E * shift, torch.zeros(b - a, V + 1, dtype=torch.float64, device=dev)
            for c in range(k, last + 1):
                if not per[c]:
                    continue
                self.n_fixed += fixed[c - k]
                i, j = ends[c] - per[c] - a, ends[c] - a
                rows = slice(start[c], start[c + 1])
                dt = torch.float64 if exact[c - k] else q.dtype
                logit = (lhs[i:j] if exact[c - k] else lhs32[i:j]) @ self._centred(dt)[0][rows].T  # (n, m)
                if not fixed[c - k]:
                    top[i:j] = logit.amax(1)
                    logit.sub_(top[i:j, None].to(dt))
                w = logit.to(q.dtype).clamp_min_(floor).exp2_()    # in the input's dtype
                bsum[i:j] = (vals[:, rows] @ w.T).T
            tops.append(top)
            sums.append(bsum)
            k, a = last + 1, b
        top = torch.cat(tops)
        sums = torch.cat(sums)
        best = torch.full((Q,), -math.inf, dtype=torch.float64, device=dev).scatter_reduce_(0, qq, top, "amax")
        acc = torch.zeros(Q, V + 1, dtype=torch.float64, device=dev).index_add_(
            0, qq, sums * torch.exp2(top - best[qq])[:, None])
        return acc[:, :V] / acc[:, V:]

    def _centred(self, dtype, centred=True):
        """Cluster by cluster: ``[y − m, ‖y − m‖², log c, 1]`` ``(n, P+3)`` (m: the row's cluster
        centre; ``centred=False``: m = 0) and ``[v, 1]ᵀ`` ``(V+1, n)`` in ``dtype`` (cached)."""
        key = ("centred", dtype, centred)
        if key not in self.__dict__:
            label = torch.repeat_interleave(torch.arange(self.n_clusters, device=self.start.device), self.start.diff())
            y = self.y[self.members].double()
            yc = y - self.centre[label].to(y.device) if centred else y
            self.__dict__[key] = (_rows(yc, self.logc[self.members]).to(dtype),
                                  _values(self.v[self.members]).contiguous().to(dtype))
        return self.__dict__[key]

    def _native(self, q) -> bool:
        """Whether the fused kernel evaluates the pairs of queries ``q`` (logits in float32 or float64):
        float32 on the CPU, at most 3 channels, :attr:`native` set and the kernel available."""
        return self.native and _native.runs(q, self.v.shape[1])

    def _native_tables(self, centred: bool, dtype=torch.float32):
        """The tables of :meth:`_centred` (``centred``) or :meth:`_table` in ``dtype``, transposed,
        with ``_native.PAD`` zero columns appended, for the fused kernel (cached)."""
        key = ("native", centred, dtype)
        if key not in self.__dict__:
            tab, vals = (self._centred if centred else self._table)(dtype)[:2]
            self.__dict__[key] = (F.pad(tab.T, (0, _native.PAD)), F.pad(vals, (0, _native.PAD)))
        return self.__dict__[key]

    def _table(self, dtype):
        """``[y, ‖y‖², log c, 1]`` ``(n, P+3)`` and ``[v, 1]ᵀ`` ``(V+1, n)`` in ``dtype`` (cached)."""
        key = ("table", dtype)
        if key not in self.__dict__:
            y = self.y.double()
            self.__dict__[key] = (_rows(y, self.logc).to(dtype), _values(self.v).contiguous().to(dtype),
                                  y.norm(dim=1).max())
        return self.__dict__[key]

    def _softmax_mean(self, q, inv2s2, ref, rows: slice, rows_per_chunk):
        """Softmax-weighted mean of ``v`` over the bank slice ``rows`` for a group of queries.

        Logits ``−‖q−y‖²/2σ² + log c − ref`` come out of one product ``[2sq, −s, 1, −s‖q‖² − ref] ·
        [y, ‖y‖², log c, 1]`` (s = 1/2σ²), with q and y shifted by a centring point when that
        reduces float32 cancellation, in float64 when the rounding estimate
        ``eps·(‖q−c‖ + ‖y−c‖)²·s`` exceeds 1e-4; the logits are shifted by ``max log c`` when that
        keeps the largest weight above e^-40 (float32), otherwise the maximum is tracked per chunk
        (running log-sum-exp); each chunk's weighted sums are added in float64.
        """
        n, P = q.shape
        table, vals, ymax = self._table(q.dtype)
        table, vals = table[rows], vals[:, rows]
        smax = float(inv2s2.max())
        dt, qc, ynorm, centred = q.dtype, q, float(ymax), False
        rounding = _EPS32 * (float(q.norm(dim=1).max()) + float(ymax)) ** 2 * smax
        if q.dtype != torch.float64 and rounding > _ROUNDING:
            c = q.mean(0, keepdim=True)
            yc = self.y[rows].double() - c.double()
            ynorm = float(yc.norm(dim=1).max()) if len(yc) else 0.0
            spread = ynorm + float((q - c).norm(dim=1).max())
            if _EPS32 * spread**2 * smax > _ROUNDING:
                dt = torch.float64
            table = _rows(yc, self.logc[rows]).to(dt)
            qc, centred = q.double() - c.double(), True            # exact before a float64 product
        # logits in dt; weights (exp of logits minus their shift, ≤ 0) in the input's dtype
        table, vals, qc = table.to(dt), vals.to(q.dtype), qc.to(dt)
        # every log-weight is ≤ max log c, and the best one is ≥ ref: if max log c − ref is moderate,
        # shift by max log c (no overflow, no underflow of the largest weight, no running maximum)
        # exp2 leaves its fast path below the smallest normal number: logits are clamped at `floor`
        # (each clamped weight is below e^floor times the largest weight, or e^(floor + margin) when
        # the shift is fixed: a relative change below m·e^-47 of the normalizer)
        floor, margin = (-700.0 if q.dtype == torch.float64 else -87.0), self._margin(q.dtype)   # natural log
        if ref is None:                                     # no reference: each query's own maximum
            fixed, shift = False, torch.zeros(n, dtype=torch.float64, device=q.device)
        else:
            peak = float(self.logc.max()) - ref
            fixed = float(peak.max()) <= margin
            shift = ref + peak if fixed else ref
        lhs = self._lhs(qc, inv2s2, shift, dt)                                    # (n, P + 3), log2 units
        # no clamp needed when even the farthest row, ‖q − y‖ ≤ ‖q‖ + max‖y‖, stays above the floor
        far = (-inv2s2.double() * (qc.double().norm(dim=1) + ynorm) ** 2 - shift.double()).min()
        clamp = not fixed or float(far) < floor
        if self._native(q):            # the fused kernel: one segment, its own maximum unless the shift is fixed
            if not centred:
                tab, vals, lo, hi = *self._native_tables(False, dt), rows.start, rows.stop
            else:
                tab, vals = F.pad(table.T, (0, _native.PAD)), F.pad(vals.to(dt), (0, _native.PAD))
                lo, hi = 0, len(table)
            sums = _native.softmax_sums(lhs.contiguous(), tab, vals, [0], [n], [lo], [hi],
                                        torch.tensor([not fixed]), floor * _LOG2E)[0]
            return sums[:, :-1] / sums[:, -1:]
        acc = torch.zeros(vals.shape[0], n, dtype=torch.float64, device=q.device)    # [Σ w v, Σ w]ᵀ
        m_run = torch.full((1, n), -math.inf, dtype=torch.float64, device=q.device)
        for a in range(0, table.shape[0], rows_per_chunk):
            logit = lhs @ table[a:a + rows_per_chunk].T                # (n, m) (log-weight − shift) log2 e
            if not fixed:                                                      # running log-sum-exp
                m_new = torch.maximum(m_run, logit.amax(1).double()[None])
                acc *= torch.exp2(m_run - m_new)
                logit -= m_new.T.to(dt)
                m_run = m_new
            logit = logit.to(q.dtype)
            if clamp:
                logit.clamp_min_(floor * _LOG2E)
            # [v, 1]ᵀ · wᵀ: a wide output, several times faster than w · [v, 1] with its two columns
            acc += (vals[:, a:a + rows_per_chunk] @ logit.exp2_().T).double()
        return (acc[:-1] / acc[-1:]).T
