"""Contractions with X on the side of its smaller Gram matrix.

For a tall ``x`` (n >= m) the small Gram is ``x.T @ x`` (m x m) and a k x k
matrix ``w`` acts as ``x @ w``; for a wide one (n < m) they are ``x @ x.T``
(n x n) and ``w @ x``. Written as ``einsum`` subscripts, so no transpose of
``x`` is ever materialised and leading batch dimensions pass through.

Sharded ``x``. Every k x k matrix (the Gram, its eigenvectors, the weights)
is replicated over the mesh, apart from leading batch dimensions, which keep
the sharding of ``x``: ``eigh`` needs whole matrices. The contracted dimension
of ``x`` (n for tall, m for wide) may be sharded: each device forms a partial
Gram from its rows (columns) and the k x k sums are all-reduced, the only
communication; ``x @ w`` is then local. If the k dimension itself is sharded,
``x`` is first moved (one all-to-all, no device ever holds all of ``x``) so that
those mesh axes shard the contracted dimension instead, and the gradient is
moved back to the layout of ``x``.

* Explicit mesh axes (the default of ``jax.make_mesh``): the layout is read off
  the type of ``x`` and spelled out with ``out_sharding`` and ``reshard``.
* Auto mesh axes: the layout of ``x`` is unknown at trace time and XLA's
  sharding propagation places the products; the gradient is tied to the
  sharding of ``x`` with ``shard_alike`` so that it comes back sharded like
  ``x``.
* Manual axes (inside ``shard_map``) and unsharded arrays: plain products on
  the local blocks.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.shard_alike import shard_alike
from jax.sharding import AxisType, NamedSharding, PartitionSpec

# Full-precision products: TPUs and recent GPUs would otherwise round float32
# operands to bfloat16/TF32, which an exact operator cannot afford.
_PRECISION = lax.Precision.HIGHEST


def is_wide(x: jax.Array) -> bool:
    return x.shape[-2] < x.shape[-1]


def _mesh(x: jax.Array):
    """The (abstract) mesh in the type of ``x``, or None when there is none."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None
    return mesh


def _explicit_spec(x: jax.Array) -> tuple | None:
    """The full PartitionSpec of ``x`` (one entry per dimension) when it lives on
    a mesh with explicit axes, else None."""
    mesh = _mesh(x)
    if mesh is None or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    spec = tuple(jax.typeof(x).sharding.spec)
    return spec + (None,) * (x.ndim - len(spec))


def _on_auto_mesh(x: jax.Array) -> bool:
    mesh = _mesh(x)
    return mesh is not None and AxisType.Auto in tuple(mesh.axis_types)


def _axes(entry) -> tuple:
    """The mesh axes of one PartitionSpec entry."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def _entry(axes: tuple):
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _named(x: jax.Array, spec) -> NamedSharding:
    return NamedSharding(jax.typeof(x).sharding.mesh, PartitionSpec(*spec))


def _contracting_spec(x: jax.Array, spec: tuple, wide: bool) -> tuple:
    """``spec`` with the mesh axes of the k dimension moved onto the contracted one.

    The k dimension (m for tall ``x``, n for wide) indexes the rows and columns
    of the Gram, which must be whole on every device; an axis that shards it is
    appended to the contracted dimension's axes where that dimension divides
    evenly, and dropped (the k dimension is gathered) where it does not.
    """
    k_dim, c_dim = (x.ndim - 2, x.ndim - 1) if wide else (x.ndim - 1, x.ndim - 2)
    k_axes = _axes(spec[k_dim])
    if not k_axes:
        return spec
    sizes = jax.typeof(x).sharding.mesh.shape
    c_axes = _axes(spec[c_dim])
    for axis in k_axes:
        if x.shape[c_dim] % (math.prod(sizes[a] for a in c_axes) * sizes[axis]) == 0:
            c_axes = (*c_axes, axis)
    new = list(spec)
    new[k_dim], new[c_dim] = None, _entry(c_axes)
    return tuple(new)


def _contracting_layout(x: jax.Array, wide: bool) -> tuple[jax.Array, tuple | None]:
    """``x`` resharded so that its k dimension is whole, and its spec (None off explicit meshes)."""
    spec = _explicit_spec(x)
    if spec is None:
        return x, None
    target = _contracting_spec(x, spec, wide)
    if target != spec:
        x = jax.sharding.reshard(x, _named(x, target))
    return x, target


def cross(a: jax.Array, b: jax.Array, wide: bool) -> jax.Array:
    """``a.T @ b`` (tall) or ``a @ b.T`` (wide): the k x k product of two n x m arrays."""
    sub = "...ij,...kj->...ik" if wide else "...ji,...jk->...ik"
    same = b is a
    a, spec = _contracting_layout(a, wide)
    b = a if same else _contracting_layout(b, wide)[0]
    # Under an explicit mesh a contraction over a sharded dimension needs its
    # output sharding spelled out; XLA then all-reduces the k x k partial sums.
    out_sharding = None if spec is None else _named(a, (*spec[:-2], None, None))
    return jnp.einsum(sub, a, b, precision=_PRECISION, out_sharding=out_sharding)


def gram(x: jax.Array, wide: bool) -> jax.Array:
    """The smaller Gram matrix, ``x.T @ x`` (tall) or ``x @ x.T`` (wide)."""
    return cross(x, x, wide)


def apply(x: jax.Array, w: jax.Array, wide: bool) -> jax.Array:
    """``x @ w`` (tall) or ``w @ x`` (wide) for a k x k matrix ``w``.

    The result is sharded like ``x``.
    """
    spec = _explicit_spec(x)
    xc, target = _contracting_layout(x, wide)
    out_sharding = None if target is None else _named(x, target)
    if wide:
        out = jnp.einsum(
            "...ij,...jm->...im", w, xc, precision=_PRECISION, out_sharding=out_sharding
        )
    else:
        out = jnp.einsum(
            "...ni,...ij->...nj", xc, w, precision=_PRECISION, out_sharding=out_sharding
        )
    if target is not None and target != spec:
        out = jax.sharding.reshard(out, _named(x, spec))
    elif target is None and _on_auto_mesh(x):
        _, out = shard_alike(x, out)
    return out


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
