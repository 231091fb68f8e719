"""The checker mechanism: run a student's function and a reference on the same cases and compare.

Besides "wrong values at index k", a failed check names the likely cause when the output matches a
typical mistake (sign flipped, off by a factor 2, normalised along the wrong axis, float32 precision,
precision lost at tiny values), and a check fails when the answer *delegates*: calls one of the
companion's own implementations that the exercise asks the student to write (``forbid``).
"""
from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

__all__ = ["Verdict", "compare", "diagnose", "describe"]


@dataclass
class Verdict:
    """Outcome of a check: ``passed`` and the message that was printed. Truthy when passed."""

    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"Verdict(passed={self.passed})"


def noisy_points(g: torch.Generator, M: int, B: int, D: int, scale: float = 1.0):
    """Random cases for checkers: ``data`` ``(M, D)`` standard normal and ``x`` ``(B, D)``, random data
    points plus ``scale`` times standard normal noise (float64, drawn from ``g`` in that order)."""
    data = torch.randn(M, D, generator=g, dtype=torch.float64)
    x = data[torch.randint(0, M, (B,), generator=g)] + scale * torch.randn(B, D, generator=g, dtype=torch.float64)
    return x, data


def _as_tuple(out) -> tuple:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def describe(v) -> str:
    """A short readable summary of an argument: numbers with 4 digits, tensors by shape/dtype/range."""
    if isinstance(v, torch.Tensor):
        if v.numel() <= 4 and v.dim() <= 1:  # a matrix keeps its shape
            vals = ", ".join(f"{x:.4g}" for x in v.detach().reshape(-1).tolist())
            return f"[{vals}]" if v.dim() else vals
        dtype = str(v.dtype).replace("torch.", "")
        lo, hi = v.min().item(), v.max().item()
        return f"tensor{tuple(v.shape)} {dtype} in [{lo:.3g}, {hi:.3g}]"
    if isinstance(v, float):
        return f"{v:.4g}"
    if callable(v) and not isinstance(v, type) and hasattr(v, "__qualname__"):
        return f"function {v.__qualname__}"  # never "<bound method ... at 0x...>"
    if callable(v) and not hasattr(v, "__qualname__"):
        return f"{type(v).__name__} object"
    text = repr(v)
    return text if len(text) <= 40 and " at 0x" not in text else f"{type(v).__name__} object"


def _describe(args: Sequence, kwargs: dict) -> str:
    return ", ".join([describe(a) for a in args] + [f"{k}={describe(v)}" for k, v in kwargs.items()])


def _close(a, b, rtol, atol) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=rtol, atol=atol))


def diagnose(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6,
             was_float32: bool = False) -> str:
    """Name the typical mistake that turns ``expected`` into ``got`` (same shape), or return ``""``.

    Tried in turn: sign flipped; off by a factor 2 (or 1/2); normalised (sums to 1) along another
    axis than the reference; agreement only to float32 precision; errors only where the values are
    tiny (cancellation, e.g. ``exp(B) - 1`` instead of ``expm1(B)``).
    """
    g, e = got.double(), expected.double()
    if not e.abs().max() > 0:
        return ""
    if _close(g, -e, rtol, atol):
        return "Likely cause: the sign is flipped."
    for factor, word in ((2.0, "twice"), (0.5, "half")):
        if _close(g, factor * e, rtol, atol):
            return f"Likely cause: your values are {word} the expected ones (a factor 2 off?)."
    if e.dim() > 1:
        sums_to_one = [d for d in range(e.dim()) if _close(e.sum(d), torch.ones_like(e.sum(d)), 1e-6, 1e-8)]
        g_one = [d for d in range(g.dim()) if _close(g.sum(d), torch.ones_like(g.sum(d)), 1e-6, 1e-8)]
        if sums_to_one and g_one and not set(sums_to_one) & set(g_one):
            return (f"Likely cause: wrong axis - your output sums to 1 along dim {g_one[0]}, "
                    f"it should along dim {sums_to_one[0]}.")
    if was_float32:
        return "Likely cause: precision - your output is float32; compute in float64 (the inputs' dtype)."
    scale = e.abs().max()
    bad = ~torch.isclose(g, e, rtol=rtol, atol=atol)
    tiny = (e[bad].abs() < 1e-3 * scale).all()
    if bad.any() and tiny and ((g[bad] - e[bad]).abs() < 0.1 * e[bad].abs() + atol).all():
        return ("Likely cause: precision lost where the values are tiny (cancellation). Rewrite e.g. "
                "exp(B) - 1 as expm1(B), log(1 + y) as log1p(y), a normalised exp as softmax.")
    if _close(g, e, 1e-5, atol):
        why = "your output is float32" if was_float32 else "something was computed in float32"
        return f"Likely cause: precision - it agrees only to about 1e-6 ({why}); compute in float64."
    return ""


