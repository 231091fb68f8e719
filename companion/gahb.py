r"""Memorisation, generalisation and the checkpoint zoo of Chapter 7 (Kadkhodaie, Guth, Simoncelli &
Mallat, ICLR 2024).

**Training** (:func:`train_blind`): a noise-level-blind, bias-free denoiser
(:class:`companion.nets.BiasFreeUNet`) is trained as in the paper: for a clean image x, a noise
level ``σ = σ_max u²`` with ``u ~ U(0, 1)`` (uniform in √σ) and ε ~ N(0, I), minimise
``mean (D(x + σ ε) − x)²`` — the squared error of the noise prediction, since ``D(y) = y − f(y)``.
Images are in [0, 1] and ``σ_max = 1`` as in the paper's code. The batches come either from a fixed
training set of ``N`` images or, when ``n_train = 0``, from fresh draws of the family at every step.

**Comparison of two models** (Sec. 2 of the paper): :func:`sample` draws from a blind denoiser by the
deterministic DDIM iteration from a given starting noise, :func:`cosine_similarity` is the
mean-removed cosine similarity the paper uses, and :func:`nearest` finds the most similar training image.

**Zoo.** One general recipe, :func:`train_recipe`, makes every checkpoint from its entry in
:data:`CONFIGS`: ``gahb_calpha2_n{N}_{a,b}`` are the memorisation sweep (C^α images, α = 2, 16×16,
two disjoint training sets A and B of N = 1 … 10⁴ images), ``gahb_calpha{1,2,4}`` are trained on
fresh C^α images of regularity α, ``gahb_disks`` on fresh disk images. They are registered in
:data:`companion.recipes.RECIPES`, so ``python -m companion.recipes gahb_disks`` makes one.
"""
from __future__ import annotations

import functools

import torch

from . import data, nets, training
from ._checks import as_tensor, check_positive_int

__all__ = ["DIGITS_N", "compare_halves", "sample_sigma_sqrt", "train_blind", "sample", "cosine_similarity", "nearest", "psnr", "psnr_slope",
           "edge_harmonics",
           "SWEEP_N", "CONFIGS", "RECIPES", "train_recipe", "training_set"]

#: the training-set sizes of the memorisation sweep
SWEEP_N = (1, 10, 100, 1000, 10000)

_BASE = dict(seed=0, steps=1500, batch_size=32, lr=1e-3, ema=0.999, sigma_max=1.0, base=16, levels=3,
             convs=2, size=16, family="c_alpha", alpha=2.0, n_train=0, half="a", pool=20000)

#: configuration of each recipe (overridable keys of :func:`train_recipe`)
CONFIGS = {}
for _n in SWEEP_N:
    for _h in "ab":
        CONFIGS[f"gahb_calpha2_n{_n}_{_h}"] = dict(_BASE, n_train=_n, half=_h)
for _a in (1, 2, 4):
    CONFIGS[f"gahb_calpha{_a}"] = dict(_BASE, alpha=float(_a), seed=10 + _a)
CONFIGS["gahb_disks"] = dict(_BASE, family="disks", seed=20)
#: the sizes of the digits sweep: the 1,797 digits give at most 898 images per disjoint half
DIGITS_N = (1, 10, 100, 898)
for _n in DIGITS_N:
    for _h in "ab":
        CONFIGS[f"gahb_digits_n{_n}_{_h}"] = dict(_BASE, family="digits", size=8, n_train=_n, half=_h,
                                                  pool=1797)


def sample_sigma_sqrt(n: int, sigma_max: float = 1.0, generator=None) -> torch.Tensor:
    """``n`` training noise levels ``(n,)``: ``σ = sigma_max · u²``, ``u ~ U(0, 1)`` (uniform in √σ, as the paper)."""
    check_positive_int(n, "n")
    if not (isinstance(sigma_max, (int, float)) and sigma_max > 0):
        raise ValueError(f"sigma_max must be a positive number, got {sigma_max!r}")
    return sigma_max * torch.rand(n, generator=generator) ** 2


