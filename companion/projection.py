r"""Diffusion as approximate projection (Permenter & Yuan, ICML 2024).

For a finite data set :math:`K = \{x_1, \dots, x_M\} \subset \mathbb R^n` (the book writes d for n)
this module gives

* the exact distance and projection, :math:`\operatorname{dist}_K(x) = \min_i \|x - x_i\|`,
  :math:`\operatorname{proj}_K(x) = \arg\min_i \|x - x_i\|` (:func:`dist`, :func:`project`);
* the σ-smoothed squared distance (:func:`smoothed_dist2`), with the book's constant convention

  .. math:: \operatorname{dist}^2_K(x, σ) = -2σ^2 \log \sum_{i=1}^M
            \exp\!\Big(-\frac{\|x_i - x\|^2}{2σ^2}\Big),

  which tends to :math:`\operatorname{dist}_K(x)^2` as σ → 0 and whose gradient is the ideal
  denoiser's noise prediction: :math:`\tfrac12 \nabla_x \operatorname{dist}^2_K(x, σ) =
  σ\,ε^*(x, σ) = x - D^*(x; σ)` (the paper's Theorem; checked by autograd in the tests);
* measurements of how well a denoiser approximates projection along a sampling trajectory:
  :class:`Recorder` (wraps any denoiser and records every call a sampler makes, so the trajectory
  of *any* sampler in :mod:`companion.samplers` is available without changing it, and the calls
  are counted: the number of function evaluations, NFE), :func:`relative_error` and
  :func:`error_model`, which estimates the constants (ν, η) of the paper's relative-error model
  :math:`\|σ_t ε_θ(x, σ_t) - \nabla f(x)\| \le η \operatorname{dist}_K(x)` whenever
  :math:`\operatorname{dist}_K(x)/ν \le \sqrt n σ_t \le ν \operatorname{dist}_K(x)`, with
  :math:`f = \tfrac12 \operatorname{dist}_K^2` and :math:`\nabla f(x) = x - \operatorname{proj}_K(x)`;
* :func:`budget_schedule`: the σ's a sampler visits for a given budget of denoiser calls (NFE), for
  the schedules compared in the paper (:data:`SCHEDULES`: DDPM's timesteps subsampled uniformly,
  EDM's, log-linear);
* :func:`sampler_table`: the experiment of the paper's Table 2 (samplers × schedules × NFE), scored by
  any sample-quality function (:func:`run_sampler` runs one cell), and :func:`format_table` prints it;
  :func:`ode_reference` is the exact probability-flow-ODE endpoint that deterministic samplers of an
  exact denoiser are scored against.

Images ``(B, C, H, W)`` are flattened to vectors of length ``n = C·H·W``; the data set ``data``
has shape ``(M, *shape)`` with the same trailing shape as ``x``. Distances are computed from
explicit differences (not the ``‖x‖² − 2x·y + ‖y‖²`` expansion), in chunks, so they stay accurate
at σ = 1e-4 and memory stays bounded.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ._checks import as_sigma, as_tensor
from .metrics import nearest_neighbour_distance

__all__ = [
    "smoothed_dist2", "dist", "project", "relative_error", "Recorder",
    "ErrorModel", "error_model", "SPACINGS", "SCHEDULES", "budget_schedule", "ode_reference",
    "SAMPLERS", "run_sampler", "sampler_table", "format_table",
]

_CHUNK_ELEMENTS = 1 << 23  # elements of one (b, M, n) difference block


def _flat_pair(x, data, x_name: str = "x"):
    """``x`` ``(B, *shape)`` and ``data`` ``(M, *shape)`` as ``(B, n)`` and ``(M, n)`` in x's dtype."""
    x = as_tensor(x, x_name)
    data = as_tensor(data, "data", dtype=x.dtype, device=x.device)
    if x.dim() < 2:
        raise ValueError(f"{x_name} must have shape (B, *shape) with a batch dimension, got {tuple(x.shape)}")
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"data must be a non-empty set of shape (M, *shape), got {tuple(data.shape)}")
    if data.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"data points must have the shape of one {x_name}: data is {tuple(data.shape)}, "
            f"{x_name} is {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], -1), data.reshape(data.shape[0], -1)


