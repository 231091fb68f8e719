r"""Denoising score matching, and saving and loading the checkpoint zoo.

**Training.** :func:`train` fits a :class:`companion.nets.Denoiser` by denoising score matching
(Vincent 2011; Karras et al. 2022): draw a data point x0, a noise level σ and ε ~ N(0, I), and
regress the network's prediction of its ``target`` at ``x = x0 + σ ε`` onto the true target. The
loss is the MSE *in the target's own space*, which equals the x0 error weighted by
:func:`companion.denoisers.loss_weight`:

.. math::  L = \mathbb E_{x_0, \sigma, \varepsilon}\, \omega(\sigma)\,
           \tfrac{1}{d}\|D(x_0 + \sigma\varepsilon, \sigma) - x_0\|^2

(x0: ω = 1; eps: 1/σ²; v: (σ² + σ_data²)/(σ σ_data)², EDM's weighting; score: 1/σ⁴). σ is drawn
log-normally, ``log σ ~ N(P_mean, P_std²)`` with EDM's P_mean = −1.2, P_std = 1.2, or
log-uniformly on ``[sigma_min, sigma_max]``. Optional class labels are replaced by the null label
with probability ``label_dropout`` (classifier-free guidance, Ho & Salimans 2022). An exponential
moving average (EMA) of the weights is kept and is what the zoo ships.

**Checkpoints.** Training that takes more than a minute on a CPU is replaced by a small
checkpoint in :data:`CHECKPOINT_DIR` (``companion/checkpoints/``) made by a recipe of
:mod:`companion.recipes` (``python -m companion.recipes digits_unet``). :func:`save` writes a plain
dict (recipe, config, package version, architecture, float32 EMA state, metrics) to a temporary
file and renames it (atomic); :func:`load` rebuilds the architecture and reads the file with
``torch.load(..., weights_only=True)``, by path or by recipe name (``load("digits_unet")``).
"""
from __future__ import annotations

import copy
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from tqdm.auto import trange

from . import nets
from ._checks import as_tensor, check_positive_int
from .denoisers import loss_weight

__all__ = [
    "TrainResult", "dsm_loss", "train", "train_classifier", "accuracy", "sample_sigma", "SIGMA_SAMPLERS",
    "CHECKPOINT_DIR", "save", "load",
]

SIGMA_SAMPLERS = ("lognormal", "loguniform")

#: where the shipped checkpoints live
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"


class TrainResult(NamedTuple):
    """What :func:`train` returns: the trained ``model``, its EMA copy ``ema_model`` (eval mode)
    and the per-step training ``losses`` (a list of floats)."""

    model: torch.nn.Module
    ema_model: torch.nn.Module
    losses: list


def sample_sigma(n: int, sampler: str = "lognormal", generator=None, P_mean: float = -1.2,
                 P_std: float = 1.2, sigma_min: float = 0.002, sigma_max: float = 80.0) -> torch.Tensor:
    """``n`` noise levels ``(n,)`` for training.

    ``"lognormal"``: ``log σ ~ N(P_mean, P_std²)`` (Karras et al. 2022, defaults −1.2, 1.2);
    ``"loguniform"``: ``log σ`` uniform on ``[log sigma_min, log sigma_max]``.
    """
    n = check_positive_int(n, "n")
    _check_sampler(sampler, P_std, sigma_min, sigma_max)
    if sampler == "lognormal":
        return torch.exp(P_mean + P_std * torch.randn(n, generator=generator))
    lo, hi = math.log(sigma_min), math.log(sigma_max)
    return torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))


def _check_sampler(sampler, P_std, sigma_min, sigma_max):
    if sampler not in SIGMA_SAMPLERS:
        raise ValueError(f"sigma_sampler must be one of {SIGMA_SAMPLERS}, got {sampler!r}")
    if sampler == "lognormal" and not P_std > 0:
        raise ValueError(f"P_std must be > 0, got {P_std!r}")
    if sampler == "loguniform" and not 0 < sigma_min < sigma_max:
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min!r}, {sigma_max!r}")


def _check_data(data, labels, name="data"):
    data = as_tensor(data, name)
    if data.dim() < 2 or data.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1, got {tuple(data.shape)}")
    if not torch.isfinite(data).all():
        raise ValueError(f"{name} must be finite")
    if labels is not None:
        labels = torch.as_tensor(labels)
        if labels.shape != (data.shape[0],) or labels.is_floating_point():
            raise ValueError(f"labels must be an integer tensor of shape (N,) = ({data.shape[0]},), got "
                             f"{labels.dtype} of shape {tuple(labels.shape)}")
    return data, labels