def train_blind(model, images, steps: int, batch_size: int = 32, lr: float = 1e-3, ema: float = 0.999,
                sigma_max: float = 1.0, generator: torch.Generator | None = None, progress: bool = True,
                resume=None, resume_every: int = 1000):
    r"""Train a blind denoiser ``D(y)`` (e.g. :class:`~companion.nets.BiasFreeUNet`) in place.

    Each step draws ``batch_size`` clean images ``x`` — with replacement from ``images`` ``(N, C, H, W)``,
    or from ``images(batch_size, generator)`` when ``images`` is a callable (fresh data) — noise levels
    from :func:`sample_sigma_sqrt` and ε ~ N(0, I), and takes an Adam step on
    ``mean (D(x + σ ε) − x)²`` (Kadkhodaie et al. 2024, Sec. 2 and App. A). The EMA of the weights is
    kept as in :func:`companion.training.train`, and so is ``resume`` (a path of a resumable
    training state written atomically every ``resume_every`` steps: a rerun continues, a finished
    run returns at once; one path per configuration).

    Returns :class:`companion.training.TrainResult` ``(model, ema_model, losses)``.
    """
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    fresh = callable(images)
    if not fresh:
        images, _ = training._check_data(images, None, "images")
        if images.dim() != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    device = training._device_of(model)

    def batch_loss():
        if fresh:
            x = images(batch_size, generator)
        else:
            x = images[torch.randint(images.shape[0], (batch_size,), generator=generator)]
        sigma = sample_sigma_sqrt(batch_size, sigma_max, generator)[:, None, None, None]
        eps = torch.randn(x.shape, generator=generator)
        x, y = x.to(device), (x + sigma * eps).to(device)
        return ((model(y) - x) ** 2).mean()

    return training._loop(model, steps, batch_loss, lr, ema, progress, "training", resume,
                          check_positive_int(resume_every, "resume_every"), generator)


def _family(cfg):
    """The image family of a config as a function ``(n, generator) -> (n, 1, size, size)``."""
    if cfg["family"] == "c_alpha":
        return lambda n, g: data.c_alpha(n, cfg["size"], cfg["alpha"], g)
    if cfg["family"] == "disks":
        return lambda n, g: data.disks(n, cfg["size"], g)
    raise ValueError(f"family must be 'c_alpha' or 'disks', got {cfg['family']!r}")


@functools.lru_cache(maxsize=2)
def _pool(family, alpha, size, n):
    if family == "digits":  # the 1,797 scikit-learn digits (8×8), rescaled from [-1, 1] to [0, 1]
        if size != 8 or n != 1797:
            raise ValueError(f"the digits family has size 8 and pool 1797, got size={size}, pool={n}")
        return (data.digits()[0] + 1) / 2
    return _family(dict(family=family, alpha=alpha, size=size))(n, torch.Generator().manual_seed(1000))


def training_set(cfg: dict) -> torch.Tensor | None:
    """The fixed training set ``(N, 1, size, size)`` of a recipe config (None when ``n_train == 0``: fresh data).

    A pool of ``pool`` images of the family is drawn with seed 1000 (the same pool for every N; for
    ``family="digits"`` the pool is the 1,797 digits in [0, 1]) and split by
    :func:`companion.data.disjoint_sets` with seed ``n_train``; ``half`` picks A or B.
    """
    if cfg["n_train"] == 0:
        return None
    pool = _pool(cfg["family"], cfg["alpha"], cfg["size"], cfg["pool"])
    a, b = data.disjoint_sets(pool, cfg["n_train"], torch.Generator().manual_seed(cfg["n_train"]))
    return {"a": a, "b": b}[cfg["half"]].clone()


