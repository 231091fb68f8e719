r"""A deduplicated, projection-sorted bank of candidate patches: the fast path of :mod:`companion.els`.

The ELS posterior of a query patch :math:`q` is a softmax over a bank of candidate patches
:math:`y_j` with centre values :math:`v_j` (Kamb & Ganguli 2025, eq. 3):

.. math::  D(q) = \frac{\sum_j c_j\, e^{-\|q - y_j\|^2/2\sigma^2}\, v_j}{\sum_j c_j\, e^{-\|q - y_j\|^2/2\sigma^2}}

Two reductions make it fast without changing the result beyond a stated tolerance:

* **Deduplication.** Identical (patch, centre) pairs are stored once with their multiplicity
  :math:`c_j`, which enters as a log-weight :math:`\log c_j` (exact).
* **A window in one projection.** The bank is sorted by :math:`z_j = u\cdot y_j`, its projection on
  its principal axis :math:`u` (a unit vector). Since :math:`\|q - y\| \ge |u\cdot q - z_j|`, all
  candidates with :math:`|u\cdot q - z_j| \ge h` carry together at most
  :math:`C e^{-h^2/2\sigma^2}` (:math:`C = \sum_j c_j`), while the largest weight is at least
  :math:`e^{L}`, the best log-weight among the candidates nearest to :math:`u\cdot q` in the
  projection (computed exactly). With :math:`h^2 = 2\sigma^2(\log(C/\text{tol}) - L)` the
  candidates outside the window carry at most ``tol`` times the softmax's normalizer, so the
  posterior mean moves by at most :math:`2\,\text{tol}\,\max_j|v_j|`. The window is a contiguous
  slice of the sorted bank; queries sorted by their projection share slices in groups.

Logits come out of one matrix product per group of queries, after shifting both sides by the
group's mean query when that reduces the float32 cancellation of :math:`\|q\|^2 - 2q\cdot y +
\|y\|^2`, and in float64 whenever the estimated float32 rounding of a logit exceeds ``1e-4``.
Logits that could fall below the smallest normal number are clamped there (torch's exp is ~100x slower beyond it; the
clamped weights change the normalizer by less than ``m·e^-47``). The softmax-weighted sums come out
of a second product laid out as ``[v, 1]ᵀ · wᵀ`` (a wide output, several times faster than
``w · [v, 1]``) and are accumulated in float64.
"""
from __future__ import annotations

import math

import torch

__all__ = ["PatchBank"]

_EPS32 = 2.0 ** -24
_ROUNDING = 1e-4   # largest estimated float32 rounding of a logit before float64 is used