def _check_rate(value, name, high_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value and (
        value < 1 if high_open else value <= 1)
    if not ok:
        raise ValueError(f"{name} must be a number in [0, 1{')' if high_open else ']'}, got {value!r}")
    return float(value)


def _device_of(model):
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def _ema_update(ema_model, model, decay):
    torch._foreach_lerp_(list(ema_model.parameters()), list(model.parameters()), 1 - decay)
    for be, b in zip(ema_model.buffers(), model.buffers()):
        be.copy_(b)


def _loop(model, steps, batch_loss, lr, ema, progress, desc, resume=None, every=1000, generator=None):
    """Shared optimisation loop: Adam at a constant ``lr``, EMA with warm-up, tqdm.

    With ``resume`` (a path), the whole state (weights, EMA, Adam, step, losses, generator) is
    written there atomically every ``every`` steps and at the end, and read back when the file
    exists: an interrupted run continues where it stopped; a finished one returns at once.
    """
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, foreach=True)
    ema_model = copy.deepcopy(model).eval().requires_grad_(False)
    model.train()
    losses, start = [], 0
    if resume is not None and Path(resume).exists():
        state = torch.load(resume, map_location=_device_of(model), weights_only=True)
        model.load_state_dict(state["model"])
        ema_model.load_state_dict(state["ema"])
        optimiser.load_state_dict(state["optimiser"])
        losses, start = list(state["losses"]), int(state["step"])
        if generator is not None:
            generator.set_state(state["generator"].cpu())
    bar = trange(start, steps, desc=desc, disable=not progress, leave=False)
    for step in bar:
        loss = batch_loss()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        # EMA warm-up (decay grows like (1+t)/(10+t)): short runs are not dominated by the init
        _ema_update(ema_model, model, min(ema, (1 + step) / (10 + step)))
        losses.append(loss.item())
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
        if resume is not None and ((step + 1) % every == 0 or step == steps - 1):
            _atomic_save({"model": model.state_dict(), "ema": ema_model.state_dict(),
                          "optimiser": optimiser.state_dict(), "step": step + 1, "losses": losses,
                          "generator": generator.get_state() if generator is not None else torch.zeros(0)},
                         Path(resume))
    model.eval()
    return TrainResult(model, ema_model, losses)


def dsm_loss(model, x0, sigma, eps, labels=None, weight: str | None = None) -> torch.Tensor:
    """The denoising score-matching loss of one batch (a 0-d tensor).

    ``mean_b ω(σ_b) · mean_pixels (D(x0_b + σ_b ε_b, σ_b, labels) − x0_b)²`` with
    ω = :func:`companion.denoisers.loss_weight` of the model's target: the per-pixel MSE of the raw
    network's prediction of its target. ``weight`` (a target name) takes ω from another target
    instead, so that the output parameterisation and the loss weighting can be varied separately.

    Args:
        model: a :class:`~companion.nets.Denoiser`.
        x0: clean data ``(B, *shape)``; sigma: ``(B,)`` noise levels; eps: noise like ``x0``;
        labels: ``(B,)`` ints or None (the null label).
    """
    view = (-1,) + (1,) * (x0.dim() - 1)
    x0_hat = model(x0 + sigma.reshape(view) * eps, sigma, labels)
    err = ((x0_hat - x0) ** 2).flatten(1).mean(1)
    return (loss_weight(weight or model.target, sigma, model.sigma_data) * err).mean()


