"""The checker mechanism: run a student's function and a reference on the same cases and compare."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

__all__ = ["Verdict", "compare"]


@dataclass
class Verdict:
    """Outcome of a check: ``passed`` and the message that was printed. Truthy when passed."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed})"


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def _describe(args: Sequence, kwargs: dict) -> str:
    def short(v):
        if isinstance(v, torch.Tensor):
            return f"tensor{tuple(v.shape)}" if v.numel() > 4 else repr(v.tolist())
        return repr(v)

    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
    return ", ".join(parts)


def compare(
    student: Callable,
    reference: Callable,
    cases: Iterable[tuple[Sequence, dict]],
    rtol: float = 1e-4,
    atol: float = 1e-6,
    name: str = "your function",
    quiet: bool = False,
) -> Verdict:
    """Call ``student`` and ``reference`` on every ``(args, kwargs)`` case and compare the outputs.

    Outputs may be a tensor or a tuple of tensors; they must have equal shapes and agree within
    ``torch.allclose(rtol, atol)``. Inputs are cloned so a function that modifies its arguments in
    place cannot affect the reference. Prints ``✓``/``✗`` with a helpful message and returns a
    :class:`Verdict`.
    """
    if not callable(student):
        raise TypeError(f"student must be a function, got {type(student).__name__}")
    cases = list(cases)
    if not cases:
        raise ValueError("cases must not be empty")
    worst = 0.0

    def fail(msg: str) -> Verdict:
        text = f"✗ {name}: {msg}"
        if not quiet:
            print(text)
        return Verdict(False, text)

    def clone(v):
        return v.clone() if isinstance(v, torch.Tensor) else v

    for i, (args, kwargs) in enumerate(cases):
        where = f"case {i + 1}/{len(cases)} ({_describe(args, kwargs)})"
        expected = _as_tuple(reference(*[clone(a) for a in args], **{k: clone(v) for k, v in kwargs.items()}))
        try:
            got = _as_tuple(student(*[clone(a) for a in args], **{k: clone(v) for k, v in kwargs.items()}))
        except NotImplementedError:
            return fail("not implemented yet (it raised NotImplementedError).")
        except Exception as exc:  # report, do not crash the notebook
            return fail(f"raised {type(exc).__name__}: {exc} on {where}.")
        if len(got) != len(expected):
            return fail(f"returned {len(got)} value(s), expected {len(expected)} on {where}.")
        for j, (g, e) in enumerate(zip(got, expected)):
            g = torch.as_tensor(g, dtype=e.dtype, device=e.device) if not isinstance(g, torch.Tensor) else g
            if g.shape != e.shape:
                return fail(f"output {j} has shape {tuple(g.shape)}, expected {tuple(e.shape)} on {where}.")
            g = g.to(e.dtype)
            if not torch.isfinite(g).all():
                return fail(f"output {j} has non-finite values on {where}.")
            err = (g - e).abs()
            if not torch.allclose(g, e, rtol=rtol, atol=atol):
                k = int(torch.argmax(err.reshape(-1) - rtol * e.abs().reshape(-1)))
                return fail(
                    f"output {j} differs on {where}: at flat index {k} you gave "
                    f"{g.reshape(-1)[k].item():.6g}, expected {e.reshape(-1)[k].item():.6g} "
                    f"(max abs error {err.max().item():.3g})."
                )
            worst = max(worst, err.max().item() if err.numel() else 0.0)
    text = f"✓ {name}: all {len(cases)} cases agree with the reference (max abs error {worst:.2g})."
    if not quiet:
        print(text)
    return Verdict(True, text)
