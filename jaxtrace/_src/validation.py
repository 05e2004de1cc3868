"""Trace-time checks and dtype promotion shared by the public functions."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export

# Eigensolvers have no kernels below 32 bits (float16, bfloat16, float8, ...):
# such inputs are computed in float32.
_NARROWEST_KERNEL_BITS = 32


def _describe(obj: Any) -> str:
    dtype = getattr(obj, "dtype", None)
    if dtype is not None:
        return f"{type(obj).__name__} of dtype {dtype}"
    return type(obj).__name__


def _is_array(obj: Any) -> bool:
    return isinstance(obj, (jax.Array, np.ndarray, np.generic)) or hasattr(obj, "__jax_array__")


def prepare_x(name: str, x: Any) -> tuple[jax.Array, jnp.dtype]:
    """Checks ``x`` (..., n, m) and returns it in the dtype the computation runs in.

    Returns:
      ``(x, out_dtype)``: ``x`` cast to float32/float64 for the computation and
      the dtype in which the value and the gradient are handed back.
    """
    return _prepare_array(name, x, "x", "(..., n, m)")


def prepare_square(name: str, a: Any) -> tuple[jax.Array, jnp.dtype]:
    """Checks ``a`` (..., d, d) as :func:`prepare_x` does ``x``, and that it is square.

    Raises:
      ValueError: also if the last two dimensions differ, or if d is symbolic
        (``jax.export``).
    """
    a, out_dtype = _prepare_array(name, a, "a", "(..., d, d)")
    n, m = a.shape[-2:]
    if export.is_symbolic_dim(n) or export.is_symbolic_dim(m):
        raise ValueError(
            f"{name}: expected a concrete matrix size d in the shape (..., d, d) of a, got "
            f"symbolic shape (..., {n}, {m}). Keep the last two dimensions fixed in "
            "jax.export.symbolic_shape; batch dimensions may be symbolic."
        )
    if n != m:
        raise ValueError(
            f"{name}: expected a square matrix in the last two dimensions of a, shape "
            f"(..., d, d), got shape {tuple(a.shape)}. For tr exp(scale X X^T) of a "
            "rectangular X use trace_expm_gram or log_trace_expm_gram."
        )
    return a, out_dtype


def _prepare_array(name: str, x: Any, arg: str, shape: str) -> tuple[jax.Array, jnp.dtype]:
    if not _is_array(x):
        raise TypeError(
            f"{name}: expected {arg} to be a JAX or NumPy array of shape {shape}, "
            f"got {_describe(x)}."
        )
    if hasattr(x, "__jax_array__") and not isinstance(x, (jax.Array, np.ndarray)):
        x = x.__jax_array__()
    dtype = np.dtype(x.dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"{name}: expected {arg} to be a real array (floating, integer or bool), "
            f"got complex dtype {dtype}. The operator is defined for real input only."
        )
    if not (
        jnp.issubdtype(dtype, jnp.floating)
        or jnp.issubdtype(dtype, jnp.integer)
        or dtype == np.bool_
    ):
        raise TypeError(
            f"{name}: expected {arg} to have a real floating, integer or bool dtype, "
            f"got dtype {dtype}."
        )
    if np.ndim(x) < 2:
        raise ValueError(
            f"{name}: expected {arg} of shape {shape} with ndim >= 2, "
            f"got shape {tuple(np.shape(x))} (ndim {np.ndim(x)})."
        )
    if jnp.issubdtype(dtype, jnp.floating):
        # As jnp does: float64 NumPy input is float32 unless x64 is enabled.
        out_dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(dtype))
        narrow = jnp.finfo(out_dtype).bits < _NARROWEST_KERNEL_BITS
        compute_dtype = jnp.dtype(jnp.float32) if narrow else out_dtype
    else:
        out_dtype = compute_dtype = jnp.dtype(jax.dtypes.canonicalize_dtype(jnp.float64))
    return jnp.asarray(x).astype(compute_dtype), out_dtype


def gram_side(name: str, x: jax.Array) -> bool:
    """Whether ``x`` (..., n, m) is wide (n < m), decided from its shape at trace time.

    Raises:
      ValueError: for symbolic shapes (``jax.export``) whose constraints leave
        the smaller Gram undecided, or make its size k symbolic.
    """
    n, m = x.shape[-2:]
    try:
        wide = bool(n < m)
    except jax.errors.InconclusiveDimensionOperation:
        raise ValueError(
            f"{name}: expected the shape of x (..., n, m) to decide which Gram matrix is "
            f"smaller, X^T X (n >= m) or X X^T (n < m), got symbolic n = {n}, m = {m}. "
            f"Add a constraint to jax.export.symbolic_shape, e.g. constraints=('{n} >= {m}',) "
            f"or ('{m} >= {n + 1}',)."
        ) from None
    k = n if wide else m
    if export.is_symbolic_dim(k):
        raise ValueError(
            f"{name}: expected a concrete size k = min(n, m) of the smaller Gram, got symbolic "
            f"k = {k} in shape (..., {n}, {m}). JAX lowers eigh only with symbolic batch "
            "dimensions; keep the smaller of n and m fixed in jax.export.symbolic_shape."
        )
    return wide


METHOD_NAMES = ("auto", "eigh", "expm")


def prepare_method(name: str, method: Any) -> str:
    """Checks ``method`` (a static string) against the known methods."""
    if not isinstance(method, str) or method not in METHOD_NAMES:
        raise ValueError(
            f"{name}: expected method to be one of {', '.join(map(repr, METHOD_NAMES))}, "
            f"got {method!r}."
        )
    return method


def prepare_scale(name: str, scale: Any, dtype: jnp.dtype) -> jax.Array:
    """Checks ``scale`` (a real scalar) and casts it to the compute dtype."""
    if isinstance(scale, (bool, np.bool_)):
        raise TypeError(f"{name}: expected scale to be a real number, got bool.")
    if isinstance(scale, (int, float)):
        return jnp.asarray(scale, dtype=dtype)
    if not _is_array(scale):
        raise TypeError(
            f"{name}: expected scale to be a real Python number or a scalar "
            f"JAX/NumPy array, got {_describe(scale)}."
        )
    sdtype = np.dtype(scale.dtype)
    if not (jnp.issubdtype(sdtype, jnp.floating) or jnp.issubdtype(sdtype, jnp.integer)):
        raise TypeError(
            f"{name}: expected scale to have a real floating or integer dtype, got dtype {sdtype}."
        )
    if np.ndim(scale) != 0:
        raise ValueError(
            f"{name}: expected scale to be a scalar (shape ()), got shape "
            f"{tuple(np.shape(scale))}. Use jax.vmap to map over several scales."
        )
    return jnp.asarray(scale).astype(dtype)
