"""Products with ``x`` on the side of its smaller Gram matrix, for any layout of ``x``.

Every k x k matrix (the Gram, its eigenvectors, the weights) is replicated over
the mesh, apart from leading batch dimensions, which keep the sharding of ``x``:
``eigh`` needs whole matrices. The contracted dimension of ``x`` (n for tall,
m for wide) may be sharded: each device forms a partial Gram from its rows
(columns) and the k x k sums are all-reduced, the only communication; ``x @ w``
is then local. If the k dimension itself is sharded, ``x`` is first moved (one
all-to-all, no device ever holds all of ``x``) so that those mesh axes shard
the contracted dimension instead, and the gradient is moved back to the layout
of ``x``.

* Explicit mesh axes (the default of ``jax.make_mesh``): the layout is read off
  the type of ``x`` and spelled out with ``out_sharding`` and ``reshard``, or,
  where the contracted dimension does not divide evenly over the axes to move,
  run per device with ``shard_map`` (``partitioned.py``), which pads.
* Auto mesh axes: the layout of ``x`` is unknown while tracing; the Gram and
  ``x @ w`` are partitioned at compile time for the layout XLA gives ``x``
  (``partitioned.py``). Tangents (second derivatives) use plain products there.
* Manual axes (inside ``shard_map``) and unsharded arrays: plain products on
  the local blocks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from jaxtrace._src.partitioned import (
    contracting_spec,
    cross_shard_map,
    full_spec,
    gram_partitioned,
    gram_spec,
    weight_partitioned,
    weight_shard_map,
)
from jaxtrace._src.products import PRECISION, cross_product, is_wide, weight_product

__all__ = ["apply", "congruence", "cross", "gram", "is_wide", "rotate", "similarity"]


def _mesh(x: jax.Array):
    """The (abstract) mesh in the type of ``x``, or None when there is none."""
    sharding = getattr(jax.typeof(x), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None
    return mesh


def _explicit_spec(x: jax.Array) -> tuple | None:
    """The full PartitionSpec of ``x`` when it lives on a mesh with explicit axes, else None."""
    mesh = _mesh(x)
    if mesh is None or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    return full_spec(jax.typeof(x).sharding.spec, x.ndim)


def _on_auto_mesh(x: jax.Array) -> bool:
    """Whether XLA, not the type of ``x``, decides its layout (no manual axes either)."""
    mesh = _mesh(x)
    if mesh is None or mesh.size == 1:
        return False
    types = tuple(mesh.axis_types)
    return AxisType.Auto in types and AxisType.Manual not in types


def _named(x: jax.Array, spec) -> NamedSharding:
    return NamedSharding(jax.typeof(x).sharding.mesh, PartitionSpec(*spec))


def _contracting_spec(x: jax.Array, spec: tuple, wide: bool) -> tuple | None:
    return contracting_spec(spec, x.shape, wide, jax.typeof(x).sharding.mesh.shape)


def _like(b: jax.Array, spec: tuple) -> jax.Array:
    """``b`` laid out as ``spec`` (a no-op when it already is)."""
    if _explicit_spec(b) == spec:
        return b
    return jax.sharding.reshard(b, _named(b, spec))


def cross(a: jax.Array, b: jax.Array, wide: bool) -> jax.Array:
    """``a.T @ b`` (tall) or ``a @ b.T`` (wide): the k x k product of two n x m arrays."""
    same = b is a
    spec = _explicit_spec(a)
    if spec is None:
        if same and _on_auto_mesh(a):
            return gram_partitioned(a, wide)
        return cross_product(a, b, wide)
    b = a if same else _like(b, spec)
    target = _contracting_spec(a, spec, wide)
    if target is None:
        return cross_shard_map(a, b, wide, spec, jax.typeof(a).sharding.mesh)
    if target != spec:
        a = jax.sharding.reshard(a, _named(a, target))
        b = a if same else jax.sharding.reshard(b, _named(b, target))
    # Under an explicit mesh a contraction over a sharded dimension needs its
    # output sharding spelled out; XLA then all-reduces the k x k partial sums.
    return cross_product(a, b, wide, out_sharding=_named(a, gram_spec(target)))


def gram(x: jax.Array, wide: bool) -> jax.Array:
    """The smaller Gram matrix, ``x.T @ x`` (tall) or ``x @ x.T`` (wide)."""
    return cross(x, x, wide)


def apply(x: jax.Array, w: jax.Array, wide: bool, *, tangent: bool = False) -> jax.Array:
    """``x @ w`` (tall) or ``w @ x`` (wide) for a k x k matrix ``w``.

    The result is sharded like ``x``. ``tangent`` marks a product linear in a
    tangent, which reverse mode must transpose: it is never ``custom_partitioning``.
    """
    spec = _explicit_spec(x)
    if spec is None:
        if _on_auto_mesh(x) and not tangent:
            return weight_partitioned(x, w, wide)
        return weight_product(x, w, wide)
    target = _contracting_spec(x, spec, wide)
    if target is None:
        w = _like(w, tuple(gram_spec(spec)))
        return weight_shard_map(x, w, wide, spec, jax.typeof(x).sharding.mesh)
    xc = x if target == spec else jax.sharding.reshard(x, _named(x, target))
    out = weight_product(xc, w, wide, out_sharding=_named(x, target))
    if target != spec:
        out = jax.sharding.reshard(out, _named(x, spec))
    return out


def congruence(v: jax.Array, d: jax.Array) -> jax.Array:
    """``v @ diag(d) @ v.T`` for eigenvectors ``v`` (..., k, k) and weights ``d`` (..., k)."""
    return jnp.einsum("...ij,...kj->...ik", v * d[..., None, :], v, precision=PRECISION)


def similarity(v: jax.Array, a: jax.Array) -> jax.Array:
    """``v @ a @ v.T`` for k x k matrices."""
    va = jnp.einsum("...ij,...jk->...ik", v, a, precision=PRECISION)
    return jnp.einsum("...ik,...lk->...il", va, v, precision=PRECISION)


def rotate(v: jax.Array, a: jax.Array) -> jax.Array:
    """``v.T @ a @ v``: a k x k matrix in the eigenbasis ``v``."""
    av = jnp.einsum("...jk,...kl->...jl", a, v, precision=PRECISION)
    return jnp.einsum("...ji,...jl->...il", v, av, precision=PRECISION)