@contextmanager
def _watch(forbid: Sequence[tuple[object, str]]):
    """Replace each ``getattr(owner, name)`` by a wrapper that records that it was called."""
    calls, saved = [], []

    def wrap(func, label):
        def wrapper(*args, **kwargs):
            calls.append(label)
            return func(*args, **kwargs)

        return wrapper

    for owner, name in forbid:
        own = name in vars(owner)
        original = vars(owner)[name] if own else getattr(owner, name)
        saved.append((owner, name, original if own else None))
        label = f"{getattr(owner, '__name__', type(owner).__name__)}.{name}"
        setattr(owner, name, wrap(original, label))
    try:
        yield calls
    finally:
        for owner, name, original in reversed(saved):
            if original is None:
                delattr(owner, name)  # it was inherited: uncover it again
            else:
                setattr(owner, name, original)


def _global_uses(student: Callable, forbid: Sequence[tuple[object, str]]) -> str:
    """The name of a global the answer refers to that *is* a forbidden function (an alias such as
    ``from companion.els import local_weights as lw`` made before the check, which the watch cannot see)."""
    targets = {id(getattr(owner, name)): f"{getattr(owner, '__name__', '')}.{name}" for owner, name in forbid}
    if id(getattr(student, "__func__", student)) in targets:  # the reference handed in as the answer
        return targets[id(getattr(student, "__func__", student))]
    code, env = getattr(student, "__code__", None), getattr(student, "__globals__", {})
    stack, names = [code] if code is not None else [], set()
    while stack:  # the function and the functions/lambdas nested in it
        c = stack.pop()
        names.update(c.co_names)
        stack += [k for k in c.co_consts if hasattr(k, "co_names")]
    for n in sorted(names):
        obj = env.get(n)
        if id(getattr(obj, "__func__", obj)) in targets:
            return targets[id(getattr(obj, "__func__", obj))]
    return ""


def _source_uses(student: Callable, patterns: Sequence[str]) -> str:
    """The first of ``patterns`` (regexes) found in the student's source, the ``def`` line excluded."""
    try:
        source = inspect.getsource(student)
    except (OSError, TypeError):
        return ""
    body = re.sub(r"^\s*def [^\n]*\n", "", source, count=1)
    for pattern in patterns:
        m = re.search(pattern, body)
        if m:
            return m.group(0)
    return ""


def _named_mistake(mistakes, args, kwargs, j, got, rtol, atol) -> str:
    """The hint of the first ``(hint, wrong_reference)`` whose output ``j`` matches ``got``, or ``""``."""
    for hint, wrong in mistakes:
        out = _as_tuple(wrong(*[a.clone() if isinstance(a, torch.Tensor) else a for a in args], **kwargs))
        if j < len(out) and _close(got, out[j].to(got.dtype), rtol, atol):
            return f"Likely cause: {hint}"
    return ""