def train_recipe(name: str, config: dict | None = None, progress: bool = True, resume=None):
    """Train the checkpoint ``name`` of :data:`CONFIGS` (keys of ``config`` override) and return its EMA model.

    ``resume``: optional path of a resumable training state (see :func:`train_blind`), e.g. in
    :func:`companion.runtime.cache_dir`, so that the full profile's long runs survive a disconnect.

    The returned model carries ``.config`` (the full config) and ``.metrics`` (final loss, training
    set size, wall-clock seconds).
    """
    import time

    from . import runtime

    if name not in CONFIGS:
        raise ValueError(f"name must be one of {sorted(CONFIGS)}, got {name!r}")
    cfg = training._config(name, config, CONFIGS)
    start = time.time()
    model = training._built(cfg["seed"], lambda: nets.BiasFreeUNet(1, cfg["base"], cfg["levels"], cfg["convs"]))
    model.to(runtime.device())
    train_set = training_set(cfg)
    images = _family(cfg) if train_set is None else train_set
    result = train_blind(model, images, cfg["steps"], cfg["batch_size"], cfg["lr"], cfg["ema"], cfg["sigma_max"],
                         torch.Generator().manual_seed(cfg["seed"] + 1), progress, resume)
    out = result.ema_model
    out.metrics = {"final_loss": sum(result.losses[-200:]) / len(result.losses[-200:]),
                   "n_train": cfg["n_train"], "seconds": round(time.time() - start, 1)}
    out.config = cfg
    return out


def _recipe(name):
    def recipe(config=None, progress=True):
        return train_recipe(name, config, progress)

    recipe.__name__ = name
    recipe.__doc__ = f"Blind bias-free U-Net of Chapter 7, config ``CONFIGS[{name!r}]`` (see :func:`train_recipe`)."
    return recipe


#: the recipes, registered in :data:`companion.recipes.RECIPES`
RECIPES = {name: _recipe(name) for name in CONFIGS}


@torch.no_grad()
def sample(D, noise, sigmas=None) -> torch.Tensor:
    r"""Deterministic DDIM samples of a blind denoiser ``D(y)`` from starting noise ``noise (B, C, H, W)``.

    The start is ``y = 1/2 + σ_0 · noise`` (mid-grey plus noise, images in [0, 1]); then for consecutive
    ``σ > σ'`` of ``sigmas`` (default: 40 log-spaced levels from 3 to 0.01, then 0; starting at the
    largest training level 1 instead gives washed-out samples, with about half the pixel standard
    deviation of the data, in Chapter 7's runs)
    ``y ← D(y) + (σ'/σ)(y − D(y))``, i.e. :func:`companion.samplers.sample` with γ = 1, μ = 0; the last
    step (σ' = 0) returns ``D(y)``. Two models started from the same ``noise`` can be compared image by image.
    """
    from . import samplers

    noise = as_tensor(noise, "noise")
    if noise.dim() != 4:
        raise ValueError(f"noise must have shape (B, C, H, W), got {tuple(noise.shape)}")
    if sigmas is None:
        sigmas = samplers.loglinear(40, sigma_min=0.01, sigma_max=3.0)
    sigmas = samplers.check_sigmas(sigmas)
    return samplers.sample(lambda y, s: D(y), sigmas, 0.5 + float(sigmas[0]) * noise)