class PatchBank:
    """Candidate patches ``(N, P)`` with centre values ``(N, V)``, deduplicated and sorted by projection.

    Args:
        patches: ``(N, P)`` candidate patch vectors.
        values: ``(N, V)`` the values a posterior averages (the patches' centre pixels).
        dedup: merge identical (patch, value) rows into one with its count.
    """

    def __init__(self, patches: torch.Tensor, values: torch.Tensor, dedup: bool = True):
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
        proj = y @ u
        order = torch.argsort(proj, stable=True)
        self.z = proj[order].contiguous()
        rows, counts = rows[order], counts[order]
        self.y, self.v = rows[:, :P].contiguous(), rows[:, P:].contiguous()
        self.logc = counts.double().log()
        self.n_rows = rows.shape[0]
        self.log_total = math.log(float(counts.sum()))

    def posterior_mean(self, q: torch.Tensor, inv2s2: torch.Tensor, tol: float, group: int = 64,
                       near: int = 512, rows_per_chunk: int = 4096) -> torch.Tensor:
        """Posterior means ``(Q, V)`` of queries ``q`` ``(Q, P)`` with ``inv2s2 = 1/2σ²`` ``(Q,)``.

        ``tol = 0`` keeps every candidate (deduplication alone, exact).
        """
        Q, P = q.shape
        dev, N = q.device, self.n_rows
        s64 = inv2s2.double()
        zq = q.double() @ self.u
        pos = torch.searchsorted(self.z, zq)
        # the narrowest window any reference could give; if it covers the bank for every query, a
        # reference from a few candidates suffices (it also bounds the shift of the logits)
        if tol > 0:
            h_min = ((self.log_total - math.log(tol) - float(self.logc.max())) / s64).sqrt()
            if bool(((zq - h_min <= self.z[0]) & (zq + h_min >= self.z[-1])).all()):
                near = min(near, 16)
        table64 = self._table(torch.float64)[0]
        order = torch.argsort(zq)
        out = torch.empty(Q, self.v.shape[1], dtype=torch.float64, device=dev)
        for a in range(0, Q, group):
            idx = order[a:a + group]
            # exact best log-weight over the candidates nearest in the projection (one product)
            lo = max(0, min(int(pos[idx].min()) - near // 2, N - near))
            hi = min(N, max(int(pos[idx].max()) + near // 2, lo + near))
            qg, sg = q[idx].double(), s64[idx, None]
            lhs = torch.cat([2 * sg * qg, -sg, torch.ones_like(sg), -sg * qg.pow(2).sum(1, keepdim=True)], 1)
            ref = (lhs @ table64[lo:hi].T).amax(1)
            if tol > 0:
                h = ((self.log_total - math.log(tol) - ref).clamp_min(0) / s64[idx]).sqrt()
                first = min(int(torch.searchsorted(self.z, zq[idx] - h).min()), lo)
                last = max(int(torch.searchsorted(self.z, zq[idx] + h, right=True).max()), hi)
            else:
                first, last = 0, N
            out[idx] = self._softmax_mean(q[idx], inv2s2[idx], ref, slice(first, last), rows_per_chunk)
        return out.to(q.dtype)

    def _table(self, dtype):
        """``[y, ‖y‖², log c, 1]`` ``(n, P+3)`` and ``[v, 1]ᵀ`` ``(V+1, n)`` in ``dtype`` (cached)."""
        key = ("table", dtype)
        if key not in self.__dict__:
            y = self.y.double()
            one = torch.ones_like(self.logc[:, None])
            self.__dict__[key] = (torch.cat([y, y.pow(2).sum(1, keepdim=True), self.logc[:, None], one], 1).to(dtype),
                                  torch.cat([self.v.double(), one], 1).T.contiguous().to(dtype), y.norm(dim=1).max())
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
        dt, qc, ynorm = q.dtype, q, float(ymax)
        rounding = _EPS32 * (float(q.norm(dim=1).max()) + float(ymax)) ** 2 * smax
        if q.dtype != torch.float64 and rounding > _ROUNDING:
            c = q.mean(0, keepdim=True)
            yc = self.y[rows].double() - c.double()
            ynorm = float(yc.norm(dim=1).max()) if len(yc) else 0.0
            spread = ynorm + float((q - c).norm(dim=1).max())
            if _EPS32 * spread**2 * smax > _ROUNDING:
                dt = torch.float64
            table = torch.cat([yc, yc.pow(2).sum(1, keepdim=True), self.logc[rows, None],
                               torch.ones_like(yc[:, :1])], 1).to(dt)
            qc = q - c
        table, vals, qc = table.to(dt), vals.to(dt), qc.to(dt)
        # every log-weight is ≤ max log c, and the best one is ≥ ref: if max log c − ref is moderate,
        # shift by max log c (no overflow, no underflow of the largest weight, no running maximum)
        peak = float(self.logc.max()) - ref
        # exp leaves its fast path below the smallest normal number: logits are clamped at `floor`
        # (each clamped weight is below e^floor times the largest weight, or e^(floor + margin) when
        # the shift is fixed: a relative change below m·e^-47 of the normalizer)
        floor, margin = (-700.0, 600.0) if dt == torch.float64 else (-87.0, 40.0)
        fixed = float(peak.max()) <= margin
        shift = ref + peak if fixed else ref
        s = inv2s2.to(dt)[:, None]
        lhs = torch.cat([2 * s * qc, -s, torch.ones_like(s), -s * qc.pow(2).sum(1, keepdim=True)
                         - shift.to(dt)[:, None]], 1)                          # (n, P + 3)
        # no clamp needed when even the farthest row, ‖q − y‖ ≤ ‖q‖ + max‖y‖, stays above the floor
        far = (-inv2s2.double() * (qc.double().norm(dim=1) + ynorm) ** 2 - shift.double()).min()
        clamp = not fixed or float(far) < floor
        acc = torch.zeros(vals.shape[0], n, dtype=torch.float64, device=q.device)    # [Σ w v, Σ w]ᵀ
        m_run = torch.full((1, n), -math.inf, dtype=torch.float64, device=q.device)
        for a in range(0, table.shape[0], rows_per_chunk):
            logit = lhs @ table[a:a + rows_per_chunk].T                        # (n, m) log-weight − shift
            if not fixed:                                                      # running log-sum-exp
                m_new = torch.maximum(m_run, logit.amax(1).double()[None])
                acc *= torch.exp(m_run - m_new)
                logit -= m_new.T.to(dt)
                m_run = m_new
            if clamp:
                logit.clamp_min_(floor)
            # [v, 1]ᵀ · wᵀ: a wide output, several times faster than w · [v, 1] with its two columns
            acc += (vals[:, a:a + rows_per_chunk] @ logit.exp_().T).double()
        return (acc[:-1] / acc[-1:]).T