def _sq_distance_blocks(x, data):
    """Yield ``(rows, d2)``: row slices of ``x`` and the squared distances ``‖x_b − data_i‖²``.

    Args:
        x: ``(B, n)`` points; data: ``(M, n)`` points (already flat, same dtype and device).

    Yields:
        ``rows`` (a slice of range(B)) and ``d2`` of shape ``(len(rows), M)``, computed from explicit
        differences in chunks of at most about 8M elements.
    """
    B, M, n = x.shape[0], data.shape[0], max(data.shape[1], 1)
    step = max(1, _CHUNK_ELEMENTS // (M * n))
    for start in range(0, B, step):
        rows = slice(start, min(B, start + step))
        yield rows, ((x[rows, None, :] - data[None]) ** 2).sum(-1)


def smoothed_dist2(x, data, sigma) -> torch.Tensor:
    r"""The σ-smoothed squared distance :math:`\operatorname{dist}^2_K(x, σ)` to a finite set.

    .. math:: \operatorname{dist}^2_K(x, σ) = -2σ^2 \log \sum_{x_0 \in K}
              \exp\!\big(-\|x_0 - x\|^2 / 2σ^2\big)

    (Permenter & Yuan 2024, Sec. 3, with the constant chosen so that
    :math:`\tfrac12\nabla_x \operatorname{dist}^2_K(x, σ) = σ ε^*(x, σ)` exactly). It is a soft
    minimum of the squared distances: ``min_i ‖x − x_i‖² − 2σ² log M ≤ dist²_K(x, σ) ≤ min_i ‖x − x_i‖²``.
    Differentiable in ``x`` (autograd gives the ideal denoiser); evaluated with log-sum-exp, finite
    at σ = 1e-4.

    Args:
        x: ``(B, *shape)`` query points.
        data: ``(M, *shape)`` the set K.
        sigma: float, 0-d or ``(B,)`` tensor, > 0.

    Returns:
        ``(B,)`` tensor.
    """
    x2, d = _flat_pair(x, data)
    s = as_sigma(sigma, x2).reshape(-1)  # () -> (1,), (B,1) -> (B,)
    s = s.expand(x2.shape[0]) if s.numel() == 1 else s

    out = []
    for rows, d2 in _sq_distance_blocks(x2, d):
        var = s[rows] ** 2
        out.append(-2 * var * torch.logsumexp(-d2 / (2 * var[:, None]), dim=1))
    return torch.cat(out)


def _nearest(x, data):
    x2, d = _flat_pair(x, data)
    return nearest_neighbour_distance(x2, d, return_index=True)


def dist(x, data) -> torch.Tensor:
    r"""Exact Euclidean distance :math:`\operatorname{dist}_K(x) = \min_{x_0\in K}\|x - x_0\|`.

    Args:
        x: ``(B, *shape)``; data: ``(M, *shape)``.

    Returns:
        ``(B,)`` tensor of distances.
    """
    return _nearest(x, data)[0]


def project(x, data, return_index: bool = False):
    r"""Exact projection :math:`\operatorname{proj}_K(x)` onto a finite set: the nearest data point.

    Ties (a non-unique projection, where :math:`\operatorname{dist}_K` is not differentiable) are
    broken by the smallest index.

    Args:
        x: ``(B, *shape)``; data: ``(M, *shape)``.
        return_index: also return the ``(B,)`` indices of the nearest points.

    Returns:
        ``(B, *shape)`` nearest points (and their indices if asked).
    """
    x_t = as_tensor(x, "x")
    idx = _nearest(x_t, data)[1]
    data = as_tensor(data, "data", dtype=x_t.dtype, device=x_t.device)
    out = data[idx]
    return (out, idx) if return_index else out


def relative_error(denoised, x, reference) -> torch.Tensor:
    r"""Relative error of a denoiser's output against a reference "projection" of ``x``.

    .. math:: \frac{\|D_θ(x; σ) - r(x)\|}{\|x - r(x)\|}

    With ``reference`` = the ideal denoiser's output :math:`D^*(x;σ)` this is
    :math:`\|ε_θ - ε^*\| / \|ε^*\|`; with ``reference`` = :math:`\operatorname{proj}_K(x)` it is
    :math:`\|σ ε_θ(x, σ) - \nabla f(x)\| / \operatorname{dist}_K(x)`, the η of the paper's
    relative-error model at one point.

    Args:
        denoised: ``(B, *shape)`` the denoiser's output :math:`D_θ(x;σ)`.
        x: ``(B, *shape)`` the noisy input.
        reference: ``(B, *shape)`` the reference point.

    Returns:
        ``(B,)`` tensor (``inf`` where ``x`` equals the reference and the output does not).
    """
    tensors = [as_tensor(t, name) for t, name in ((denoised, "denoised"), (x, "x"), (reference, "reference"))]
    if not (tensors[0].shape == tensors[1].shape == tensors[2].shape) or tensors[0].dim() < 1:
        raise ValueError(
            "denoised, x and reference must have the same shape (B, *shape), got "
            f"{[tuple(t.shape) for t in tensors]}"
        )
    den, xx, ref = (t.reshape(t.shape[0], -1) for t in tensors)
    return (den - ref).norm(dim=1) / (xx - ref).norm(dim=1)


class Recorder:
    """A denoiser that records every call: the trajectory of any sampler, and its NFE.

    ``Recorder(D)`` behaves like ``D`` (same arguments, same output) and appends each call's
    input ``x`` ``(B, *shape)``, noise level as a ``(B,)`` tensor and output to :attr:`xs`,
    :attr:`sigmas`, :attr:`outputs` (detached copies on the CPU). Pass it to a sampler, e.g.
    ``rec = Recorder(D); cp.samplers.sample(rec, sigmas, x)``; then ``rec.nfe`` is the number of
    function evaluations and ``rec.stacked()`` the trajectory as ``(T, B, *shape)`` tensors.
    Deterministic and stochastic samplers alike call the denoiser at every point they visit, so
    no sampler needs a callback argument for this.

    Args:
        D: a denoiser ``D(x, sigma, ...) -> x0_hat``.
        keep: store the tensors (``False`` only counts calls).
    """

    def __init__(self, D, keep: bool = True):
        if not callable(D):
            raise TypeError(f"D must be a denoiser (a callable), got {type(D).__name__}")
        self.D = D
        self.keep = keep
        self.nfe = 0
        self.xs: list[torch.Tensor] = []
        self.sigmas: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def __call__(self, x, sigma, *args, **kwargs):
        out = self.D(x, sigma, *args, **kwargs)
        self.nfe += 1
        if self.keep:
            s = torch.as_tensor(sigma, dtype=x.dtype).detach().cpu().reshape(-1)
            self.xs.append(x.detach().cpu().clone())
            self.sigmas.append(s.expand(x.shape[0]).clone() if s.numel() == 1 else s.clone())
            self.outputs.append(out.detach().cpu().clone())
        return out

    def stacked(self):
        """``(xs, sigmas, outputs)`` of shapes ``(T, B, *shape)``, ``(T, B)``, ``(T, B, *shape)``."""
        if not self.xs:
            raise ValueError("the Recorder has not recorded any call yet")
        return torch.stack(self.xs), torch.stack(self.sigmas), torch.stack(self.outputs)

    def reset(self) -> None:
        """Forget all recorded calls and set the count to zero."""
        self.nfe = 0
        self.xs, self.sigmas, self.outputs = [], [], []


@dataclass
class ErrorModel:
    r"""Measured constants of the relative-error model along trajectories (see :func:`error_model`).

    Attributes:
        sigma: ``(T, B)`` noise levels σ_t of the recorded calls.
        ratio: ``(T, B)`` :math:`\sqrt n σ_t / \operatorname{dist}_K(x_t)`.
        eta: ``(T, B)`` :math:`\|D_θ(x_t;σ_t) - \operatorname{proj}_K(x_t)\| / \operatorname{dist}_K(x_t)`.
    """

    sigma: torch.Tensor
    ratio: torch.Tensor
    eta: torch.Tensor

    def nu(self, q: float = 1.0) -> float:
        r"""Smallest ν ≥ 1 with :math:`1/ν \le` ratio :math:`\le ν` at a fraction ``q`` of the points."""
        r = self.ratio.reshape(-1)
        r = r[torch.isfinite(r) & (r > 0)]
        return max(1.0, torch.quantile(torch.maximum(r, 1 / r).double(), q).item())

    def eta_max(self, q: float = 1.0) -> float:
        """The ``q``-quantile of the pointwise η over all recorded points (``q = 1``: the maximum)."""
        e = self.eta.reshape(-1)
        return torch.quantile(e[torch.isfinite(e)].double(), q).item()

    def eta_within(self, nu: float, q: float = 1.0) -> float:
        r"""The ``q``-quantile of η over the points inside the ν band, :math:`1/ν \le r \le ν` (r = ratio).

        The error model only asks for η where the band condition holds, so this is the η that goes
        with a given ν (NaN if no point is inside the band).
        """
        if isinstance(nu, bool) or not isinstance(nu, (int, float)) or not nu >= 1:
            raise ValueError(f"nu must be a number >= 1, got {nu!r}")
        r, e = self.ratio.reshape(-1), self.eta.reshape(-1)
        inside = (r >= 1 / nu) & (r <= nu) & torch.isfinite(e)
        return torch.quantile(e[inside].double(), q).item() if inside.any() else float("nan")


def error_model(xs, sigmas, denoised, data) -> ErrorModel:
    r"""Estimate the paper's relative-error model (ν, η) along recorded trajectories.

    Permenter & Yuan (2024, Sec. 4) assume: if :math:`\operatorname{dist}_K(x)/ν \le \sqrt n σ_t
    \le ν \operatorname{dist}_K(x)` then :math:`\|σ_t ε_θ(x, σ_t) - \nabla f(x)\| \le η
    \operatorname{dist}_K(x)`, where :math:`σ_t ε_θ = x - D_θ` and :math:`\nabla f(x) = x -
    \operatorname{proj}_K(x)`. Along a trajectory we measure, at every visited point, the ratio
    :math:`\sqrt n σ_t / \operatorname{dist}_K(x_t)` (the smallest admissible ν is the largest of
    it and its inverse) and the pointwise η.

    Args:
        xs: ``(T, B, *shape)`` visited points (e.g. from :meth:`Recorder.stacked`).
        sigmas: ``(T, B)`` their noise levels.
        denoised: ``(T, B, *shape)`` the denoiser's outputs there.
        data: ``(M, *shape)`` the set K.

    Returns:
        An :class:`ErrorModel`.
    """
    xs, den = as_tensor(xs, "xs"), as_tensor(denoised, "denoised")
    sig = as_tensor(sigmas, "sigmas", dtype=xs.dtype)
    if xs.dim() < 3 or den.shape != xs.shape or sig.shape != xs.shape[:2]:
        raise ValueError(
            "need xs and denoised of shape (T, B, *shape) and sigmas of shape (T, B), got "
            f"{tuple(xs.shape)}, {tuple(den.shape)}, {tuple(sig.shape)}"
        )
    T, B = xs.shape[:2]
    flat_x = xs.reshape(T * B, *xs.shape[2:])
    proj = project(flat_x, data)
    distance = (flat_x - proj).reshape(T * B, -1).norm(dim=1)
    n = flat_x[0].numel()
    ratio = (n ** 0.5) * sig.reshape(-1) / distance
    eta = relative_error(den.reshape(flat_x.shape), flat_x, proj)
    return ErrorModel(sig.clone(), ratio.reshape(T, B), eta.reshape(T, B))


#: the σ spacings of :func:`budget_schedule`
SPACINGS = ("ddpm", "ddpm-leading", "karras", "loglinear")

#: the schedules of Chapter 8's tables: label -> (spacing, end points); see :func:`budget_schedule`
SCHEDULES = {
    "DDPM-uniform": ("ddpm", {}),
    "DDPM-leading": ("ddpm-leading", {}),
    "EDM (ρ = 7)": ("karras", {}),
    "log-linear 157→0.01": ("loglinear", {}),
    "log-linear 12.3→0.1": ("loglinear", dict(sigma_min=0.1, sigma_max=12.3)),
    "log-linear 12.3→0.1→0": ("loglinear", dict(sigma_min=0.1, sigma_max=12.3, to_zero=True)),
}


def _steps(spacing: str, nfe: int, heun: bool, to_zero: bool) -> int:
    """Steps of a schedule that fit ``nfe`` calls (Heun: 2 per step, 1 for a final step to σ = 0)."""
    if not heun:
        return nfe
    steps = (nfe + 1) // 2 if to_zero else nfe // 2
    if steps < 1:
        raise ValueError(f"nfe = {nfe} is too small for Heun on the {spacing!r} spacing (needs 2 calls)")
    return steps


def budget_schedule(spacing: str, nfe: int, heun: bool = False, sigma_min: float | None = None,
                    sigma_max: float | None = None, to_zero: bool | None = None) -> torch.Tensor:
    r"""The noise levels a sampler visits when it may call the denoiser ``nfe`` times.

    Spacings (Permenter & Yuan 2024, Sec. 6, the rows of their schedule table):

    * ``"ddpm"``: DDPM's discrete levels (linear β, T = 1000; :func:`companion.samplers.ddpm`) at the
      evenly spaced timesteps :math:`\mathrm{round}(T(1 - k/N))`, k = 0..N−1 ("trailing": starts at
      :math:`σ_T ≈ 157`, last positive level :math:`σ_{T/N}`), then 0;
    * ``"ddpm-leading"``: DDIM's original timesteps :math:`1 + jT/N`, j = N−1..0 (starts at
      :math:`σ_{901} ≈ 61` for N = 10, ends at :math:`σ_1 ≈ 0.01`), then 0;
    * ``"karras"``: EDM's schedule (:func:`companion.samplers.karras`, ρ = 7, default end points
      80 → 0.002), then 0;
    * ``"loglinear"``: N + 1 levels evenly spaced in log σ from ``sigma_max`` (default DDPM's
      :math:`σ_T ≈ 157`) to ``sigma_min`` (default 0.01 ≈ DDPM's :math:`σ_1`), *without* a final 0: the
      N steps end at ``sigma_min`` and no call is made there (Algorithm 2's
      :math:`σ_N > \dots > σ_0 > 0`); with ``to_zero=True`` instead N levels from ``sigma_max`` to
      ``sigma_min`` and then 0, so the last call, at ``sigma_min``, takes the step to σ = 0.

    For the (γ, μ) family of :func:`companion.samplers.sample` (``heun=False``) the schedule has N =
    ``nfe`` steps, one denoiser call each (a last step to σ = 0 is a call like any other). For EDM's
    Heun sampler (``heun=True``) each step costs two calls except a final Euler step to σ = 0: on the
    spacings ending with 0 it gets k = ⌈nfe/2⌉ steps (2k − 1 calls), on ``"loglinear"`` k = ⌊nfe/2⌋
    (2k calls; with ``to_zero``, like the others); so NFE ≤ ``nfe``, one less for some parities.

    Args:
        spacing: one of :data:`SPACINGS`.
        nfe: the budget of denoiser calls (a positive int).
        heun: the schedule for :func:`companion.samplers.heun` instead.
        sigma_min, sigma_max: end points of ``"loglinear"`` and ``"karras"`` (None: the defaults above;
            the DDPM spacings have fixed levels and reject them).
        to_zero: end ``"loglinear"`` with a step to σ = 0 (the other spacings always do; None: the
            spacing's default).

    Returns:
        Descending 1-D float tensor (``steps + 1`` levels).
    """
    from . import samplers

    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe <= 0:
        raise ValueError(f"nfe must be a positive int, got {nfe!r}")
    if to_zero is not None and spacing != "loglinear":
        raise ValueError(f"to_zero applies to the 'loglinear' spacing only; {spacing!r} always ends with 0")
    to_zero = spacing != "loglinear" or bool(to_zero)
    steps = _steps(spacing, nfe, heun, to_zero)
    if spacing.startswith("ddpm"):
        if sigma_min is not None or sigma_max is not None:
            raise ValueError(f"sigma_min/sigma_max do not apply to the {spacing!r} spacing (fixed levels)")
        return samplers.ddpm(steps, spacing="trailing" if spacing == "ddpm" else "leading")
    if spacing == "karras":
        return samplers.karras(steps, 0.002 if sigma_min is None else sigma_min,
                               80.0 if sigma_max is None else sigma_max)
    hi = float(samplers.ddpm(1000, append_zero=False)[0]) if sigma_max is None else sigma_max
    lo = 0.01 if sigma_min is None else sigma_min
    if to_zero:
        return samplers.loglinear(steps, lo, hi)
    return samplers.loglinear(steps + 1, lo, hi, append_zero=False)


#: the samplers compared in Chapter 8: (γ, μ) of :func:`companion.samplers.sample`, or ``"heun"``
SAMPLERS = {
    "DDIM": dict(gamma=1.0, mu=0.0),
    "DDPM": dict(gamma=1.0, mu=0.5),
    "Heun (EDM)": "heun",
    "gradient estimation": dict(gamma=2.0, mu=0.0),
}


def _params(sampler):
    """``sample``'s keyword arguments of a sampler spec, or ``"heun"``."""
    params = SAMPLERS.get(sampler, sampler) if isinstance(sampler, str) else sampler
    if not (params == "heun" or isinstance(params, dict)):
        raise ValueError(f"sampler must be one of {list(SAMPLERS)}, 'heun' or a dict of gamma/mu, got {sampler!r}")
    return params


def run_sampler(D, sampler, spacing: str, nfe: int, noise, generator: torch.Generator | None = None,
                sigma_min: float | None = None, sigma_max: float | None = None, to_zero: bool | None = None):
    r"""Draw samples with one sampler and spacing under a budget of ``nfe`` denoiser calls.

    Starts from :math:`x_N = σ_{\max}\,z` with the given standard-normal ``noise`` z (pass the same
    noise to every sampler: common random numbers make their differences less noisy) and runs
    :func:`companion.samplers.sample` with the sampler's (γ, μ), or :func:`companion.samplers.heun`,
    on :func:`budget_schedule`. Runs under ``torch.inference_mode``.

    Args:
        D: denoiser ``D(x, sigma) -> x0_hat``.
        sampler: a name in :data:`SAMPLERS`, a dict of ``sample``'s keyword arguments (e.g.
            ``dict(gamma=1.5)``) or ``"heun"``.
        spacing: one of :data:`SPACINGS`.
        nfe: budget of denoiser calls.
        noise: ``(B, *shape)`` standard normal start.
        generator: for the stochastic samplers (μ > 0).
        sigma_min, sigma_max, to_zero: end points of the ``"loglinear"``/``"karras"`` spacings (see
            :func:`budget_schedule`).

    Returns:
        ``(samples, nfe_used)``: ``(B, *shape)`` and the number of denoiser calls made.
    """
    from . import samplers

    params = _params(sampler)
    heun = params == "heun"
    sigmas = budget_schedule(spacing, nfe, heun=heun, sigma_min=sigma_min, sigma_max=sigma_max,
                             to_zero=to_zero)
    rec = Recorder(D, keep=False)
    noise = as_tensor(noise, "noise")
    with torch.inference_mode():
        x = float(sigmas[0]) * noise
        if heun:
            out = samplers.heun(rec, sigmas, x)
        else:
            out = samplers.sample(rec, sigmas, x, generator=generator, **params)
    return out, rec.nfe


def ode_reference(D, sigmas, noise, levels: int = 1000) -> torch.Tensor:
    r"""The probability-flow-ODE solution from :math:`σ_{\rm first}\,z` to :math:`σ_{\rm last}` of ``sigmas``.

    Integrates :math:`dx/dσ = (x - D(x;σ))/σ` with EDM's Heun sampler on ``levels`` levels evenly
    spaced in log σ from ``sigmas[0]`` to ``sigmas[-1]`` (to 1e-4, then an Euler step to 0, when the
    schedule ends at 0): the reference a deterministic sampler on ``sigmas`` approximates.

    Args:
        D: denoiser; sigmas: a schedule (only its end points are used); noise: ``(B, *shape)`` z.
        levels: fine levels (≈ 2 · ``levels`` denoiser calls).

    Returns:
        ``(B, *shape)``.
    """
    from . import samplers

    s = samplers.check_sigmas(sigmas)
    hi, lo = float(s[0]), float(s[-1])
    fine = samplers.loglinear(levels, lo if lo > 0 else min(1e-4, float(s[-2])), hi, append_zero=lo == 0)
    with torch.inference_mode():
        return samplers.heun(D, fine, hi * as_tensor(noise, "noise"))


def sampler_table(D, noise, score, nfes=(5, 10, 20, 50), samplers=None, schedules=None, seed: int = 0,
                  progress: bool = True) -> dict:
    r"""Score every sampler × schedule × NFE combination (the experiment of Permenter & Yuan 2024, Table 2).

    Args:
        D: denoiser ``D(x, sigma) -> x0_hat``.
        noise: ``(B, *shape)`` standard normal start, shared by all runs.
        score: ``score(samples, sigmas) -> float``, lower is better (e.g. a Fréchet distance to the
            data); ``sigmas`` is the schedule that produced the samples (so a reference can depend on it).
        nfes: budgets of denoiser calls.
        samplers: names or parameter dicts (default: all of :data:`SAMPLERS`), or a dict label → spec.
        schedules: names of :data:`SCHEDULES` (default: all of them), or a dict label → (spacing,
            end-point dict), see :func:`budget_schedule`.
        seed: seed of the generator of the stochastic samplers (re-seeded for every run).
        progress: show a tqdm progress bar.

    Returns:
        ``{(sampler label, schedule label, nfe): (score, nfe_used)}``; see :func:`format_table`.
    """
    from tqdm.auto import tqdm

    specs = samplers if isinstance(samplers, dict) else {s: s for s in (samplers or SAMPLERS)}
    scheds = schedules if isinstance(schedules, dict) else {k: SCHEDULES[k] for k in (schedules or SCHEDULES)}
    jobs = [(label, sc, n) for sc in scheds for label in specs for n in nfes]
    out = {}
    for label, sc, n in tqdm(jobs, desc="samplers", disable=not progress):
        spacing, ends = scheds[sc]
        x, used = run_sampler(D, specs[label], spacing, n, noise, torch.Generator().manual_seed(seed), **ends)
        sigmas = budget_schedule(spacing, n, heun=_params(specs[label]) == "heun", **ends)
        out[(label, sc, n)] = (float(score(x, sigmas)), used)
    return out


def format_table(results: dict, digits: int = 2) -> str:
    """A markdown table of :func:`sampler_table`'s results: one row per (sampler, schedule), one column
    per NFE budget; a cell shows the score and, where it differs from the budget, the calls made."""
    rows = list(dict.fromkeys((k[0], k[1]) for k in results))
    nfes = sorted({k[2] for k in results})
    lines = ["| sampler | schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|---|" + "---:|" * len(nfes)]
    for label, sp in rows:
        cells = []
        for n in nfes:
            if (label, sp, n) not in results:
                cells.append("")
                continue
            val, used = results[(label, sp, n)]
            cells.append(f"{val:.{digits}f}" + ("" if used == n else f" ({used})"))
        lines.append(f"| {label} | {sp} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
