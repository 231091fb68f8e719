"""The checkpoint zoo's recipes: how every shipped checkpoint in ``companion/checkpoints/`` was made.

Training that takes more than a minute on a CPU is replaced, in the quick profile, by a small
checkpoint made by a recipe of :data:`RECIPES` with its defaults in :data:`CONFIGS`::

    python -m companion.recipes digits_unet [--steps N] [--out PATH] [--quiet]

A recipe ``RECIPES[name](config=None, progress=True)`` trains with the machinery of
:mod:`companion.training` (:func:`~companion.training.train`,
:func:`~companion.training.train_classifier`) from a fixed seed and returns the EMA model with
``.config`` (the full configuration used) and ``.metrics`` attached; the command saves it with
:func:`companion.training.save`, and :func:`companion.training.load` reads it back by name. The
data helpers the recipes share with the chapters are here too: :func:`digits_split` (the
classifier's train/held-out split) and :func:`digits16` (upsampled digits). Chapter 7's blind
bias-free U-Nets (``gahb_…``) are defined in :mod:`companion.gahb` and registered here.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from . import gahb, nets
from ._checks import check_positive_int
from .training import CHECKPOINT_DIR, _built, _config, accuracy, save, train, train_classifier

__all__ = ["CONFIGS", "RECIPES", "digits_split", "digits16", "main",
           "digits_unet", "digits_unet_cond", "digits_resnet", "ring_mlp", "digits_classifier",
           "digits_unet_lik", "digits16_resnet", "patches_unet"]

#: default configuration of each recipe (a recipe's ``config`` argument overrides these keys); the
#: shipped checkpoints were made with these defaults: U-Nets of about 146k parameters (8×8 → 4×4 → 2×2),
#: a ResNet of 96k parameters with a 7×7 receptive field, a classifier of 45k parameters
CONFIGS = {
    "digits_unet": dict(seed=0, steps=4000, batch_size=128, lr=2e-3, ema=0.999, target="v", sigma_data=0.5,
                        base=16, mults=[1, 2, 2], blocks=1),
    "digits_unet_cond": dict(seed=0, steps=4000, batch_size=128, lr=2e-3, ema=0.999, target="v", sigma_data=0.5,
                             base=16, mults=[1, 2, 2], blocks=1, label_dropout=0.15),
    "digits_resnet": dict(seed=0, steps=4000, batch_size=128, lr=2e-3, ema=0.999, target="v", sigma_data=0.5,
                          width=48, depth=3, kernel=3),
    "ring_mlp": dict(seed=0, steps=6000, batch_size=512, lr=2e-3, ema=0.999, target="v", sigma_data=3.0,
                     hidden=128, depth=4, P_mean=-0.5, P_std=1.5, n_data=50000),
    "digits_classifier": dict(seed=0, steps=2000, batch_size=128, lr=2e-3, ema=0.99, width=32, features=64,
                              shift=1, n_train=1500),
    # Chapter 4: a U-Net trained with *likelihood weighting* on the classifier's training split only, so
    # that the 297 held-out digits measure a likelihood the model never saw. The ε target with
    # log-uniform σ weights the x0 error by σ⁻² · (1/σ) ∝ σ⁻³: the integrand of the continuous-time
    # ELBO (Kingma et al. 2021).
    "digits_unet_lik": dict(seed=0, steps=4000, batch_size=128, lr=2e-3, ema=0.999, target="eps",
                            sigma_data=0.5, base=16, mults=[1, 2, 2], blocks=1, n_train=1500,
                            sigma_min=0.002, sigma_max=80.0),
    # Chapter 6: a zero-padded ResNet on 16×16 digits (ELS vs LS at a larger image size)
    "digits16_resnet": dict(seed=0, steps=2000, batch_size=64, lr=2e-3, ema=0.999, target="v",
                            sigma_data=0.5, width=32, depth=5, kernel=3, size=16, n_train=200),
    # Chapter 5: a U-Net on 8×8 patches of photographs
    "patches_unet": dict(seed=0, steps=8000, batch_size=128, lr=2e-3, ema=0.999, target="v", sigma_data=0.4,
                         base=16, mults=[1, 2, 2], blocks=1, n_train=20000),
}


# ----------------------------------------------------------------------------------------------
# Data helpers (shared with the chapters)
# ----------------------------------------------------------------------------------------------

def digits_split(n_train: int = 1500):
    """The classifier's fixed split of the 1,797 digits: index tensors ``(train, held_out)``.

    The first ``n_train`` entries of ``torch.randperm(1797, generator=torch.Generator().manual_seed(0))``
    train; the rest (297 by default) are held out.
    """
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    return perm[:n_train], perm[n_train:]


def digits16(size: int = 16, n_train: int = 200):
    """The first ``n_train`` scikit-learn digits upsampled bilinearly to ``size × size``: ``(images, labels)``.

    ``F.interpolate(images, size, mode="bilinear", align_corners=False)`` of the 8×8 digits in
    [-1, 1] (a convex combination of pixels, so the values stay in [-1, 1]).
    """
    from . import data as _data

    size, n_train = check_positive_int(size, "size"), check_positive_int(n_train, "n_train")
    images, labels = _data.digits()
    if n_train > images.shape[0]:
        raise ValueError(f"n_train must be at most {images.shape[0]}, got {n_train}")
    images = F.interpolate(images[:n_train], size=(size, size), mode="bilinear", align_corners=False)
    return images, labels[:n_train]


# ----------------------------------------------------------------------------------------------
# The recipes
# ----------------------------------------------------------------------------------------------

def _fit_denoiser(cfg, images, net_factory, labels=None, progress=True, **train_kwargs):
    """Build ``nets.Denoiser(net_factory(cfg, n_classes))`` (seeded by ``cfg["seed"]``), train it on
    ``images`` (class-conditional when ``labels`` are given) and return its EMA copy with ``config``
    and ``metrics`` set: the one training path of every image recipe."""
    from . import runtime

    n_classes = 10 if labels is not None else None
    model = _built(cfg["seed"], lambda: nets.Denoiser(net_factory(cfg, n_classes), target=cfg["target"],
                                                      sigma_data=cfg["sigma_data"], n_classes=n_classes))
    model.to(runtime.device())
    result = train(model, images, cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                   labels=labels, label_dropout=cfg.get("label_dropout", 0.0), ema=cfg["ema"],
                   generator=torch.Generator().manual_seed(cfg["seed"]), progress=progress, **train_kwargs)
    out = result.ema_model
    out.metrics = {"final_loss": sum(result.losses[-200:]) / len(result.losses[-200:]),
                   "n_train": images.shape[0]}
    out.config = cfg
    return out


def _digits_denoiser(name, config, net_factory, conditional, progress=True):
    from . import data as _data

    images, labels = _data.digits()
    return _fit_denoiser(_config(name, config, CONFIGS), images, net_factory,
                         labels=labels if conditional else None, progress=progress)


def _unet(cfg, n_classes):
    return nets.UNet(channels=1, base=cfg["base"], mults=cfg["mults"], blocks=cfg["blocks"], n_classes=n_classes)


def _resnet(cfg, n_classes):
    return nets.ResNet(channels=1, width=cfg["width"], depth=cfg["depth"], kernel=cfg["kernel"], n_classes=n_classes)


def digits_unet(config=None, progress=True):
    """Unconditional U-Net denoiser on all 1,797 digits (v-target, σ_data = 0.5, log-normal σ)."""
    return _digits_denoiser("digits_unet", config, _unet, False, progress)


def digits_unet_cond(config=None, progress=True):
    """Class-conditional U-Net (11 labels, 10 = null) with label dropout, for classifier-free guidance."""
    return _digits_denoiser("digits_unet_cond", config, _unet, True, progress)


def digits_resnet(config=None, progress=True):
    """Unconditional local ResNet without normalization (receptive field 7×7 by default)."""
    return _digits_denoiser("digits_resnet", config, _resnet, False, progress)


def ring_mlp(config=None, progress=True):
    """Residual MLP denoiser for the 2-D ring mixture ``cp.gmm.ring()`` (v-target, σ_data = 3,
    log-normal σ with ``P_mean = -0.5``, ``P_std = 1.5``), trained on ``n_data`` fresh samples.

    Chapter 3 compares its score with the exact mixture score; a short in-notebook run of the same
    network stays on a plateau at low noise, hence the longer, shipped run.
    """
    from . import gmm, runtime

    cfg = _config("ring_mlp", config, CONFIGS)
    data = gmm.ring().sample(cfg["n_data"], generator=torch.Generator().manual_seed(cfg["seed"])).float()
    model = _built(cfg["seed"], lambda: nets.Denoiser(nets.MLP(dim=2, hidden=cfg["hidden"], depth=cfg["depth"]),
                                                      target=cfg["target"], sigma_data=cfg["sigma_data"]))
    model.to(runtime.device())
    result = train(model, data, cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"], ema=cfg["ema"],
                   P_mean=cfg["P_mean"], P_std=cfg["P_std"], generator=torch.Generator().manual_seed(cfg["seed"] + 1),
                   progress=progress)
    out = result.ema_model
    out.metrics = {"final_loss": sum(result.losses[-200:]) / len(result.losses[-200:]), "n_train": cfg["n_data"]}
    out.config = cfg
    return out


def digits_classifier(config=None, progress=True):
    """CNN classifier of clean digits, trained on the first ``n_train`` points of :func:`digits_split`'s
    permutation; the held-out accuracy on the rest is recorded in ``metrics``."""
    from . import data as _data, runtime

    cfg = _config("digits_classifier", config, CONFIGS)
    images, labels = _data.digits()
    train_idx, test_idx = digits_split(cfg["n_train"])
    model = _built(cfg["seed"], lambda: nets.DigitsClassifier(width=cfg["width"], features=cfg["features"]))
    model.to(runtime.device())
    result = train_classifier(model, images[train_idx], labels[train_idx], cfg["steps"],
                              batch_size=cfg["batch_size"], lr=cfg["lr"], shift=cfg["shift"], ema=cfg["ema"],
                              generator=torch.Generator().manual_seed(cfg["seed"]), progress=progress)
    out = result.ema_model
    out.metrics = {"final_loss": sum(result.losses[-200:]) / len(result.losses[-200:]),
                   "train_accuracy": accuracy(out, images[train_idx], labels[train_idx]),
                   "heldout_accuracy": accuracy(out, images[test_idx], labels[test_idx]) if len(test_idx) else None,
                   "n_train": len(train_idx), "n_heldout": len(test_idx)}
    out.config = cfg
    return out


def digits_unet_lik(config=None, progress=True):
    """U-Net denoiser (the architecture of ``digits_unet``) trained with the ELBO's σ⁻³ weighting
    (ε target, log-uniform σ on ``[sigma_min, sigma_max]``) on the first ``n_train`` digits of
    :func:`digits_split`; the rest are held out for Chapter 4's bits per dimension."""
    from . import data as _data

    cfg = _config("digits_unet_lik", config, CONFIGS)
    images, _ = _data.digits()
    train_idx, _ = digits_split(cfg["n_train"])
    return _fit_denoiser(cfg, images[train_idx], _unet, progress=progress, sigma_sampler="loguniform",
                         sigma_min=cfg["sigma_min"], sigma_max=cfg["sigma_max"])