def train(model, data, steps: int, batch_size: int = 128, lr: float = 1e-3, labels=None,
          label_dropout: float = 0.1, ema: float = 0.999, sigma_sampler: str = "lognormal",
          P_mean: float = -1.2, P_std: float = 1.2, sigma_min: float = 0.002, sigma_max: float = 80.0,
          generator: torch.Generator | None = None, progress: bool = True,
          weight: str | None = None, resume=None, resume_every: int = 1000) -> TrainResult:
    """Denoising score matching for a :class:`companion.nets.Denoiser` (trains ``model`` in place).

    Each step draws ``batch_size`` points of ``data`` with replacement, σ from ``sigma_sampler``
    (see :func:`sample_sigma`) and ε ~ N(0, I), and minimises the mean over the batch of
    ``loss_weight(target, σ, σ_data) · mean((D(x0 + σε, σ, labels) − x0)²)``, i.e. the per-pixel
    MSE of the raw network's prediction of its ``target`` (module docstring). Adam with a
    constant learning rate; the EMA ``θ_ema ← d θ_ema + (1 − d) θ`` uses
    ``d = min(ema, (1 + t)/(10 + t))`` at step t.

    Args:
        model: a :class:`~companion.nets.Denoiser`.
        data: ``(N, *shape)`` training data (on any device; moved to the model's).
        steps: number of optimisation steps.
        batch_size, lr: batch size and Adam learning rate.
        labels: optional ``(N,)`` ints in ``0..n_classes-1`` for a class-conditional model.
        label_dropout: probability that a label is replaced by the null label ``n_classes``.
        ema: EMA decay in [0, 1).
        sigma_sampler: ``"lognormal"`` (``P_mean``, ``P_std``) or ``"loguniform"``
            (``sigma_min``, ``sigma_max``).
        generator: a CPU ``torch.Generator`` for the batches, σ's, noise and label dropout; with it
            (and a fixed initialisation) the run is deterministic on the CPU.
        progress: show a tqdm bar.
        weight: None (the model's own target) or a target name (``"x0"``, ``"eps"``, ``"v"``,
            ``"score"``) whose weight ω(σ) replaces it in the loss (see :func:`dsm_loss`).
        resume: optional path (e.g. in :func:`companion.runtime.cache_dir`) of a resumable
            training state, written atomically every ``resume_every`` steps and at the end; when
            it exists, training continues from it (a rerun after a disconnect loses at most
            ``resume_every`` steps, and a finished run is not repeated). Use one path per
            configuration.

    Returns:
        :class:`TrainResult` ``(model, ema_model, losses)``.
    """
    if not isinstance(model, nets.Denoiser):
        raise TypeError(f"model must be a companion.nets.Denoiser, got {type(model).__name__}")
    data, labels = _check_data(data, labels)
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    label_dropout = _check_rate(label_dropout, "label_dropout")
    ema = _check_rate(ema, "ema", high_open=True)
    _check_sampler(sigma_sampler, P_std, sigma_min, sigma_max)
    if weight is not None and weight not in nets.TARGETS:
        raise ValueError(f"weight must be None or one of {nets.TARGETS}, got {weight!r}")
    if labels is not None and model.n_classes is None:
        raise ValueError("labels were given but the model is unconditional (n_classes=None)")
    if labels is not None and ((labels < 0).any() or (labels >= model.n_classes).any()):
        raise ValueError(f"labels must lie in 0..{model.n_classes - 1}")
    device = _device_of(model)
    data = data.to(device=device, dtype=torch.float32)
    labels = labels.to(device) if labels is not None else None
    n = data.shape[0]

    def batch_loss():
        idx = torch.randint(n, (batch_size,), generator=generator).to(device)
        x0 = data[idx]
        sigma = sample_sigma(batch_size, sigma_sampler, generator, P_mean, P_std, sigma_min, sigma_max)
        eps = torch.randn(x0.shape, generator=generator).to(device)
        sigma = sigma.to(device)
        y = None
        if labels is not None:
            drop = (torch.rand(batch_size, generator=generator) < label_dropout).to(device)
            y = torch.where(drop, torch.full_like(labels[idx], model.n_classes), labels[idx])
        return dsm_loss(model, x0, sigma, eps, y, weight)

    return _loop(model, steps, batch_loss, lr, ema, progress, "training", resume,
                 check_positive_int(resume_every, "resume_every"), generator)


