"""Correctness: relative errors, tolerances and an independent float64 reference.

The reference works from NumPy's SVD in float64, not from an eigendecomposition
of the Gram, so it shares no code path with jaxtrace: with ``x = U S V^T``,
``tr expm(x x^T) = sum(exp(S^2)) + max(n - m, 0)`` and
``grad = 2 expm(x x^T) x = 2 U diag(S exp(S^2)) V^T``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# Relative tolerances of an agreement check, per dtype. On the benchmark's
# well-conditioned inputs both programs agree to ~1e-6 (float32) and ~1e-14
# (float64); the margin leaves room for other backends' eigensolvers and for the
# peer's Padé and squarings on the larger n x n matrix.
RTOL = {"float32": 1e-4, "float64": 1e-9}


@dataclass(frozen=True)
class Check:
    """The outcome of comparing a program's outputs with a reference.

    Attributes:
      reference: what was compared against (``"peer"``, ``"core"``, ...).
      errors: relative error per output (``"value"``, ``"grad"``, ``"hvp"``):
        for values the max over the batch of ``|a - b| / |b|``, for arrays
        ``||a - b||_F / ||b||_F``.
      rtol: the tolerance every error was held to.
      passed: every error within ``rtol`` and every output finite.
      message: why it failed, empty when passed.
    """

    reference: str
    errors: dict[str, float]
    rtol: float
    passed: bool
    message: str = ""

    @property
    def max_error(self) -> float:
        """The largest of the errors (NaN if one is NaN)."""
        values = list(self.errors.values())
        return float(np.max(values)) if values else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "max_error": self.max_error}


def value_rel_err(a: Any, b: Any) -> float:
    """Max over the batch of the relative error of ``a`` against ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = np.maximum(np.abs(b), np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b) / scale))


def array_rel_err(a: Any, b: Any) -> float:
    """Frobenius-norm relative error of ``a`` against ``b`` (whole arrays)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norm = max(float(np.linalg.norm(b.ravel())), np.finfo(np.float64).tiny)
    return float(np.linalg.norm((a - b).ravel()) / norm)


def make_check(
    reference: str, errors: dict[str, float], rtol: float, outputs: dict[str, Any]
) -> Check:
    """Holds ``errors`` to ``rtol`` and requires every array of ``outputs`` to be finite.

    Args:
      reference: name of the reference, for the record.
      errors: relative error per output.
      rtol: tolerance.
      outputs: arrays (both sides) that must be finite, by name.

    Returns:
      The :class:`Check`.
    """
    messages = [
        f"non-finite {name}"
        for name, arr in outputs.items()
        if arr is not None and not np.all(np.isfinite(np.asarray(arr)))
    ]
    messages += [
        f"{name} rel. error {err:.2e} > {rtol:.0e}"
        for name, err in errors.items()
        if not err <= rtol  # also catches NaN
    ]
    return Check(reference, dict(errors), rtol, not messages, "; ".join(messages))


def split_outputs(out: Any, mode: str) -> tuple[Any, Any | None]:
    """``(value, grad)`` from a program's output; ``grad`` is None in value mode."""
    if mode == "value":
        return out, None
    value, grad = out
    return value, grad


def compare(
    out: Any, ref: Any, mode: str, dtype: str, reference: str, rtol: float | None = None
) -> Check:
    """Compares a program's output with a reference output of the same structure.

    Args:
      out: the output under test: a value, or ``(value, grad)``.
      ref: the reference in the same structure.
      mode: ``"value"`` or ``"value_and_grad"``.
      dtype: dtype name of the computation, for the default tolerance.
      reference: name of the reference, for the record.
      rtol: tolerance; :data:`RTOL` of ``dtype`` if None.

    Returns:
      The :class:`Check`; it fails on any non-finite output.
    """
    rtol = RTOL[dtype] if rtol is None else rtol
    value, grad = split_outputs(out, mode)
    ref_value, ref_grad = split_outputs(ref, mode)
    errors = {"value": value_rel_err(value, ref_value)}
    outputs = {"value": value, f"{reference} value": ref_value}
    if grad is not None:
        errors["grad"] = array_rel_err(grad, ref_grad)
        outputs.update({"grad": grad, f"{reference} grad": ref_grad})
    return make_check(reference, errors, rtol, outputs)


def reference_value_and_grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Float64 ``(tr expm(x x^T), grad)`` per matrix of the batch, from NumPy's SVD.

    Args:
      x: host array ``(..., n, m)``.

    Returns:
      Values of shape ``(...)`` and the gradient of shape ``(..., n, m)``.
    """
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape[-2:]
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    e = np.exp(s * s)
    value = e.sum(axis=-1) + max(n - m, 0)
    grad = 2.0 * (u * (s * e)[..., None, :]) @ vt
    return value, grad


def reference_output(x: np.ndarray, mode: str) -> Any:
    """The float64 reference in a program's output structure (batch summed for grad)."""
    value, grad = reference_value_and_grad(x)
    if mode == "value":
        return value
    return value.sum(), grad


def reference_hvp(x: np.ndarray, v: np.ndarray, step: float = 1e-5) -> np.ndarray:
    """Float64 Hessian-vector product by central differences of the reference gradient.

    The error is ``O(step**2)`` from truncation and ``O(eps / step)`` from
    rounding, both near 1e-10 relative for ``||v|| ~ ||x||``.

    Args:
      x: host array ``(..., n, m)``.
      v: direction of the same shape.
      step: relative finite-difference step (scaled by ``||x|| / ||v||``).

    Returns:
      The Hessian of the summed trace applied to ``v``.
    """
    x = np.asarray(x, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    h = step * np.linalg.norm(x.ravel()) / max(np.linalg.norm(v.ravel()), 1e-300)
    _, g_plus = reference_value_and_grad(x + h * v)
    _, g_minus = reference_value_and_grad(x - h * v)
    return (g_plus - g_minus) / (2.0 * h)