def digits16_resnet(config=None, progress=True):
    """Unconditional zero-padded ResNet on :func:`digits16` (receptive field 11×11 by default:
    ``depth=5``, ``kernel=3``); v-target, σ_data = 0.5, log-normal σ."""
    cfg = _config("digits16_resnet", config, CONFIGS)
    images, _ = digits16(cfg["size"], cfg["n_train"])
    return _fit_denoiser(cfg, images, _resnet, progress=progress)


def patches_unet(config=None, progress=True):
    """Unconditional U-Net denoiser (the digits architecture) on ``n_train`` 8×8 grey patches of
    scikit-image's photographs (:func:`companion.data.patches`, ``split="train"``; v-target, σ_data = 0.4)."""
    from . import data as _data

    cfg = _config("patches_unet", config, CONFIGS)
    images = _data.patches(cfg["n_train"], seed=cfg["seed"])
    return _fit_denoiser(cfg, images, _unet, progress=progress)


#: the zoo's recipes: ``RECIPES[name](config=None, progress=True)`` -> the trained EMA model, with
#: ``.config`` (the full config used) and ``.metrics`` (final loss, accuracies) attached; Chapter 7's
#: zoo (:data:`companion.gahb.RECIPES`, configs in :data:`companion.gahb.CONFIGS`) is included
RECIPES = {f.__name__: f for f in (digits_unet, digits_unet_cond, digits_resnet, digits_classifier, ring_mlp,
                                   digits_unet_lik, digits16_resnet, patches_unet)}
RECIPES.update(gahb.RECIPES)
CONFIGS.update(gahb.CONFIGS)


def main(argv=None):
    """Command line: ``python -m companion.recipes RECIPE [--steps N] [--out PATH] [--quiet]``."""
    parser = argparse.ArgumentParser(prog="python -m companion.recipes",
                                     description="Train a checkpoint of the companion's zoo.")
    parser.add_argument("recipe", choices=sorted(RECIPES))
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    parser.add_argument("--out", default=None, help="output file (default companion/checkpoints/RECIPE.pt)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    config = {} if args.steps is None else {"steps": args.steps}
    start = time.time()
    model = RECIPES[args.recipe](config, progress=not args.quiet)
    out = save(model, args.out or CHECKPOINT_DIR / f"{args.recipe}.pt", args.recipe, model.config)
    print(f"{args.recipe}: {time.time() - start:.0f} s, metrics {model.metrics}, "
          f"{out.stat().st_size / 1e6:.2f} MB -> {out}")
    return out


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