def compare(
    student: Callable,
    reference: Callable,
    cases: Iterable[tuple[Sequence, dict]],
    rtol: float = 1e-4,
    atol: float = 1e-6,
    name: str = "your function",
    quiet: bool = False,
    forbid: Sequence[tuple[object, str]] = (),
    forbid_source: Sequence[str] = (),
    mistakes: Sequence[tuple[str, Callable]] = (),
) -> Verdict:
    """Call ``student`` and ``reference`` on every ``(args, kwargs)`` case and compare the outputs.

    Outputs may be a tensor or a tuple of tensors; they must have equal shapes and agree within
    ``torch.allclose(rtol, atol)``. Inputs are cloned so a function that modifies its arguments in
    place cannot affect the reference. ``forbid`` lists ``(owner, attribute)`` pairs (e.g.
    ``(companion.els, "local_weights")``) that the answer must not call, ``forbid_source`` regexes its
    source must not contain (e.g. an import of the reference): the exercise is to write them.
    ``mistakes`` lists an exercise's own typical slips as ``(hint, wrong_reference)`` pairs, the wrong
    function taking the reference's arguments: a wrong output that matches its output is reported with the hint.
    Prints ``✓``/``✗`` with a message naming the likely mistake (:func:`diagnose`) and returns a
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

    used = _source_uses(student, forbid_source) or _global_uses(student, forbid)
    if used:
        return fail(f"your answer uses `{used}`, the companion's own implementation; write it yourself.")
    for i, (args, kwargs) in enumerate(cases):
        where = f"case {i + 1}/{len(cases)} ({_describe(args, kwargs)})"
        expected = _as_tuple(reference(*[clone(a) for a in args], **{k: clone(v) for k, v in kwargs.items()}))
        try:
            with _watch(forbid) as calls:
                got = _as_tuple(student(*[clone(a) for a in args], **{k: clone(v) for k, v in kwargs.items()}))
        except NotImplementedError:
            return fail("not implemented yet (it raised NotImplementedError).")
        except Exception as exc:  # report, do not crash the notebook
            return fail(f"raised {type(exc).__name__}: {exc} on {where}.")
        if calls:
            return fail(f"your answer calls {calls[0]}, the companion's own implementation; write it yourself.")
        if len(got) != len(expected):
            return fail(f"returned {len(got)} value(s), expected {len(expected)} on {where}.")
        for j, (g, e) in enumerate(zip(got, expected)):
            if g is None:
                return fail(f"output {j} is None on {where}: did you forget `return`?")
            g = torch.as_tensor(g, dtype=e.dtype, device=e.device) if not isinstance(g, torch.Tensor) else g
            if g.shape != e.shape:
                hint = ""
                if sorted(g.shape) == sorted(e.shape):
                    hint = " Likely cause: the axes are in the wrong order (transposed?)."
                elif g.numel() == e.numel():
                    hint = " Likely cause: same number of values in another shape (a reshape or view?)."
                elif g.dim() + 1 == e.dim() or g.dim() == e.dim() + 1:
                    hint = " Likely cause: an axis summed/reduced too many or too few (check dim=...)."
                return fail(f"output {j} has shape {tuple(g.shape)}, expected {tuple(e.shape)} on {where}.{hint}")
            was_float32 = g.dtype == torch.float32 and e.dtype == torch.float64
            g = g.to(e.dtype)
            if not torch.isfinite(g).all():
                return fail(f"output {j} has non-finite values on {where}. Likely cause: overflow or 0/0 "
                            "(e.g. exp of a large negative number; use softmax/logsumexp, expm1, log1p).")
            err = (g - e).abs()
            if not torch.allclose(g, e, rtol=rtol, atol=atol):
                k = int(torch.argmax(err.reshape(-1) - rtol * e.abs().reshape(-1)))
                hint = (_named_mistake(mistakes, args, kwargs, j, g, rtol, atol)
                        or diagnose(g, e, rtol, atol, was_float32))
                return fail(
                    f"output {j} differs on {where}: at flat index {k} you gave "
                    f"{g.reshape(-1)[k].item():.6g}, expected {e.reshape(-1)[k].item():.6g} "
                    f"(max abs error {err.max().item():.3g})." + (f" {hint}" if hint else "")
                )
            worst = max(worst, err.max().item() if err.numel() else 0.0)
    text = f"✓ {name}: all {len(cases)} cases agree with the reference (max abs error {worst:.2g})."
    if not quiet:
        print(text)
    return Verdict(True, text)
