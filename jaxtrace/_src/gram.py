"""Contractions with X on the side of its smaller Gram matrix.

For a tall ``x`` (n >= m) the small Gram is ``x.T @ x`` (m x m) and a k x k
matrix ``w`` acts as ``x @ w``; for a wide one (n < m) they are ``x @ x.T``
(n x n) and ``w @ x``. Written as ``einsum`` subscripts, so no transpose of
``x`` is ever materialised and leading batch dimensions pass through.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

# Full-precision products: TPUs and recent GPUs would otherwise round float32
# operands to bfloat16/TF32, which an exact operator cannot afford.
_PRECISION = lax.Precision.HIGHEST


def is_wide(x: jax.Array) -> bool:
    return x.shape[-2] < x.shape[-1]


def _explicit_spec(x: jax.Array):
    """The PartitionSpec of ``x`` when it lives on an explicit-axis mesh, else None."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None
    explicit = getattr(mesh, "are_all_axes_explicit", False) or any(
        t == jax.sharding.AxisType.Explicit for t in getattr(mesh, "axis_types", ())
    )
    if not explicit:
        return None
    spec = tuple(sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def _small_sharding(x: jax.Array):
    """Out-sharding of a (..., k, k) product: batch axes as in ``x``, k x k replicated.

    Under an explicit mesh a contraction over a sharded axis of ``x`` needs its
    output sharding spelled out; XLA then all-reduces the k x k partial sums.
    """
    spec = _explicit_spec(x)
    if spec is None:
        return None
    return jax.sharding.PartitionSpec(*spec[:-2], None, None)


def cross(a: jax.Array, b: jax.Array, wide: bool) -> jax.Array:
    """``a.T @ b`` (tall) or ``a @ b.T`` (wide): the k x k product of two n x m arrays."""
    sub = "...ij,...kj->...ik" if wide else "...ji,...jk->...ik"
    return jnp.einsum(sub, a, b, precision=_PRECISION, out_sharding=_small_sharding(a))


def gram(x: jax.Array, wide: bool) -> jax.Array:
    """The smaller Gram matrix, ``x.T @ x`` (tall) or ``x @ x.T`` (wide)."""
    return cross(x, x, wide)


def apply(x: jax.Array, w: jax.Array, wide: bool) -> jax.Array:
    """``x @ w`` (tall) or ``w @ x`` (wide) for a k x k matrix ``w``."""
    if wide:
        return jnp.einsum("...ij,...jm->...im", w, x, precision=_PRECISION)
    return jnp.einsum("...ni,...ij->...nj", x, w, precision=_PRECISION)


def congruence(v: jax.Array, d: jax.Array) -> jax.Array:
    """``v @ diag(d) @ v.T`` for eigenvectors ``v`` (..., k, k) and weights ``d`` (..., k)."""
    return jnp.einsum("...ij,...kj->...ik", v * d[..., None, :], v, precision=_PRECISION)


def similarity(v: jax.Array, a: jax.Array) -> jax.Array:
    """``v @ a @ v.T`` for k x k matrices."""
    va = jnp.einsum("...ij,...jk->...ik", v, a, precision=_PRECISION)
    return jnp.einsum("...ik,...lk->...il", va, v, precision=_PRECISION)


def rotate(v: jax.Array, a: jax.Array) -> jax.Array:
    """``v.T @ a @ v``: a k x k matrix in the eigenbasis ``v``."""
    av = jnp.einsum("...jk,...kl->...jl", a, v, precision=_PRECISION)
    return jnp.einsum("...ji,...jl->...il", v, av, precision=_PRECISION)
