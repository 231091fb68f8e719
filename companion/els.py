r"""Score machines for a finite training set: ideal (IS), local (LS) and equivariant local (ELS).

Kamb & Ganguli, "An analytic theory of creativity in convolutional diffusion models" (ICML 2025).
All three are exact Bayes-optimal denoisers ``D(x, sigma) -> x0_hat`` on the canonical scale
:math:`x = x_0 + \sigma\varepsilon`, each under a different constraint:

* **IS** (ideal score): one posterior over the K training images,
  :math:`w_k \propto \exp(-\|x - x_0^{(k)}\|^2 / 2\sigma^2)`, and
  :math:`D(x)=\sum_k w_k x_0^{(k)}`. It memorizes: as σ → 0 it returns the nearest training image.
* **LS** (local score): pixel *i* sees only its k×k neighbourhood :math:`\Omega_i` and keeps its own
  posterior over the training images, computed from the patches at the *same* location,
  :math:`w_k(i) \propto \exp(-\|x_{\Omega_i} - x^{(k)}_{0,\Omega_i}\|^2/2\sigma^2)`, and
  :math:`D(x)_i = \sum_k w_k(i)\, x^{(k)}_{0,i}`.
* **ELS** (equivariant local score): as LS, but the posterior runs over the k×k patches at *all*
  positions of all training images (the training set augmented by every translation); the estimate of
  pixel *i* is the weighted mean of the patch centres. With ``padding="circular"`` the machine is
  exactly translation equivariant. With ``padding="zeros"`` (the paper's model of zero-padded
  networks, "boundary-broken" ELS) patches are zero padded and a patch may only be matched by a
  training patch with the same padding pattern: interior pixels compare with all interior patches,
  pixels near an edge with the patches at the same distance from that edge, corner pixels with the
  patches at the same position.

One mechanism covers all three: every pixel position belongs to a *class* of positions that may be
exchanged (LS: itself; circular ELS: all positions; zero-padded ELS: the positions with the same
padding pattern; IS: the whole image as one "position"), and the posterior of a query patch runs over
the training patches at the positions of its class. Distances are computed with ``unfold`` and batched
matrix products, and the softmax is accumulated over chunks of the training set with a running
log-sum-exp, so memory stays bounded (``chunk_elements``) and the weights are exact. Large ELS classes
(unconditional) go through :class:`companion._els_bank.PatchBank` instead: identical training patches
are merged with their counts as log-weights, and candidates whose total weight is provably below
``tol`` times the normalizer are skipped (the result moves by at most ``2·tol·max|x0|``): whole
k-means clusters of patches per query, or everything outside a window in one projection. The banks
of at most ``_joint_rows`` rows that a call evaluates without planning (zero padding's edge classes,
and all at high noise), float32 on the CPU, share one call of the fused kernel of
:mod:`companion._native` (two where some need float64 logits), a segment each.

Also here: a locality schedule (patch size per σ) and its calibration against a trained network
(:mod:`companion._els_calibrate`), and the per-image Pearson correlation that the paper's evaluation
code computes (its abstract reports the median of r²).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from . import _native
from ._checks import as_sigma, as_tensor
from ._els_bank import _LOG2E, PatchBank

__all__ = [
    "ScoreMachine", "ideal", "local", "equivariant_local", "position_classes", "local_weights",
    "LocalitySchedule", "Calibration", "calibrate", "pearson_r", "KINDS", "PADDINGS",
]

KINDS = ("is", "ls", "els")
PADDINGS = ("zeros", "circular")


# --------------------------------------------------------------------------------------------------
# argument checks


def _check_data(data, name="data") -> torch.Tensor:
    t = as_tensor(data, name)
    if t.dim() != 4:
        raise ValueError(f"{name} must be a (K, C, H, W) image tensor, got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} must contain at least one image")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t


def _check_patch_size(k, height: int, width: int, name="patch_size") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        # accept integral tensors / numpy ints
        try:
            if float(k) != int(k):
                raise ValueError
            k = int(k)
        except Exception:
            raise ValueError(f"{name} must be an odd positive int, got {k!r}") from None
    if k <= 0 or k % 2 == 0:
        raise ValueError(f"{name} must be an odd positive int (a patch has a centre pixel), got {k}")
    if k > min(height, width):
        raise ValueError(
            f"{name} = {k} is larger than the image ({height}×{width}); use at most {min(height, width)}"
        )
    return k


def _check_x(x, shape, name="x") -> torch.Tensor:
    t = as_tensor(x, name)
    if t.dim() != 4:
        raise ValueError(f"{name} must be a (B, C, H, W) image batch, got shape {tuple(t.shape)}")
    if tuple(t.shape[1:]) != tuple(shape):
        what = "channels" if t.shape[1] != shape[0] else "image size"
        raise ValueError(
            f"{name} has shape {tuple(t.shape)}: its {what} do not match the training images "
            f"(C, H, W) = {tuple(shape)}"
        )
    return t


# --------------------------------------------------------------------------------------------------
# position classes


def _axis_keys(n: int, d: int) -> list[tuple[int, int]]:
    """Padding pattern along one axis for each index: (#padded before, #padded after)."""
    return [(max(0, d - i), max(0, i + d - (n - 1))) for i in range(n)]


def position_classes(kind: str, padding: str, height: int, width: int, patch_size: int) -> list[torch.Tensor]:
    """Which pixel positions may be exchanged by a machine, grouped for batched computation.

    Positions are flat indices ``i * width + j``. Returns a list of int64 tensors, each ``(G, n)``:
    ``G`` classes of ``n`` positions each. A query patch at a position of a class is compared with the
    training patches at all positions of the same class. ``"ls"``: every position alone
    (one tensor ``(H*W, 1)``); ``"els"`` with ``"circular"``: one class of all positions;
    ``"els"`` with ``"zeros"``: the positions whose zero-padded k×k patch has the same padding
    pattern (interior, each edge band row/column, each corner position). ``"is"``: ``[[0]]`` (the
    whole image is one position).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if kind == "is":
        return [torch.zeros(1, 1, dtype=torch.long)]
    n_pos = height * width
    if kind == "ls":
        return [torch.arange(n_pos).reshape(n_pos, 1)]
    if padding == "circular":
        return [torch.arange(n_pos).reshape(1, n_pos)]
    d = patch_size // 2
    rows, cols = _axis_keys(height, d), _axis_keys(width, d)
    classes: dict[tuple, list[int]] = {}
    for i in range(height):
        for j in range(width):
            classes.setdefault((rows[i], cols[j]), []).append(i * width + j)
    by_size: dict[int, list[list[int]]] = {}
    for members in classes.values():
        by_size.setdefault(len(members), []).append(members)
    return [torch.tensor(groups, dtype=torch.long) for _, groups in sorted(by_size.items())]


def _patches(images: torch.Tensor, kind: str, padding: str, k: int) -> torch.Tensor:
    """``(N, C, H, W)`` → patch vectors ``(N, P, L)``: P = C·k² (IS: C·H·W), L positions (IS: 1)."""
    if kind == "is":
        return images.reshape(images.shape[0], -1, 1)
    d = k // 2
    mode = "circular" if padding == "circular" else "constant"
    padded = F.pad(images, (d, d, d, d), mode=mode) if d > 0 else images
    return F.unfold(padded, k)


def _centres(images: torch.Tensor, kind: str) -> torch.Tensor:
    """The values a posterior averages: ``(N, V, L)`` (pixel values; IS: whole images)."""
    if kind == "is":
        return images.reshape(images.shape[0], -1, 1)
    return images.reshape(images.shape[0], images.shape[1], -1)


# --------------------------------------------------------------------------------------------------
# the machine


class ScoreMachine:
    r"""The IS, LS or ELS machine for a training set: a denoiser ``D(x, sigma) -> x0_hat``.

    For each pixel (IS: for the whole image) the estimate is a posterior mean over candidate training
    patches :math:`y` with Bayes weights :math:`w(y) \propto \exp(-\|x_\Omega - y\|^2 / 2\sigma^2)`
    (Kamb & Ganguli 2025, eqs. 1–3); the estimate is the weighted mean of the candidates' centre pixels.
    The softmax is exact and streamed over the training set with a running log-sum-exp.

    Args:
        data: training images ``(K, C, H, W)``.
        kind: ``"is"``, ``"ls"`` or ``"els"``.
        patch_size: odd int ≤ min(H, W), or a callable ``sigma (float) -> int`` such as a
            :class:`LocalitySchedule` (ignored for ``"is"``).
        padding: ``"zeros"`` (boundary-broken; the model of zero-padded networks) or ``"circular"``
            (exactly translation equivariant).
        labels: optional ``(K,)`` class labels of the training images, for class conditioning.
        chunk_elements: bound on the number of pairwise distances held in memory at once.
        cache_elements: the training patches of a patch size are tabulated once and kept when the
            table has at most this many elements (otherwise they are recomputed chunk by chunk).
        tol: for the ELS classes with at least ``bank_min`` candidates (and no labels) the candidates
            are deduplicated and pruned (:mod:`companion._els_bank`): candidates whose total
            weight is provably below ``tol`` times the softmax normalizer are skipped, which moves a
            posterior mean by at most ``2·tol·max|x0|``. ``tol=0`` skips nothing (exact).
        bank_min: smallest class (candidates per query) that uses the bank; ``float("inf")`` gives
            the plain streamed machine everywhere.

    Call: ``machine(x, sigma, labels=None, patch_size=None)`` with ``x`` ``(B, C, H, W)``, ``sigma`` a
    float or ``(B,)`` tensor; ``labels`` ``(B,)`` restricts each sample's posterior to the training
    images of its class; ``patch_size`` overrides the machine's. Returns ``x0_hat`` ``(B, C, H, W)``.
    The computation runs in ``x``'s dtype and on ``x``'s device (float64 input: float64 ground truth).
    """

    def __init__(self, data, kind: str = "els", patch_size=3, padding: str = "zeros", labels=None,
                 chunk_elements: int = 2 ** 20, cache_elements: int = 2 ** 25, tol: float = 1e-7,
                 bank_min: int = 4096):
        self.data = _check_data(data)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if padding not in PADDINGS:
            raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
        self.kind, self.padding = kind, padding
        _, _, H, W = self.data.shape
        if callable(patch_size):
            self.patch_size = patch_size
        else:
            self.patch_size = _check_patch_size(patch_size, H, W) if kind != "is" else None
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.shape != (self.data.shape[0],):
                raise ValueError(f"labels must have shape ({self.data.shape[0]},), got {tuple(labels.shape)}")
            labels = labels.long()
        self.labels = labels
        if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements <= 0:
            raise ValueError(f"chunk_elements must be a positive int, got {chunk_elements!r}")
        self.chunk_elements = chunk_elements
        self.cache_elements = int(cache_elements)
        tol = float(tol)
        if not 0 <= tol < 0.5:
            raise ValueError(f"tol must lie in [0, 0.5), got {tol!r}")
        if isinstance(bank_min, bool) or not isinstance(bank_min, (int, float)) or bank_min < 1:
            raise ValueError(f"bank_min must be a positive number, got {bank_min!r}")
        self.tol, self.bank_min = tol, bank_min
        self._cache: dict = {}
        self._tables: dict = {}
        self._banks: dict = {}
        self._classes: dict = {}

    def __repr__(self) -> str:
        k = "" if self.kind == "is" else f", patch_size={self.patch_size!r}, padding={self.padding!r}"
        return f"ScoreMachine(kind={self.kind!r}, K={self.data.shape[0]}{k})"

    @property
    def shape(self) -> tuple:
        """The image shape ``(C, H, W)``."""
        return tuple(self.data.shape[1:])

    def _data_on(self, like: torch.Tensor) -> torch.Tensor:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache = {key: self.data.to(dtype=like.dtype, device=like.device)}
            self._tables, self._banks = {}, {}
        return self._cache[key]

    def _size_for(self, sigma: float, override) -> int:
        _, H, W = self.shape
        k = override if override is not None else self.patch_size
        if callable(k):
            k = k(sigma)
        return _check_patch_size(k, H, W)

    def with_labels(self, labels) -> Callable:
        """A denoiser ``(x, sigma) -> x0_hat`` conditioned on ``labels`` ``(B,)`` (for a sampler)."""
        return lambda x, sigma: self(x, sigma, labels=labels)

    @torch.no_grad()
    def __call__(self, x, sigma, labels=None, patch_size=None) -> torch.Tensor:
        x = _check_x(x, self.shape)
        s = as_sigma(sigma, x).reshape(-1).expand(x.shape[0])
        allowed = self._allowed(labels, x)
        if self.kind == "is":
            return self._posterior_mean(x, s, allowed, 0)
        ks = [self._size_for(v, patch_size) for v in s.tolist()]
        out = torch.empty_like(x)
        for k in sorted(set(ks)):
            sel = torch.tensor([i for i, kk in enumerate(ks) if kk == k], device=x.device)
            if len(sel) == x.shape[0]:
                return self._posterior_mean(x, s, allowed, k)
            out[sel] = self._posterior_mean(x[sel], s[sel], None if allowed is None else allowed[sel], k)
        return out

    def _allowed(self, labels, x) -> torch.Tensor | None:
        """``(B, K)`` boolean mask of the training images each sample's posterior may use."""
        if labels is None:
            return None
        if self.labels is None:
            raise ValueError("labels were given but the machine was built without training labels")
        lab = torch.as_tensor(labels).long().reshape(-1)
        if lab.numel() == 1:
            lab = lab.expand(x.shape[0])
        if lab.shape != (x.shape[0],):
            raise ValueError(f"labels must have shape ({x.shape[0]},) or be one int, got {tuple(lab.shape)}")
        missing = set(lab.tolist()) - set(self.labels.tolist())
        if missing:
            raise ValueError(f"labels {sorted(missing)} have no training images")
        return (lab[:, None] == self.labels[None, :]).to(x.device)

    def _candidates(self, data: torch.Tensor, k: int, idx: torch.Tensor, a: int, b: int):
        """Candidate patches of training images ``a:b`` at the positions ``idx`` (G, n).

        Returns ``ca`` ``(G, P+1, m·n)`` (patch vectors with their squared norm appended) and ``vg``
        ``(G, m·n, V+1)`` (centre values with a 1 appended, so one product gives Σw·centre and Σw).
        For small training sets the whole table is built once per patch size and cached.
        """
        table = self._tabulated(data, k, idx)
        if table is None:
            return self._build(data[a:b], k, idx)
        ca, vg = table
        n = idx.shape[1]
        return ca[:, :, a * n:b * n], vg[:, a * n:b * n]

    def _build(self, imgs, k, idx):
        """``(ca, vg)`` of :meth:`_candidates` for the images ``imgs``."""
        m, G, n = imgs.shape[0], idx.shape[0], idx.shape[1]
        cg = _patches(imgs, self.kind, self.padding, k)[:, :, idx]                  # (m, P, G, n)
        cg = cg.permute(2, 1, 0, 3).reshape(G, -1, m * n)
        ca = torch.cat([cg, (cg**2).sum(1, keepdim=True)], 1)
        vg = _centres(imgs, self.kind)[:, :, idx].permute(2, 0, 3, 1).reshape(G, m * n, -1)
        return ca, torch.cat([vg, torch.ones_like(vg[..., :1])], -1)

    def _tabulated(self, data, k, idx):
        """The table of :meth:`_candidates` for the whole training set, built once and cached when
        it has at most ``cache_elements`` entries; ``None`` when it is larger."""
        key = (k, tuple(idx.shape), int(idx[0, 0]), data.dtype, data.device)
        if key not in self._tables:
            size = data.shape[0] * idx.numel() * (_patches(data[:1], self.kind, self.padding, k).shape[1]
                                                  + data.shape[1] + 2)
            self._tables[key] = self._build(data, k, idx) if size <= self.cache_elements else None
        return self._tables[key]

    def _posterior_mean(self, x: torch.Tensor, s: torch.Tensor, allowed, k: int) -> torch.Tensor:
        data = self._data_on(x)
        B, C, H, W = x.shape
        q = _patches(x, self.kind, self.padding, k)                            # (B, P, L)
        P, L = q.shape[1], q.shape[2]
        V = C * H * W if self.kind == "is" else C
        out = torch.empty(B, V, L, dtype=x.dtype, device=x.device)
        inv2s2 = (0.5 / s**2).reshape(1, B, 1, 1)
        K = data.shape[0]
        key = (self.kind, self.padding, H, W, k)
        if key not in self._classes:
            self._classes[key] = position_classes(*key)
        banks = [self.kind == "els" and allowed is None and K * idx.shape[1] >= self.bank_min
                 for idx in self._classes[key]]                        # classes through a PatchBank
        banked = [pos.to(x.device) for idx, b in zip(self._classes[key], banks) if b for pos in idx]
        for pos, est in zip(banked, self._bank_means(data, q, s, k, banked)):
            out[:, :, pos] = est
        for idx in (idx for idx, b in zip(self._classes[key], banks) if not b):
            idx = idx.to(x.device)
            G, n = idx.shape
            if allowed is None and PatchBank.native and _native.runs(x, V):
                fused = self._fused_mean(data, q, inv2s2, k, idx)
                if fused is not None:
                    out[:, :, idx] = fused
                    continue
            qg = q[:, :, idx].permute(2, 0, 3, 1).reshape(G, B, n, P)
            # logits in one product: [2q/2σ², −1/2σ²]·[y; ‖y‖²] = −(‖y‖² − 2q·y)/2σ²
            # (the query's own ‖q‖² is a constant of each softmax and is dropped)
            qa = torch.cat([qg * (2 * inv2s2), (-inv2s2).expand(G, B, n, 1)], -1).reshape(G, B * n, P + 1)
            m_run = torch.full((G, B * n, 1), -torch.inf, dtype=x.dtype, device=x.device)
            acc = torch.zeros(G, V + 1, B * n, dtype=x.dtype, device=x.device)   # [Σ w·centre, Σ w]ᵀ
            step = max(1, self.chunk_elements // max(1, G * B * n * n))
            for a in range(0, K, step):
                m = min(step, K - a)
                ca, vg = self._candidates(data, k, idx, a, a + m)
                logit = torch.bmm(qa, ca)                                          # (G, B·n, m·n)
                if allowed is not None:
                    ok = allowed[:, a:a + m].reshape(1, B, 1, m, 1).expand(1, B, n, m, n).reshape(1, B * n, m * n)
                    logit.masked_fill_(~ok, -torch.inf)
                m_new = torch.maximum(m_run, logit.amax(-1, keepdim=True))
                safe = torch.where(torch.isfinite(m_new), m_new, torch.zeros_like(m_new))
                # clamped where exp would leave its fast path (adds < m·e^-87 relative weight)
                w = logit.sub_(safe).clamp_min_(-87.0 if x.dtype != torch.float64 else -700.0).exp_()
                if allowed is not None:
                    w.masked_fill_(~ok, 0.0)
                # rescale, then add [centre, 1]ᵀ·wᵀ (a wide output: faster than w·[centre, 1])
                scale = torch.exp(m_run - safe).transpose(1, 2)
                acc = torch.baddbmm(acc * scale, vg.transpose(1, 2), w.transpose(1, 2))
                m_run = m_new
            est = (acc[:, :V] / acc[:, V:]).reshape(G, V, B, n).permute(2, 1, 0, 3)       # (B, V, G, n)
            out[:, :, idx] = est
        return out.reshape(B, C, H, W)

    def _fused_mean(self, data, q, inv2s2, k, idx):
        """The posterior means ``(B, V, G, n)`` of the loop above (no labels, float32 on the CPU) by
        the fused kernel of :mod:`companion._native`: one segment per group of positions, each query
        with its own maximum, the same float32 logits; ``None`` when the table is too large to cache."""
        G, n = idx.shape
        B, P, K = q.shape[0], q.shape[1], data.shape[0]
        key = ("fused", k, tuple(idx.shape), int(idx[0, 0]))
        if key not in self._tables:
            table = self._tabulated(data, k, idx)                       # (G, P+1, K n), (G, K n, V+1)
            self._tables[key] = None if table is None else (
                F.pad(table[0].permute(1, 0, 2).reshape(P + 1, -1), (0, _native.PAD)),
                F.pad(table[1].permute(2, 0, 1).reshape(table[1].shape[2], -1), (0, _native.PAD)))
        if self._tables[key] is None:
            return None
        table, vals = self._tables[key]
        s = inv2s2.reshape(1, B, 1, 1)
        qg = q[:, :, idx].permute(2, 0, 3, 1).reshape(G, B, n, P)
        lhs = _LOG2E * torch.cat([qg * (2 * s), (-s).expand(G, B, n, 1)], -1)          # log2 units
        rows = torch.arange(G + 1) * (B * n)
        cols = torch.arange(G + 1) * (K * n)
        sums = _native.softmax_sums(lhs.reshape(G * B * n, P + 1).contiguous(), table, vals, rows[:-1], rows[1:],
                                    cols[:-1], cols[1:], torch.ones(G, dtype=torch.bool), -126.0)[0]
        est = (sums[:, :-1] / sums[:, -1:]).to(q.dtype)                                    # (G B n, V)
        return est.reshape(G, B, n, -1).permute(1, 3, 0, 2)

    def _bank_means(self, data, q, s, k, classes) -> list:
        """Posterior means ``(B, V, n)`` of the queries at the positions of each class ``(n,)`` in ``classes``,
        each through a :class:`~companion._els_bank.PatchBank` of the training patches at those positions.
        The banks of at most ``_joint_rows`` rows that a call evaluates without planning share a call of
        the fused kernel (float32 on the CPU; one call per type of logits), one segment each against
        their tables side by side (copies, hence the cap on rows; :meth:`PatchBank.unplanned_lhs`: rows
        and queries relative to the bank's mean row). They agree with :meth:`PatchBank.posterior_mean`
        to the float32 rounding of the logits, which both keep below 1e-4."""
        B, out, banks, keys = q.shape[0], [], [], []
        for pos in classes:
            key = (k, int(pos[0]), len(pos))
            if key not in self._banks:
                cand = _patches(data, self.kind, self.padding, k)[:, :, pos]                 # (K, P, n)
                vals = _centres(data, self.kind)[:, :, pos]                                   # (K, V, n)
                self._banks[key] = PatchBank(cand.permute(0, 2, 1).reshape(-1, cand.shape[1]),
                                             vals.permute(0, 2, 1).reshape(-1, vals.shape[1]))
            bank = self._banks[key]
            qq = q[:, :, pos].permute(0, 2, 1).reshape(B * len(pos), -1)
            inv2s2 = (0.5 / s**2).repeat_interleave(len(pos))
            joint = (bank.n_rows <= self._joint_rows and bank._native(qq) and bank.unplanned(qq, inv2s2, self.tol)
                     and bank.unplanned_lhs(qq, inv2s2))
            out.append(joint or bank.posterior_mean(qq, inv2s2, self.tol))
            banks.append(bank if joint else None)
            keys.append(key)
        for dt in (torch.float32, torch.float64):
            part = [i for i, b in enumerate(banks) if b is not None and out[i][0].dtype == dt]
            if not part:
                continue
            table, vals, edges = self._bank_table([keys[i] for i in part], dt)
            rows = torch.tensor([0] + [len(out[i][0]) for i in part]).cumsum(0)
            sums = _native.softmax_sums(torch.cat([out[i][0] for i in part]), table, vals, rows[:-1], rows[1:],
                                        edges[:-1], edges[1:], torch.tensor([out[i][1] for i in part]),
                                        -87.0 * _LOG2E)[0]
            est = (sums[:, :-1] / sums[:, -1:]).to(q.dtype)
            for i, a, b in zip(part, rows[:-1].tolist(), rows[1:].tolist()):
                out[i] = est[a:b]
        return [o.reshape(B, len(pos), -1).permute(0, 2, 1) for o, pos in zip(out, classes)]

    # banks of at most this many rows may share a call of the kernel (their tables are copied side by side)
    _joint_rows = 2**16

    def _bank_table(self, keys, dtype):
        """The tables of the banks ``keys`` (:meth:`PatchBank._about_mean`) side by side for the fused
        kernel: ``(table, vals, edges)``, bank i in the columns ``edges[i]:edges[i + 1]`` (cached; the
        latest set for each patch size)."""
        key = ("banks", dtype) + tuple(keys)
        if key not in self._tables:
            tabs = [self._banks[b]._about_mean(dtype)[:2] for b in keys]
            n = [self._banks[b].n_rows for b in keys]
            self._tables = {a: t for a, t in self._tables.items() if a[:2] != key[:2] or a[2][0] != keys[0][0]}
            self._tables[key] = (F.pad(torch.cat([t[:, :m] for (t, _), m in zip(tabs, n)], 1), (0, _native.PAD)),
                                 F.pad(torch.cat([v[:, :m] for (_, v), m in zip(tabs, n)], 1), (0, _native.PAD)),
                                 torch.tensor([0] + n).cumsum(0))
        return self._tables[key]


def ideal(data, labels=None, **kw) -> ScoreMachine:
    """The ideal-score (IS) machine: the exact posterior mean over whole training images."""
    return ScoreMachine(data, "is", None, labels=labels, **kw)


def local(data, patch_size=3, padding: str = "zeros", labels=None, **kw) -> ScoreMachine:
    """The local-score (LS) machine: each pixel's posterior from its k×k patch at the same location."""
    return ScoreMachine(data, "ls", patch_size, padding, labels=labels, **kw)


def equivariant_local(data, patch_size=3, padding: str = "zeros", labels=None, **kw) -> ScoreMachine:
    """The equivariant local-score (ELS) machine: posterior over k×k patches at all (allowed) positions.

    ``padding="zeros"`` is the boundary-broken ELS of zero-padded networks; ``"circular"`` the exactly
    translation-equivariant one.
    """
    return ScoreMachine(data, "els", patch_size, padding, labels=labels, **kw)


def local_weights(x, data, sigma, patch_size: int) -> torch.Tensor:
    r"""The LS machine's Bayes weights (zero padding): :math:`w_k(i)` for every pixel and training image.

    :math:`w_k(i) = \mathrm{softmax}_k\big(-\|x_{\Omega_i} - x^{(k)}_{0,\Omega_i}\|^2 / 2\sigma^2\big)`
    where :math:`\Omega_i` is the zero-padded k×k patch around pixel i (Kamb & Ganguli 2025, eq. 2).

    Args:
        x: ``(B, C, H, W)``; data: ``(K, C, H, W)``; sigma: float or ``(B,)``; patch_size: odd int.

    Returns:
        ``(B, K, H, W)``, summing to 1 over K. (Not streamed: for small cases and teaching.)
    """
    data = _check_data(data)
    x = _check_x(x, data.shape[1:])
    k = _check_patch_size(patch_size, *data.shape[2:])
    s = as_sigma(sigma, x).reshape(-1, 1, 1, 1)
    sq = ((x[:, None] - data[None].to(x)) ** 2).sum(2)                      # (B, K, H, W)
    summed = F.avg_pool2d(sq, k, stride=1, padding=k // 2, count_include_pad=True) * k * k
    return torch.softmax(-summed / (2 * s**2), dim=1)


# --------------------------------------------------------------------------------------------------
# metrics and data


def pearson_r(a, b) -> torch.Tensor:
    """Per-image Pearson correlation of two batches ``(B, ...)`` → ``(B,)``.

    Each image is flattened, its mean removed and normalized to unit length; r is the dot product.
    This is what Kamb & Ganguli's evaluation code computes (plain r); their abstract reports the
    median of r², and their Fig. 4 writes r².
    """
    a, b = as_tensor(a, "a"), as_tensor(b, "b")
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(f"a and b must be batches of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.reshape(a.shape[0], -1)
    b = b.reshape(b.shape[0], -1).to(a)
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-30)


from ._els_calibrate import Calibration, LocalitySchedule, calibrate  # noqa: E402  (re-exported)
