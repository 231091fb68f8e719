"""Small σ-conditioned networks and the wrapper that turns them into denoisers ``D(x, sigma)``.

Every consumer of a trained network (samplers, metrics, chapters) sees the canonical denoiser
``D(x, sigma, labels=None) -> x0_hat`` of the variance-exploding convention x = x0 + σ ε.
:class:`Denoiser` gets there from a *raw* network ``net(x_in, c_noise, labels)`` with the
preconditioning of Karras et al. (EDM, 2022):

* input scaling ``c_in = 1 / sqrt(σ² + σ_data²)``, so ``x_in = c_in x`` has about unit variance;
* noise conditioning ``c_noise = log(σ) / 4``;
* the raw output is read as a prediction of ``target`` (``"x0"``, ``"eps"``, ``"v"`` or
  ``"score"``) and converted to x0 with :func:`companion.denoisers.x0_from`. With
  ``target="v"`` this is EDM's ``D = c_skip x + c_out F`` (up to the sign of ``F``).

Raw networks: :class:`MLP` (points ``(B, D)``), :class:`UNet` and :class:`ResNet` (images
``(B, C, H, W)``, 8×8 to 32×32, zero padding); all embed ``c_noise`` with Fourier features and
an MLP, and, when ``n_classes`` is given, a label from ``n_classes + 1`` entries, the last one
(index ``n_classes``) being the *null* label used for classifier-free guidance. Plus
:class:`DigitsClassifier`, a small CNN on clean 8×8 digits whose penultimate features feed the
Fréchet distance of :mod:`companion.metrics`.

Every module stores the keyword arguments it was built with (``.kwargs``); :func:`spec` and
:func:`build` turn a model into a plain dict and back, which is how the checkpoint zoo of
:mod:`companion.training` stores architectures safely (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from ._checks import as_sigma, as_tensor
from .denoisers import TARGETS, x0_from

__all__ = [
    "Denoiser", "MLP", "UNet", "ResNet", "DigitsClassifier", "NoiseEmbedding",
    "spec", "build", "follow",
]


def follow(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The package's device rule: move ``model`` (in place) to the device of its input ``x``.

    Does nothing when the model's parameters and buffers already live there, so a chapter never
    has to remember where a checkpoint was loaded: the model runs wherever its input is (the
    weights travel once, on the first call with an input on another device). Returns the dtype
    the model computes in: that of its floating-point parameters (``x``'s when it has none).
    """
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device != x.device for t in tensors):
        model.to(x.device)
    return next((t.dtype for t in tensors if t.is_floating_point()), x.dtype)

def _check_n_classes(n_classes, name="n_classes"):
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int)
                                  or n_classes <= 0):
        raise ValueError(f"{name} must be None or a positive int, got {n_classes!r}")
    return n_classes


def _labels_or_null(labels, batch: int, n_classes, device) -> torch.Tensor | None:
    """``labels`` as a ``(B,)`` long tensor; ``None`` becomes the null label ``n_classes``."""
    if n_classes is None:
        if labels is not None:
            raise ValueError("labels were given to an unconditional model (n_classes=None)")
        return None
    if labels is None:
        return torch.full((batch,), n_classes, dtype=torch.long, device=device)
    labels = torch.as_tensor(labels)       # checked where it lives, then moved to the input's device
    if labels.dim() == 0:
        labels = labels.expand(batch)
    if labels.shape != (batch,) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({batch},), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if not labels.is_meta and ((labels < 0).any() or (labels > n_classes).any()):
        raise ValueError(f"labels must lie in 0..{n_classes} ({n_classes} = null label)")
    return labels.long().to(device)


