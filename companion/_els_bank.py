r"""A deduplicated, block-bounded bank of candidate patches: the fast path of :mod:`companion.els`.

The ELS posterior of a query patch :math:`q` is a softmax over a bank of candidate patches
:math:`y_j` with centre values :math:`v_j` (Kamb & Ganguli 2025, eq. 3):

.. math::  D(q) = \frac{\sum_j c_j\, e^{-\|q - y_j\|^2/2\sigma^2}\, v_j}{\sum_j c_j\, e^{-\|q - y_j\|^2/2\sigma^2}}

Two exact reductions make it fast without changing the result beyond a stated tolerance:

* **Deduplication.** Identical (patch, centre) pairs are stored once with their multiplicity
  :math:`c_j`, which enters as a log-weight :math:`\log c_j` (exact).
* **Block bounds.** The bank is split into blocks by recursive median cuts along the principal
  axis; each block :math:`b` stores its centroid :math:`m_b`, radius :math:`\rho_b` and total
  count :math:`n_b`. For a query, :math:`\|q - y\| \ge \ell_b = \max(0, \|q - m_b\| - \rho_b)` for
  every member, so the block's total weight is at most :math:`n_b e^{-\ell_b^2/2\sigma^2}`. The
  largest weight is at least :math:`L^\star`, the best weight in the query's nearest block
  (computed exactly). A block is skipped when its bound is below :math:`\text{tol}\cdot L^\star/N_b`
  (:math:`N_b` blocks), so the skipped mass is at most ``tol`` times the softmax's normalizer
  and the posterior mean moves by at most :math:`2\,\text{tol}\,\max_j|v_j|`.

Logits are computed with one matrix product per group of similar queries, after shifting both
sides by the group's mean query (this removes the cancellation of
:math:`\|q\|^2 - 2q\cdot y + \|y\|^2` for the candidates that matter), in float64 whenever the
estimated float32 rounding of a logit exceeds ``1e-7``; the softmax-weighted sums are accumulated
in float64.
"""
from __future__ import annotations

import math

import torch

__all__ = ["PatchBank"]

_EPS32 = 2.0 ** -24