def cosine_similarity(a, b) -> torch.Tensor:
    r"""Mean-removed cosine similarity of paired images ``a, b`` ``(B, ...)`` → ``(B,)`` (the paper's Fig. 2 metric).

    ``⟨a − ā, b − b̄⟩ / (‖a − ā‖ ‖b − b̄‖)`` with ``ā`` the mean pixel of each image.
    """
    a, b = as_tensor(a, "a").flatten(1), as_tensor(b, "b").flatten(1)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def nearest(x, train) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image of ``x`` ``(B, ...)``, the most similar image of ``train`` ``(N, ...)`` by
    :func:`cosine_similarity`: returns ``(similarity (B,), index (B,))``."""
    x, train = as_tensor(x, "x").flatten(1), as_tensor(train, "train").flatten(1)
    if x.shape[1] != train.shape[1] or train.shape[0] == 0:
        raise ValueError(f"x and train must hold images of the same size, got {tuple(x.shape)}, {tuple(train.shape)}")
    xc = x - x.mean(1, keepdim=True)
    tc = train - train.mean(1, keepdim=True)
    sims = (xc / xc.norm(dim=1, keepdim=True).clamp_min(1e-12)) @ (tc / tc.norm(dim=1, keepdim=True).clamp_min(1e-12)).T
    return sims.max(1)


def psnr(estimate, clean, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio ``10 log10(peak² / MSE)`` in dB of each image: ``(B, ...)`` → ``(B,)``."""
    estimate, clean = as_tensor(estimate, "estimate"), as_tensor(clean, "clean")
    if estimate.shape != clean.shape:
        raise ValueError(f"estimate and clean must have the same shape, got {tuple(estimate.shape)}, "
                         f"{tuple(clean.shape)}")
    mse = ((estimate - clean) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(peak ** 2 / mse.clamp_min(1e-20))


@torch.no_grad()
def psnr_slope(D, clean, sigmas, noise=None, above_identity: bool = False):
    r"""Output PSNR against input PSNR of a blind denoiser, and the slope of their least-squares line.

    For each σ of ``sigmas`` (``(S,)``): input PSNR ``−20 log10 σ``, output PSNR
    ``10 log10(1 / mean (D(clean + σ z) − clean)²)`` (images in [0, 1], the mean over all images and pixels),
    with the same noise ``z`` (``noise``, default standard normal) at every σ. For C^α images the optimal
    slope is α/(α + 1) (Korostelev & Tsybakov 1993; Kadkhodaie et al. 2024, Sec. 3.2).

    With ``above_identity=True`` the line is fitted only through the levels where the denoiser beats the
    identity (output error below the noisy input's own, ``mean (σ z)²``): a slope read where the output
    is worse than the noisy input says nothing about denoising. The slope is NaN when fewer than two
    levels are fitted.

    Returns ``(psnr_in (S,), psnr_out (S,), slope, fitted (S,) bool)`` (slope a float).
    """
    clean = as_tensor(clean, "clean")
    sigmas = as_tensor(sigmas, "sigmas").reshape(-1)
    if sigmas.numel() < 2 or (sigmas <= 0).any():
        raise ValueError(f"sigmas must hold at least two positive noise levels, got {sigmas.tolist()}")
    z = torch.randn_like(clean) if noise is None else as_tensor(noise, "noise")
    if z.shape != clean.shape:
        raise ValueError(f"noise must have the shape of clean {tuple(clean.shape)}, got {tuple(z.shape)}")
    p_in = -20 * torch.log10(sigmas)
    p_out = torch.stack([10 * torch.log10(1 / ((D(clean + s * z) - clean) ** 2).mean()) for s in sigmas])
    p_id = torch.stack([10 * torch.log10(1 / ((s * z) ** 2).mean()) for s in sigmas])
    fitted = p_out > p_id if above_identity else torch.ones_like(p_in, dtype=torch.bool)
    if fitted.sum() < 2:
        return p_in, p_out, float("nan"), fitted
    a = torch.stack([p_in[fitted], torch.ones_like(p_in[fitted])], 1).double()
    slope = torch.linalg.lstsq(a, p_out[fitted].double()[:, None]).solution[0, 0].item()
    return p_in, p_out, slope, fitted


def edge_harmonics(vectors, params, size: int = 16, width: float = 1.5, n_max: int = 4):
    r"""How much of each image-vector lies on a disk's edge, and its angular harmonics there.

    ``vectors`` ``(B, size², K)`` (e.g. Jacobian eigenvectors, columns), ``params`` ``(B, 5)`` the disk of
    each batch item (:data:`companion.data.DISK_PARAMS`). The *edge ring* is the set of pixels whose
    centre lies within ``width`` pixels of the circle ``‖p − c‖ = r``; θ is each ring pixel's angle about
    the centre. On the ring each vector is fitted by least squares with the angular harmonics
    ``1, cos nθ, sin nθ`` (``n ≤ n_max``), which tests the GAHB claim of Kadkhodaie et al. (2024, Sec. 3.3,
    Fig. 6): eigenvectors that oscillate *along* the contour.

    Returns ``(edge (B, K), harmonics (B, n_max + 1, K), ring (B,))``: ``edge`` is the fraction of each
    vector's squared norm on the ring, ``harmonics[:, n]`` the fraction of the ring part's squared norm
    carried by the fitted order-``n`` harmonic, and ``ring`` the fraction of pixels in the ring (what
    ``edge`` is for a vector spread evenly over the image).
    """
    vectors, params = as_tensor(vectors, "vectors"), as_tensor(params, "params")
    if params.dim() != 2 or params.shape[1] != 5:
        raise ValueError(f"params must have shape (B, 5), got {tuple(params.shape)}")
    if vectors.dim() != 3 or vectors.shape[:2] != (params.shape[0], size * size):
        raise ValueError(f"vectors must have shape (B, size², K) = ({params.shape[0]}, {size * size}, K), "
                         f"got {tuple(vectors.shape)}")
    if not (width > 0 and isinstance(n_max, int) and n_max >= 0):
        raise ValueError(f"width must be > 0 and n_max an int >= 0, got {width!r}, {n_max!r}")
    p = params.double()
    grid = torch.arange(size, dtype=torch.float64) + 0.5
    dr = grid[None, :, None] - p[:, 0, None, None]
    dc = grid[None, None, :] - p[:, 1, None, None]
    ring = ((dr ** 2 + dc ** 2).sqrt() - p[:, 2, None, None]).abs().flatten(1) <= width  # (B, d)
    theta = torch.atan2(dr, dc).flatten(1)
    edge, harm = [], []
    for b in range(p.shape[0]):
        t, v = theta[b, ring[b]], vectors[b, ring[b]].double()  # (R,), (R, K)
        waves = [torch.ones_like(t)[:, None]] + [torch.stack([(n * t).cos(), (n * t).sin()], 1)
                                                for n in range(1, n_max + 1)]
        basis = torch.cat(waves, 1)  # (R, 2 n_max + 1)
        coef = torch.linalg.lstsq(basis, v).solution
        cols = [0] + [2 * n - 1 for n in range(1, n_max + 1)]
        parts = [basis[:, c:c + (1 if n == 0 else 2)] @ coef[c:c + (1 if n == 0 else 2)]
                 for n, c in enumerate(cols)]
        on_ring = (v ** 2).sum(0)
        harm.append(torch.stack([(f ** 2).sum(0) for f in parts]) / on_ring.clamp_min(1e-30))
        edge.append(on_ring / (vectors[b].double() ** 2).sum(0).clamp_min(1e-30))
    return torch.stack(edge), torch.stack(harm), ring.double().mean(1)


def compare_halves(model_a, model_b, train_a, noise, new_images, sigma: float = 0.2) -> dict:
    """The memorization/generalization measures of Kadkhodaie et al. (2024, Sec. 2) for two models.

    ``model_a``, ``model_b``: blind denoisers trained on disjoint sets; ``train_a`` ``(M, C, H, W)``: model A's
    training set; ``noise`` ``(B, C, H, W)``: the shared starting noise of :func:`sample`; ``new_images``
    ``(B, C, H, W)``: images of the family not in the training set. Returns medians over the B seeds of
    ``sim_ab`` (:func:`cosine_similarity` of the two models' samples), ``sim_train`` (similarity of A's
    sample to its nearest image of ``train_a``), ``sim_new`` (the same for ``new_images``, for reference),
    and ``gap``: A's mean denoising PSNR at noise ``sigma`` on (up to B of) its training images minus that
    on ``new_images`` (the generalization gap, same noise draws) and ``gap_se``, its standard error
    (from the per-image PSNR spreads of the two sets); plus the samples ``xa``, ``xb`` and
    ``nearest`` (the training image of A nearest to each A sample).
    """
    xa, xb = sample(model_a, noise), sample(model_b, noise)
    sim_train, idx = nearest(xa, train_a)
    sim_new, _ = nearest(new_images, train_a)
    seen = train_a[:noise.shape[0]]
    z = torch.randn(new_images.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        p_seen = psnr(model_a(seen + sigma * z[:len(seen)]), seen)
        p_new = psnr(model_a(new_images + sigma * z), new_images)
    var = p_new.var() / len(p_new) + (p_seen.var() / len(p_seen) if len(p_seen) > 1 else 0.0)
    return {"sim_ab": cosine_similarity(xa, xb).median().item(), "sim_train": sim_train.median().item(),
            "sim_new": sim_new.median().item(), "gap": (p_seen.mean() - p_new.mean()).item(),
            "gap_se": var.sqrt().item(),
            "xa": xa, "xb": xb, "nearest": train_a[idx]}