class NoiseEmbedding(nn.Module):
    """Embedding of ``c_noise`` (and optionally a label) into a vector of size ``dim``.

    Fourier features ``[cos(2π f c), sin(2π f c)]`` with fixed log-spaced frequencies f in
    [1/4, 16] (``c_noise = log(σ)/4`` ranges over about [-2.5, 1.5]), followed by a two-layer
    MLP; a learned label embedding with ``n_classes + 1`` rows (last = null) is added.

    Shapes: ``c_noise (B,)``, ``labels (B,)`` long or None → ``(B, dim)``.
    """

    def __init__(self, dim: int, n_classes: int | None = None, n_freqs: int = 16):
        super().__init__()
        self.n_classes = _check_n_classes(n_classes)
        self.register_buffer("freqs", torch.logspace(math.log10(0.25), math.log10(16.0), n_freqs),
                             persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(n_classes + 1, dim) if n_classes is not None else None

    def forward(self, c_noise: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        arg = 2 * math.pi * c_noise[:, None] * self.freqs
        emb = self.mlp(torch.cat([arg.cos(), arg.sin()], dim=1))
        labels = _labels_or_null(labels, c_noise.shape[0], self.n_classes, c_noise.device)
        if labels is not None:
            emb = emb + self.label(labels)
        return emb


class MLP(nn.Module):
    """Residual MLP for points ``(B, dim)``: ``net(x_in, c_noise, labels) -> (B, dim)``.

    ``depth`` residual blocks ``h + W2 silu(W1 silu(h) + e)`` of width ``hidden``, where ``e`` is
    the noise (and label) embedding projected to the block.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, n_classes: int | None = None):
        super().__init__()
        self.kwargs = dict(dim=dim, hidden=hidden, depth=depth, n_classes=n_classes)
        self.dim = dim
        self.embed = NoiseEmbedding(hidden, n_classes)
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleList([nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)])
            for _ in range(depth))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x_in, c_noise, labels=None):
        if x_in.dim() != 2 or x_in.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x_in.shape)}")
        emb = F.silu(self.embed(c_noise, labels))
        h = self.inp(x_in)
        for lin1, lin_emb, lin2 in self.blocks:
            h = h + lin2(F.silu(lin1(F.silu(h)) + lin_emb(emb)))
        return self.out(F.silu(h))


class _ConvBlock(nn.Module):
    """Residual block ``x + conv_b(silu(conv_a(silu(norm(x))) + e))`` (zero padding).

    ``conv_a`` has kernel ``kernel``, ``conv_b`` kernel ``kernel_b``; ``norm`` is GroupNorm or
    the identity. ``conv_b`` starts at zero so each block starts as the identity (that keeps
    a deep stack without normalization stable).
    """

    def __init__(self, c_in, c_out, emb_dim, norm: bool, kernel=3, kernel_b=3):
        super().__init__()
        self.norm_a = nn.GroupNorm(min(8, c_in), c_in) if norm else nn.Identity()
        self.norm_b = nn.GroupNorm(min(8, c_out), c_out) if norm else nn.Identity()
        self.conv_a = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, padding_mode="zeros")
        self.emb = nn.Linear(emb_dim, c_out)
        self.conv_b = nn.Conv2d(c_out, c_out, kernel_b, padding=kernel_b // 2, padding_mode="zeros")
        nn.init.zeros_(self.conv_b.weight)
        nn.init.zeros_(self.conv_b.bias)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x, emb):
        h = self.conv_a(F.silu(self.norm_a(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv_b(F.silu(self.norm_b(h)))
        return self.skip(x) + h


def _check_image(x, channels, name="x"):
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(f"{name} must have shape (B, {channels}, H, W), got {tuple(x.shape)}")


class UNet(nn.Module):
    """A small U-Net for images ``(B, channels, H, W)``: ``net(x_in, c_noise, labels)`` → same shape.

    Resolution levels with channel multipliers ``mults`` (``base * m`` channels), ``blocks``
    residual blocks (GroupNorm, SiLU, 3×3 convolutions with zero padding) per level on the way
    down and up, 2×2 average pooling down, nearest-neighbour upsampling up, skip connections
    by concatenation. H and W must be divisible by ``2 ** (len(mults) - 1)``: with the default
    ``mults=(1, 2, 2)``, 8×8 goes down to 2×2 and 32×32 to 8×8.
    """

    def __init__(self, channels: int = 1, base: int = 32, mults=(1, 2, 2), blocks: int = 1,
                 n_classes: int | None = None):
        super().__init__()
        mults = [int(m) for m in mults]
        self.kwargs = dict(channels=channels, base=base, mults=mults, blocks=blocks, n_classes=n_classes)
        self.channels = channels
        emb = 4 * base
        self.embed = NoiseEmbedding(emb, n_classes)
        self.inp = nn.Conv2d(channels, base, 3, padding=1)
        widths = [base * m for m in mults]
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        c, skips = base, []
        for w in widths:
            level = nn.ModuleList()
            for _ in range(blocks):
                level.append(_ConvBlock(c, w, emb, norm=True))
                c = w
            self.down.append(level)
            skips.append(c)
        self.mid = _ConvBlock(c, c, emb, norm=True)
        for w in reversed(widths):
            level = nn.ModuleList()
            skip = skips.pop()
            for i in range(blocks):
                level.append(_ConvBlock(c + (skip if i == 0 else 0), w, emb, norm=True))
                c = w
            self.up.append(level)
        self.out = nn.Sequential(nn.GroupNorm(min(8, c), c), nn.SiLU(), nn.Conv2d(c, channels, 3, padding=1))
        self.factor = 2 ** (len(widths) - 1)

    def forward(self, x_in, c_noise, labels=None):
        _check_image(x_in, self.channels)
        if x_in.shape[-1] % self.factor or x_in.shape[-2] % self.factor:
            raise ValueError(f"image height and width must be divisible by {self.factor}, "
                             f"got {tuple(x_in.shape[-2:])}")
        emb = self.embed(c_noise, labels)
        h, skips = self.inp(x_in), []
        for i, level in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            for block in level:
                h = block(h, emb)
            skips.append(h)
        h = self.mid(h, emb)
        for i, level in enumerate(self.up):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = torch.cat([h, skips.pop()], dim=1)
            for block in level:
                h = block(h, emb)
        return self.out(h)


class ResNet(nn.Module):
    """A local ResNet without normalization layers, at full resolution, zero padding.

    ``1×1 conv → depth × [x + conv1×1(silu(conv k×k(silu(x)) + e))] → 1×1 conv``: only the
    ``depth`` k×k convolutions see neighbours, so the output at a pixel depends on the input in
    a ``receptive_field × receptive_field`` patch around it, ``receptive_field = 1 + depth (k − 1)``
    (7×7 for the default ``depth=3, kernel=3``). That locality is what Chapter 6 (Kamb &
    Ganguli) compares with the local score machine. Zero padding lets pixels near the border
    know where the border is (it breaks translation equivariance there).
    """

    def __init__(self, channels: int = 1, width: int = 64, depth: int = 3, kernel: int = 3,
                 n_classes: int | None = None):
        super().__init__()
        if kernel % 2 != 1 or kernel < 1:
            raise ValueError(f"kernel must be an odd positive int, got {kernel!r}")
        self.kwargs = dict(channels=channels, width=width, depth=depth, kernel=kernel, n_classes=n_classes)
        self.channels = channels
        self.embed = NoiseEmbedding(2 * width, n_classes)
        self.inp = nn.Conv2d(channels, width, 1)
        self.blocks = nn.ModuleList(
            _ConvBlock(width, width, 2 * width, norm=False, kernel=kernel, kernel_b=1) for _ in range(depth))
        self.out = nn.Conv2d(width, channels, 1)

    @property
    def receptive_field(self) -> int:
        """Side of the square input patch that one output pixel depends on."""
        return 1 + self.kwargs["depth"] * (self.kwargs["kernel"] - 1)

    def forward(self, x_in, c_noise, labels=None):
        _check_image(x_in, self.channels)
        emb = self.embed(c_noise, labels)
        h = self.inp(x_in)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(h))


class DigitsClassifier(nn.Module):
    """A small CNN classifier of clean 8×8 digits in [-1, 1].

    Two 3×3 convolution stages (zero padding, SiLU, 2×2 max pooling: 8×8 → 4×4 → 2×2), then
    ``features(x) -> (B, features)`` (a linear layer on the flattened map, SiLU) and
    ``forward(x) -> logits (B, n_classes)``.
    """

    def __init__(self, channels: int = 1, width: int = 32, features: int = 64, n_classes: int = 10):
        super().__init__()
        self.kwargs = dict(channels=channels, width=width, features=features, n_classes=n_classes)
        self.channels = channels
        self.conv = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.SiLU(), nn.MaxPool2d(2),
        )
        self.fc = nn.Linear(2 * width * 4, features)
        self.head = nn.Linear(features, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, features)`` of images ``(B, channels, 8, 8)``."""
        x = as_tensor(x, "x")
        if x.dim() != 4 or x.shape[1:] != (self.channels, 8, 8):
            raise ValueError(f"x must have shape (B, {self.channels}, 8, 8), got {tuple(x.shape)}")
        x = x.to(follow(self, x))
        return F.silu(self.fc(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes)``."""
        return self.head(self.features(x))


class Denoiser(nn.Module):
    """The canonical denoiser ``D(x, sigma, labels=None) -> x0_hat`` around a raw network.

    Args:
        net: raw network ``net(x_in, c_noise, labels) -> prediction`` (same shape as x).
        target: what the raw output predicts: ``"v"`` (default), ``"eps"``, ``"x0"`` or ``"score"``.
        sigma_data: data scale σ_data of the preconditioning (0.5 suits images in [-1, 1]).
        n_classes: number of classes for a class-conditional model (None: unconditional);
            must match the raw network's.

    ``forward(x, sigma, labels=None)``: x ``(B, *shape)``, sigma a float, 0-d or ``(B,)``
    tensor (> 0), labels ``(B,)`` ints in 0..n_classes or None (the null label ``n_classes``,
    i.e. the unconditional model). The model runs on the device of ``x`` (:func:`follow` moves
    it there) and answers in ``x``'s dtype. The net sees ``x_in = x / sqrt(σ² + σ_data²)`` and
    ``c_noise = log(σ)/4`` (Karras et al. 2022, Table 1), and its output ``F`` is converted
    with :func:`companion.denoisers.x0_from`; for ``target="v"`` that is
    ``D = σ_data²/(σ²+σ_data²) x − σ σ_data/sqrt(σ²+σ_data²) F``.
    """

    def __init__(self, net: nn.Module, target: str = "v", sigma_data: float = 0.5,
                 n_classes: int | None = None):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
            raise ValueError(f"sigma_data must be a positive float, got {sigma_data!r}")
        _check_n_classes(n_classes)
        net_classes = getattr(net, "kwargs", {}).get("n_classes", n_classes)
        if net_classes != n_classes:
            raise ValueError(f"n_classes={n_classes!r} differs from the network's n_classes={net_classes!r}")
        self.net = net
        self.target = target
        self.sigma_data = float(sigma_data)
        self.n_classes = n_classes
        self.kwargs = dict(target=target, sigma_data=float(sigma_data), n_classes=n_classes)

    def forward(self, x: torch.Tensor, sigma, labels=None) -> torch.Tensor:
        x = as_tensor(x, "x")
        if x.dim() < 2:
            raise ValueError(f"x must have shape (B, ...), got {tuple(x.shape)}")
        s = as_sigma(sigma, x)
        s_b = s.reshape(-1).expand(x.shape[0]) if s.dim() == 0 else s.reshape(-1)
        labels = _labels_or_null(labels, x.shape[0], self.n_classes, x.device)
        c_in = 1.0 / torch.sqrt(s ** 2 + self.sigma_data ** 2)
        dtype = follow(self, x)                        # run where x lives, in the model's dtype
        pred = self.net((c_in * x).to(dtype), (torch.log(s_b) / 4).to(dtype), labels)
        return x0_from(pred, self.target, x, s_b, self.sigma_data)


_CLASSES = {cls.__name__: cls for cls in (MLP, UNet, ResNet, DigitsClassifier)}


def _plain(value):
    """Tuples → lists so that the spec is made only of types ``weights_only`` unpickles."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def spec(model: nn.Module) -> dict:
    """The architecture of ``model`` as a plain dict ``{"class", "kwargs"[, "net"]}`` for :func:`build`."""
    if isinstance(model, Denoiser):
        return {"class": "Denoiser", "kwargs": _plain(model.kwargs), "net": spec(model.net)}
    name = type(model).__name__
    if name not in _CLASSES or not hasattr(model, "kwargs"):
        raise TypeError(f"model must be a Denoiser or one of {sorted(_CLASSES)}, got {name}")
    return {"class": name, "kwargs": _plain(model.kwargs)}


def build(architecture: dict) -> nn.Module:
    """Rebuild an (untrained) model from :func:`spec`'s dict."""
    if not isinstance(architecture, dict) or "class" not in architecture:
        raise ValueError(f"architecture must be a dict made by nets.spec, got {architecture!r}")
    name, kwargs = architecture["class"], dict(architecture.get("kwargs", {}))
    if name == "Denoiser":
        return Denoiser(build(architecture["net"]), **kwargs)
    if name not in _CLASSES:
        raise ValueError(f"unknown architecture class {name!r}; expected Denoiser or one of {sorted(_CLASSES)}")
    return _CLASSES[name](**kwargs)


# ----------------------------------------------------------------------------------------------
# Bias-free blind denoiser (Chapter 7: Kadkhodaie, Guth, Simoncelli & Mallat 2024)
# ----------------------------------------------------------------------------------------------

class BiasFreeNorm(nn.Module):
    """Batch normalisation without additive constants (Mohan et al. 2020; Kadkhodaie et al. 2024).

    Each channel is *divided* by a standard deviation and multiplied by a learned gain; nothing
    is subtracted or added. In training mode the standard deviation is the batch's
    (``sqrt(var over batch and pixels + 1e-5)``) and a running average of it (momentum 0.1) is
    kept; in eval mode the running value is used, so the layer is linear: ``norm(a h) = a norm(h)``
    for every real ``a``. Shapes: ``(B, C, H, W)`` → same.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.register_buffer("running_sd", torch.ones(1, channels, 1, 1))
        self.gain = nn.Parameter(torch.ones(1, channels, 1, 1))

    def forward(self, h):
        if self.training:
            sd = torch.sqrt(h.var(dim=(0, 2, 3), keepdim=True, unbiased=False) + 1e-5)
            with torch.no_grad():
                self.running_sd.lerp_(sd, 0.1)
        else:
            sd = self.running_sd
        return h / sd * self.gain


class BiasFreeUNet(nn.Module):
    r"""A bias-free, noise-level-blind U-Net denoiser ``D(y) = y − f(y)`` (Kadkhodaie et al. 2024).

    The network ``f`` predicts the noise. It has no additive constant anywhere: 3×3 convolutions
    without bias (zero padding), :class:`BiasFreeNorm` (divide by a standard deviation, multiply
    by a gain), ReLU, 2×2 average pooling, nearest-neighbour upsampling and skip connections by
    concatenation. In eval mode every layer is positively homogeneous, hence so is the denoiser:
    ``D(a y) = a D(y)`` for ``a > 0``, and, ``D`` being piecewise linear, ``D(y) = J(y) y`` with
    ``J`` its Jacobian (Mohan et al. 2020).

    Architecture: ``levels`` resolutions with ``base · min(2^l, 2)`` channels at level ``l``
    (``base, 2 base, 2 base, …``), ``convs`` (conv, norm, ReLU) layers per level on the way down
    and up, then a 3×3 output convolution. H and W must be divisible by ``2^(levels − 1)``.
    :attr:`receptive_field` is the side of the input patch one output pixel can see
    (46 for the default ``levels=3, convs=2``: the whole of a 16×16 or 32×32 image).

    Call: ``forward(x, sigma=None, labels=None)`` with ``x`` of shape ``(B, channels, H, W)``
    returns ``D(x)`` of the same shape. The network is *blind*: ``sigma`` is accepted so that
    it can be used wherever a denoiser ``D(x, sigma)`` is expected, and ignored (it infers the
    noise level from ``x``); ``labels`` must be None. Runs on the device of its parameters
    (move it with ``.to``); ``x`` is moved there and the output returned on ``x``'s device.
    """

    def __init__(self, channels: int = 1, base: int = 16, levels: int = 3, convs: int = 2):
        super().__init__()
        for name, value in dict(channels=channels, base=base, levels=levels, convs=convs).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.kwargs = dict(channels=channels, base=base, levels=levels, convs=convs)
        self.channels = channels
        widths = [base * min(2 ** lvl, 2) for lvl in range(levels)]

        def stage(c_in, c_out):
            layers = []
            for i in range(convs):
                layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                           BiasFreeNorm(c_out), nn.ReLU()]
            return nn.Sequential(*layers)

        self.down = nn.ModuleList()
        c = channels
        for w in widths:
            self.down.append(stage(c, w))
            c = w
        self.up = nn.ModuleList(stage(c + w, w) for w in reversed(widths[:-1]))
        self.out = nn.Conv2d(widths[0], channels, 3, padding=1, bias=False)
        self.factor = 2 ** (levels - 1)

    @property
    def receptive_field(self) -> int:
        """Side (pixels) of the input patch that can influence one output pixel (3×3 convs, 2×2 pools)."""
        levels, convs = self.kwargs["levels"], self.kwargs["convs"]
        rf, jump = 1, 1
        for lvl in range(levels):  # way down: convs at stride `jump`, then a 2×2 pool
            rf += 2 * convs * jump
            if lvl < levels - 1:
                rf += jump
                jump *= 2
        for _ in range(levels - 1):  # way up: nearest upsampling, then convs at the finer stride
            jump //= 2
            rf += 2 * convs * jump
        return rf + 2  # output convolution

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """The network's noise prediction ``f(x)`` (``(B, C, H, W)``), so that ``D(x) = x − f(x)``."""
        _check_image(x, self.channels)
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(f"image height and width must be divisible by {self.factor}, got {tuple(x.shape[-2:])}")
        h, skips = x, []
        for i, stage in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = stage(h)
            skips.append(h)
        skips.pop()
        for stage in self.up:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            h = stage(torch.cat([h, skips.pop()], dim=1))
        return self.out(h)

    def forward(self, x, sigma=None, labels=None) -> torch.Tensor:
        if labels is not None:
            raise ValueError("labels must be None: BiasFreeUNet is unconditional")
        x = as_tensor(x, "x")
        weight = self.out.weight
        y = x.to(device=weight.device, dtype=weight.dtype)
        return (y - self.noise(y)).to(device=x.device, dtype=x.dtype)


_CLASSES[BiasFreeUNet.__name__] = BiasFreeUNet
__all__ += ["BiasFreeNorm", "BiasFreeUNet"]
