"""Correctness against an independent float64 reference, before anything is timed.

The reference works from NumPy's SVD in float64, sharing no code path with
jaxtrace or the peers: with ``x = U S V^T`` and ``L = logsumexp(S^2, max(n - m, 0)
zeros)``, ``tr expm(x x^T) = e^L``, ``grad tr = 2 U diag(S e^{S^2}) V^T`` and
``grad L = 2 U diag(S e^{S^2 - L}) V^T`` (no overflow for the log). NOTEARS' reference
is SciPy's ``expm`` of ``W o W`` in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg

# Relative tolerances per dtype. On the benchmark's inputs the programs agree with
# the reference to ~1e-6 (float32) and ~1e-14 (float64); the margin leaves room for
# other backends' eigensolvers and for expm's Padé and squarings on n x n matrices.
RTOL = {"float32": 1e-4, "float64": 1e-9}
_TINY = np.finfo(np.float64).tiny


def reference(x: np.ndarray, function: str) -> tuple[np.ndarray, np.ndarray]:
    """Float64 values (shape ``(...)``) and gradients (shape of ``x``) per matrix.

    Args:
      x: host array ``(..., n, m)``.
      function: ``"trace"`` or ``"log_trace"``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape[-2:]
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    mu = s * s
    top = np.maximum(mu.max(axis=-1), 0.0)  # the n - m zeros count in the maximum
    total = np.exp(mu - top[..., None]).sum(axis=-1) + max(n - m, 0) * np.exp(-top)
    log_value = top + np.log(total)
    if function == "log_trace":
        value, weights = log_value, np.exp(mu - log_value[..., None])
    else:
        value, weights = np.exp(log_value), np.exp(mu)
    return value, 2.0 * (u * (s * weights)[..., None, :]) @ vt


def reference_output(x: np.ndarray, function: str, mode: str) -> Any:
    """The reference in a program's output structure (batch summed for the gradient)."""
    value, grad = reference(x, function)
    return value if mode == "value" else (value.sum(), grad)


def notears_reference(w: np.ndarray) -> tuple[tuple[float, np.ndarray], float]:
    """Float64 ``(sum of h(W) over the batch, its gradient exp(W o W)^T o 2W)`` and the sum of
    ``tr exp(W o W)``, the scale of the value's error (see :func:`compare`)."""
    w = np.asarray(w, np.float64)
    e = scipy.linalg.expm(w * w)  # batched over the leading dimensions
    trace = float(np.trace(e, axis1=-2, axis2=-1).sum())
    value = trace - w.size // w.shape[-1]  # d per matrix of the batch
    return (value, np.swapaxes(e, -1, -2) * 2.0 * w), trace


def reference_hvp(x: np.ndarray, v: np.ndarray, function: str, step: float = 1e-5) -> np.ndarray:
    """Float64 Hessian-vector product by central differences of the reference gradient.

    Truncation ``O(step**2)`` and rounding ``O(eps / step)`` are both near 1e-10
    relative for ``||v|| ~ ||x||``.
    """
    x, v = np.asarray(x, np.float64), np.asarray(v, np.float64)
    h = step * np.linalg.norm(x) / max(np.linalg.norm(v), 1e-300)
    return (reference(x + h * v, function)[1] - reference(x - h * v, function)[1]) / (2.0 * h)


def rel_err(a: Any, b: Any, elementwise: bool) -> float:
    """Max of ``|a - b| / |b|`` (``elementwise``: values) or ``||a - b||_F / ||b||_F``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if elementwise:
        return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), _TINY)))
    return float(np.linalg.norm(a - b) / max(float(np.linalg.norm(b)), _TINY))


def verdict(errors: dict[str, float], rtol: float, outputs: dict[str, Any]) -> dict[str, Any]:
    """Holds ``errors`` to ``rtol`` and every array of ``outputs`` to be finite.

    Returns:
      ``{"errors", "max_error", "rtol", "passed", "message"}``.
    """
    messages = [
        f"non-finite {name}"
        for name, a in outputs.items()
        if not np.all(np.isfinite(np.asarray(a)))
    ]
    messages += [f"{k} rel. error {e:.2e} > {rtol:.0e}" for k, e in errors.items() if not e <= rtol]
    return {
        "errors": errors,
        "max_error": max(errors.values(), default=float("nan")),
        "rtol": rtol,
        "passed": not messages,
        "message": "; ".join(messages),
    }


def compare(
    out: Any, ref: Any, mode: str, dtype: str, value_scale: float | None = None
) -> dict[str, Any]:
    """A program's output against the reference of the same structure (see :func:`verdict`).

    Value errors are the max over the batch, relative to the reference or else to
    ``value_scale`` (NOTEARS: ``h(W)`` is ``tr exp(W o W) - d`` formed in the dtype,
    so its error scales with the trace; a DAG's ``h`` is 0), gradient errors
    Frobenius-norm relative. A value in another dtype than ``dtype`` (e.g. x64 off) fails too.
    """
    rtol = RTOL[dtype]
    if mode == "value":
        out, ref = (out, None), (ref, None)
    if value_scale is None:
        errors = {"value": rel_err(out[0], ref[0], elementwise=True)}
    else:
        diff = np.asarray(out[0], np.float64) - np.asarray(ref[0], np.float64)
        errors = {"value": float(np.max(np.abs(diff))) / value_scale}
    outputs = {"value": out[0]}
    if out[1] is not None:
        errors["grad"] = rel_err(out[1], ref[1], elementwise=False)
        outputs["grad"] = out[1]
    result = verdict(errors, rtol, outputs)
    got = str(np.asarray(out[0]).dtype)
    if got != dtype:
        result.update(passed=False, message=f"returned {got}, not {dtype}; {result['message']}")
    return result