class PatchBank:
    """Candidate patches ``(N, P)`` with centre values ``(N, V)``, deduplicated and split into blocks.

    Args:
        patches: ``(N, P)`` candidate patch vectors.
        values: ``(N, V)`` the values a posterior averages (the patches' centre pixels).
        block: largest number of distinct patches in a block.
        dedup: merge identical (patch, value) rows into one with its count.
    """

    def __init__(self, patches: torch.Tensor, values: torch.Tensor, block: int = 256, dedup: bool = True):
        P = patches.shape[1]
        rows = torch.cat([patches, values], 1)
        if dedup:
            rows, counts = torch.unique(rows, dim=0, return_counts=True)
        else:
            counts = torch.ones(rows.shape[0], dtype=torch.long, device=rows.device)
        order, bounds = _median_tree(rows[:, :P].double(), block)
        rows, counts = rows[order], counts[order]
        self.y, self.v = rows[:, :P].contiguous(), rows[:, P:].contiguous()
        self.logc = counts.double().log()
        self.n_rows, self.n_blocks = rows.shape[0], len(bounds) - 1
        self.starts = torch.tensor(bounds[:-1], device=rows.device)
        self.sizes = torch.tensor([b - a for a, b in zip(bounds, bounds[1:])], device=rows.device)
        block_of = torch.repeat_interleave(torch.arange(self.n_blocks, device=rows.device), self.sizes)
        y64 = self.y.double()
        cnt = torch.zeros(self.n_blocks, dtype=torch.float64, device=rows.device)
        self.centre = torch.zeros(self.n_blocks, P, dtype=torch.float64, device=rows.device)
        self.centre.index_add_(0, block_of, y64)
        self.centre /= self.sizes[:, None].double()
        radius = torch.zeros(self.n_blocks, dtype=torch.float64, device=rows.device)
        radius.scatter_reduce_(0, block_of, (y64 - self.centre[block_of]).norm(dim=1), "amax")
        self.radius = radius * (1 + 1e-9) + 1e-12                      # a little slack for rounding
        self.log_count = cnt.index_add_(0, block_of, counts.double()).log()
        self.block_of = block_of
        # padded member table (n_blocks, block): each block's rows, repeated to a fixed width
        width = int(self.sizes.max())
        pos = torch.arange(width, device=rows.device)
        self.members = self.starts[:, None] + pos[None] % self.sizes[:, None]
        self.vmax = float(self.v.abs().max()) if self.n_rows else 0.0

    # ------------------------------------------------------------------------------------------

    def posterior_mean(self, q: torch.Tensor, inv2s2: torch.Tensor, tol: float,
                       group: int = 256, rows_per_chunk: int = 4096) -> torch.Tensor:
        """Posterior means ``(Q, V)`` of queries ``q`` ``(Q, P)`` with ``inv2s2 = 1/2σ²`` ``(Q,)``.

        ``tol = 0`` keeps every block (deduplication alone, exact).
        """
        Q, P = q.shape
        dev = q.device
        s64 = inv2s2.double()
        # distances to the block centroids and the exact best log-weight in each query's nearest block
        dc = torch.cdist(q.double(), self.centre)                              # (Q, n_blocks)
        near = dc.argmin(1)
        ref = torch.empty(Q, dtype=torch.float64, device=dev)
        y = self.y.to(q.dtype)
        step = max(1, 2 ** 21 // (self.members.shape[1] * P))
        for a in range(0, Q, step):
            mem = self.members[near[a:a + step]]                               # (q, width)
            d2 = (q[a:a + step, None] - y[mem]).pow(2).sum(-1).double()
            ref[a:a + step] = (self.logc[mem] - d2 * s64[a:a + step, None]).amax(1)
        lb = (dc - self.radius).clamp_min(0)
        bound = self.log_count - lb.pow(2) * s64[:, None] - ref[:, None]      # log(block mass / ref)
        if tol > 0:
            need = bound > math.log(tol / self.n_blocks)
        else:
            need = torch.ones(Q, self.n_blocks, dtype=torch.bool, device=dev)
        need[torch.arange(Q, device=dev), near] = True
        order = torch.argsort(near)
        out = torch.empty(Q, self.v.shape[1], dtype=torch.float64, device=dev)
        for a in range(0, Q, group):
            idx = order[a:a + group]
            blocks = need[idx].any(0)
            rows = None if bool(blocks.all()) else torch.nonzero(blocks[self.block_of]).squeeze(1)
            peak = bound[idx][:, blocks].amax(1)                               # ≥ max log-weight − ref
            out[idx] = self._softmax_mean(q[idx], inv2s2[idx], ref[idx], rows, peak, rows_per_chunk)
        return out.to(q.dtype)

    def _table(self, dtype):
        """``[y, ‖y‖², log c, 1]`` and ``[v, 1]`` in ``dtype`` (cached)."""
        key = ("table", dtype)
        if key not in self.__dict__:
            y = self.y.double()
            one = torch.ones_like(self.logc[:, None])
            self.__dict__[key] = (torch.cat([y, y.pow(2).sum(1, keepdim=True), self.logc[:, None], one], 1).to(dtype),
                                  torch.cat([self.v.double(), one], 1).to(dtype), y.norm(dim=1).max())
        return self.__dict__[key]

    def _softmax_mean(self, q, inv2s2, ref, rows, peak, rows_per_chunk):
        """Softmax-weighted mean of ``v`` over the bank rows ``rows`` (None: all) for a group of queries.

        Logits ``−‖q−y‖²/2σ² + log c − ref`` come out of one product ``[2sq, −s, 1, −s‖q‖² − ref] ·
        [y, ‖y‖², log c, 1]`` (s = 1/2σ²), with q and y shifted by a centring point when that
        reduces float32 cancellation, and in float64 when the rounding estimate
        ``eps·(‖q−c‖ + ‖y−c‖)²·s`` exceeds 1e-5. Each chunk's weighted sums are added in float64.
        """
        n, P = q.shape
        table, vals, ymax = self._table(q.dtype)
        smax = float(inv2s2.max())
        dt = q.dtype
        c = None
        if q.dtype != torch.float64 and _EPS32 * (float(q.norm(dim=1).max()) + float(ymax)) ** 2 * smax > 1e-5:
            c = q.mean(0, keepdim=True)
            yc = self.y[rows if rows is not None else slice(None)].double() - c.double()
            spread = float(yc.norm(dim=1).max()) + float((q - c).norm(dim=1).max())
            if _EPS32 * spread**2 * smax > 1e-5:
                dt = torch.float64
            table = torch.cat([yc, yc.pow(2).sum(1, keepdim=True), self.logc[rows if rows is not None else
                               slice(None), None], torch.ones_like(yc[:, :1])], 1).to(dt)
            vals = vals if rows is None else vals[rows]
            rows = None
        # shift every logit by an upper bound of its row's maximum (ref + peak): no overflow, and the
        # row's largest weight is at least e^-peak; if that could underflow, track the maximum instead
        limit = 600.0 if dt == torch.float64 else 60.0
        running = float(peak.max()) > limit
        table, vals = table.to(dt), vals.to(dt)
        qc = (q if c is None else q - c).to(dt)
        s = inv2s2.to(dt)[:, None]
        shift = ref + (0 if running else peak)
        lhs = torch.cat([2 * s * qc, -s, torch.ones_like(s), -s * qc.pow(2).sum(1, keepdim=True)
                         - shift.to(dt)[:, None]], 1)                          # (n, P + 3)
        acc = torch.zeros(n, vals.shape[1], dtype=torch.float64, device=q.device)
        m_run = torch.full((n, 1), -math.inf, dtype=torch.float64, device=q.device)
        total = table.shape[0] if rows is None else len(rows)
        for a in range(0, total, rows_per_chunk):
            r = slice(a, a + rows_per_chunk) if rows is None else rows[a:a + rows_per_chunk]
            logit = lhs @ table[r].T                                           # (n, m) log-weight − shift
            if running:
                m_new = torch.maximum(m_run, logit.amax(1, keepdim=True).double())
                acc *= torch.exp(m_run - m_new)
                logit -= m_new.to(dt)
                m_run = m_new
            acc += (logit.exp_() @ vals[r]).double()
        return acc[:, :-1] / acc[:, -1:]


def _median_tree(y: torch.Tensor, block: int):
    """Order of the rows of ``y`` ``(N, P)`` and block boundaries from recursive median cuts along
    each block's principal axis, until a block has at most ``block`` rows."""
    order = torch.arange(y.shape[0], device=y.device)
    segments = [(0, y.shape[0])]
    done = []
    while segments:
        a, b = segments.pop()
        if b - a <= block:
            done.append((a, b))
            continue
        idx = order[a:b]
        z = y[idx] - y[idx].mean(0)
        # principal axis by a few power iterations (cheap, deterministic start)
        v = z.abs().sum(0) + 1e-12
        for _ in range(6):
            v = z.T @ (z @ v)
            v = v / v.norm().clamp_min(1e-300)
        order[a:b] = idx[torch.argsort(z @ v, stable=True)]
        mid = (a + b) // 2
        segments += [(a, mid), (mid, b)]
    done.sort()
    return order, [a for a, _ in done] + [done[-1][1] if done else 0]
