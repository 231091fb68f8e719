"""Argument checks shared by the companion's modules.

Each helper raises ``ValueError``/``TypeError`` naming the argument and what was expected,
so that bad input fails early with a message a student can act on.
"""
from __future__ import annotations

import torch

__all__ = ["as_tensor", "as_sigma", "check_batch", "check_positive_int"]


def as_tensor(x, name: str, dtype=None, device=None) -> torch.Tensor:
    """``x`` as a floating tensor (a float, list or array is converted)."""
    if isinstance(x, torch.Tensor):
        t = x
    else:
        try:
            t = torch.as_tensor(x, dtype=dtype if dtype is not None else None)
        except Exception as exc:  # pragma: no cover - message only
            raise TypeError(f"{name} must be a tensor or array-like, got {type(x).__name__}") from exc
    if not t.is_floating_point():
        t = t.to(dtype or torch.get_default_dtype())
    if dtype is not None or device is not None:
        t = t.to(dtype=dtype or t.dtype, device=device or t.device)
    return t


def as_sigma(sigma, x: torch.Tensor, name: str = "sigma", allow_zero: bool = False) -> torch.Tensor:
    """Noise level(s) broadcastable against ``x`` of shape ``(B, *rest)``.

    ``sigma`` may be a Python float, a 0-d tensor or a ``(B,)`` tensor. Returns a tensor of
    shape ``(B, 1, ..., 1)`` (or ``()`` for a scalar) with ``x``'s dtype and device.
    Raises ``ValueError`` for σ ≤ 0 (σ < 0 when ``allow_zero``), non-finite σ or a wrong shape.
    """
    s = as_tensor(sigma, name, dtype=x.dtype, device=x.device)
    if s.dim() == 1 and s.shape[0] == 1:
        s = s.reshape(())
    if s.dim() == 0:
        out = s
    elif s.dim() == 1:
        if x.dim() == 0 or s.shape[0] != x.shape[0]:
            raise ValueError(
                f"{name} must be a float, a 0-d tensor or a (B,) tensor with B = x.shape[0] = "
                f"{x.shape[0] if x.dim() else 'n/a'}, got shape {tuple(s.shape)}"
            )
        out = s.reshape(-1, *([1] * (x.dim() - 1)))
    else:
        raise ValueError(f"{name} must be a float, 0-d or (B,) tensor, got shape {tuple(s.shape)}")
    if s.is_meta:   # shapes only, no values to check (the meta device stands in for a GPU in tests)
        return out
    if not torch.isfinite(s).all():
        raise ValueError(f"{name} must be finite")
    if allow_zero:
        if (s < 0).any():
            raise ValueError(f"{name} must be >= 0, got min {s.min().item():.3g}")
    elif (s <= 0).any():
        raise ValueError(f"{name} must be > 0, got min {s.min().item():.3g}")
    return out


def check_batch(x, name: str, dims: int | None = None, last: int | None = None) -> torch.Tensor:
    """``x`` as a floating tensor with a batch dimension; optionally ``dims`` total and last size ``last``."""
    t = as_tensor(x, name)
    if t.dim() == 0:
        raise ValueError(f"{name} must have a batch dimension, got a scalar")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name} must have {dims} dimensions, got shape {tuple(t.shape)}")
    if last is not None and t.shape[-1] != last:
        raise ValueError(f"{name} must have last dimension {last}, got shape {tuple(t.shape)}")
    return t


def check_positive_int(n, name: str) -> int:
    """``n`` as a positive ``int``; ``ValueError`` otherwise."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"{name} must be a positive int, got {n!r}")
    return n


def follow_device(obj, names, device) -> None:
    """The package's device rule for tensor-holding machines: move ``obj``'s tensor attributes
    ``names`` (``None`` allowed) to ``device``, the device of the input, in place."""
    for name in names:
        t = getattr(obj, name)
        if t is not None and t.device != torch.device(device):
            setattr(obj, name, t.to(device))