def _shift(images, shift, generator):
    """Random translations by up to ``shift`` pixels (padding with the background value −1)."""
    if shift == 0:
        return images
    B, C, H, W = images.shape
    padded = F.pad(images, (shift,) * 4, value=-1.0)
    dy, dx = (torch.randint(0, 2 * shift + 1, (2, B), generator=generator)).to(images.device)
    rows = dy[:, None] + torch.arange(H, device=images.device)
    cols = dx[:, None] + torch.arange(W, device=images.device)
    out = padded[torch.arange(B, device=images.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def train_classifier(model, images, labels, steps: int, batch_size: int = 128, lr: float = 2e-3,
                     shift: int = 1, ema: float = 0.99, generator=None, progress: bool = True) -> TrainResult:
    """Cross-entropy training of an image classifier (e.g. :class:`~companion.nets.DigitsClassifier`).

    Batches are drawn with replacement and translated at random by up to ``shift`` pixels
    (padding with −1, the digits' background). Adam, constant ``lr``, EMA as in :func:`train`.

    Args:
        model: maps ``(B, C, H, W)`` to logits ``(B, K)``.
        images: ``(N, C, H, W)``; labels: ``(N,)`` ints.
    """
    images, labels = _check_data(images, labels, "images")
    if labels is None:
        raise ValueError("labels are required to train a classifier")
    if images.dim() != 4:
        raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
    steps = check_positive_int(steps, "steps")
    batch_size = check_positive_int(batch_size, "batch_size")
    ema = _check_rate(ema, "ema", high_open=True)
    if not isinstance(shift, int) or shift < 0:
        raise ValueError(f"shift must be a non-negative int, got {shift!r}")
    device = _device_of(model)
    images, labels = images.to(device), labels.to(device)

    def batch_loss():
        idx = torch.randint(images.shape[0], (batch_size,), generator=generator).to(device)
        return F.cross_entropy(model(_shift(images[idx], shift, generator)), labels[idx])

    return _loop(model, steps, batch_loss, lr, ema, progress, "classifier")


@torch.no_grad()
def accuracy(model, images, labels, batch_size: int = 1024) -> float:
    """Fraction of ``images`` ``(N, C, H, W)`` whose argmax logit equals ``labels`` ``(N,)``."""
    images, labels = _check_data(images, labels, "images")
    device = _device_of(model)
    correct = 0
    for i in range(0, images.shape[0], batch_size):
        logits = model(images[i:i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == labels[i:i + batch_size]).sum().item()
    return correct / images.shape[0]


# ----------------------------------------------------------------------------------------------
# The zoo's machinery: recipe configs, save and load (the recipes are in companion/recipes.py)
# ----------------------------------------------------------------------------------------------

def _config(name, config, configs):
    """``configs[name]`` (a recipe's defaults) updated with the keys of ``config``; an unknown key is
    a ValueError naming the recipe."""
    cfg = dict(configs[name])
    unknown = set(config or {}) - set(cfg)
    if unknown:
        raise ValueError(f"unknown config keys for recipe {name!r}: {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(config or {})
    return cfg


def _built(seed, make):
    """``make()`` under a private RNG state seeded with ``seed`` (the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make()


def save(model, path, recipe: str, config: dict, metrics: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (a temporary file in the same directory, then ``os.replace``).

    The file is a plain dict loadable with ``torch.load(path, weights_only=True)``: ``recipe``,
    ``config``, ``version`` (``companion.__version__``), ``architecture`` (:func:`companion.nets.spec`),
    ``state_dict`` (float32, on the CPU) and ``metrics`` (``metrics`` or ``model.metrics``, e.g.
    ``final_loss``: the mean training loss over the last 200 steps).
    """
    from . import __version__

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "recipe": recipe,
        "config": nets._plain(dict(config)),
        "version": __version__,
        "architecture": nets.spec(model),
        "state_dict": {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()},
        "metrics": nets._plain(dict(metrics if metrics is not None else getattr(model, "metrics", {}))),
    }
    return _atomic_save(payload, path)


def _atomic_save(obj, path: Path) -> Path:
    """``torch.save(obj)`` to a temporary file next to ``path``, then rename: never a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _resolve(name_or_path):
    # imported here, not at the top: companion.recipes imports this module (its machinery)
    from .recipes import RECIPES

    name = str(name_or_path)
    if name in RECIPES:
        return CHECKPOINT_DIR / f"{name}.pt", name
    path = Path(name)
    if path.suffix != ".pt" and not path.exists():
        raise ValueError(f"name_or_path must be one of {sorted(RECIPES)} or a path to a .pt file, got {name!r}")
    return path, None


def load(name_or_path, device=None):
    """A trained model from the zoo (a name of :data:`companion.recipes.RECIPES`, e.g. ``"digits_unet"``)
    or from a file written by :func:`save`.

    The file is read with ``torch.load(..., weights_only=True)``, the architecture is rebuilt from its
    stored spec, and the model is returned in eval mode with gradients off, on ``device`` (default:
    the CPU). Wherever it was loaded, a model runs on the device of its input
    (:func:`companion.nets.follow`), so ``load(name)`` followed by ``model(x.to(dev), sigma)`` runs on
    ``dev``. ``model.checkpoint`` holds the file's recipe, config, version
    and metrics. A missing zoo file raises ``FileNotFoundError`` naming the command that makes it.
    """
    path, name = _resolve(name_or_path)
    if not path.exists():
        recipe = name or "<recipe>"
        raise FileNotFoundError(f"no checkpoint at {path}; make it with `python -m companion.recipes {recipe}`"
                                + ("" if name else f" --out {path}"))
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = nets.build(payload["architecture"])
    model.load_state_dict(payload["state_dict"])
    model.to(device if device is not None else "cpu").eval().requires_grad_(False)
    model.checkpoint = {k: payload[k] for k in ("recipe", "config", "version", "metrics")}
    return model


if __name__ == "__main__":  # the command's former name, kept as an alias of companion.recipes
    from companion.recipes import main

    main(sys.argv[1:])
