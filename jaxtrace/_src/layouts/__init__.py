"""Products of ``x`` on the side of its smaller Gram matrix, for any layout of ``x``.

Three products reach ``x``: its Gram (``gram``), the k x k product of a tangent
with ``x`` (``cross``) and ``x`` times a k x k matrix (``weight``). A fourth
op, ``batchwise``, runs a function of the k x k matrices on every device's own
matrices, so that a loop inside it (the expm method's squarings) needs no
collective for its trip count (``per_device`` wraps it for ``vmap``). Each has
one name in every module below; this one picks the module by the layout of ``x``:

* ``plain.py``: unsharded arrays, and manual axes (inside ``shard_map``), where
  each device holds its own matrices;
* ``explicit.py``: meshes with explicit axes, whose layout is in the type of ``x``;
* ``auto.py``: meshes with auto axes, partitioned at compile time.

Every k x k matrix is replicated over the mesh, apart from leading batch
dimensions, which keep the sharding of ``x``: the contracted dimension of ``x``
(n for tall, m for wide) may be sharded, and the only communication is then
the all-reduce of k x k partial sums. If the k dimension itself is sharded,
``x`` is moved (one all-to-all; no device ever holds all of ``x``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.sharding import AxisType

from jaxtrace._src.layouts import auto, blocks, explicit, plain
from jaxtrace._src.layouts.plain import is_wide

__all__ = ["batchwise", "cross", "gram", "is_wide", "per_device", "weight"]


def _mesh(x: jax.Array):
    """The (abstract) mesh in the type of ``x``, or None when there is none."""
    mesh = getattr(getattr(jax.typeof(x), "sharding", None), "mesh", None)
    if mesh is None or getattr(mesh, "empty", True):
        return None
    return mesh


def _explicit_spec(x: jax.Array) -> tuple | None:
    """The full PartitionSpec of ``x`` on a mesh with explicit axes, else None."""
    mesh = _mesh(x)
    if mesh is None or AxisType.Explicit not in tuple(mesh.axis_types):
        return None
    return blocks.full_spec(jax.typeof(x).sharding.spec, x.ndim)


def _on_auto_mesh(x: jax.Array) -> bool:
    """Whether XLA, not the type of ``x``, decides its layout (no manual axes either)."""
    mesh = _mesh(x)
    if mesh is None or mesh.size == 1:
        return False
    types = tuple(mesh.axis_types)
    return AxisType.Auto in types and AxisType.Manual not in types


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def gram(x: jax.Array, wide: bool) -> jax.Array:
    """The smaller Gram matrix, ``x.T @ x`` (tall) or ``x @ x.T`` (wide)."""
    spec = _explicit_spec(x)
    if spec is not None:
        return explicit.gram(x, wide, spec, jax.typeof(x).sharding.mesh)
    if _on_auto_mesh(x):
        return auto.gram(x, wide)
    return plain.gram(x, wide)


@gram.defjvp
def _gram_jvp(wide, primals, tangents):
    # d(X^T X) = C + C^T with C = dX^T X: one product, not two.
    (x,), (dx,) = primals, tangents
    c = cross(dx, x, wide)
    return gram(x, wide), c + jnp.swapaxes(c, -1, -2)


def cross(a: jax.Array, b: jax.Array, wide: bool) -> jax.Array:
    """``a.T @ b`` (tall) or ``a @ b.T`` (wide), laid out like a Gram of ``a``."""
    spec = _explicit_spec(a)
    if spec is not None:
        return explicit.cross(a, b, wide, spec, jax.typeof(a).sharding.mesh)
    # Tangent products stay plain on auto meshes: reverse mode must transpose them.
    return plain.cross(a, b, wide)


def weight(x: jax.Array, w: jax.Array, wide: bool, *, tangent: bool = False) -> jax.Array:
    """``x @ w`` (tall) or ``w @ x`` (wide) for a k x k ``w``, laid out like ``x``.

    ``tangent`` marks a product linear in a tangent, which reverse mode must
    transpose: it is never ``custom_partitioning``.
    """
    spec = _explicit_spec(x)
    if spec is not None:
        return explicit.weight(x, w, wide, spec, jax.typeof(x).sharding.mesh)
    if _on_auto_mesh(x) and not tangent:
        return auto.weight(x, w, wide)
    return plain.weight(x, w, wide)


def batchwise(fun, a: jax.Array):
    """``fun(a)`` for k x k matrices ``a`` laid out like a Gram, each device on its own.

    ``fun`` maps (..., k, k) to arrays (...) or (..., k, k) and treats every
    matrix alone. Never differentiated, nor mapped by ``vmap``:
    ``custom_partitioning`` has no rules for either, so callers map it as one
    more batch dimension themselves (``custom_vmap``, as the expm method does).
    """
    spec = _explicit_spec(a)
    if spec is not None:
        return explicit.batchwise(fun, a, spec, jax.typeof(a).sharding.mesh)
    if _on_auto_mesh(a):
        return auto.batchwise(fun, a)
    return fun(a)


def per_device(fun):
    """``fun`` of a stack of k x k matrices, run by each device on its own (``batchwise``).

    Under ``vmap`` the mapped axis is one more batch dimension: a loop inside
    ``fun`` (the expm kernels' squarings) stays one loop over the batch's largest
    count, and no ``cond`` runs both branches. (vmap's own rule for a loop with a
    batched predicate fails on meshes with explicit axes.) Never differentiated:
    callers differentiate the kernels' transposable variants instead.
    """

    @jax.custom_batching.custom_vmap
    def kernel(a):
        # Per device on sharded batches: the loop's trip count is the local
        # batch's largest, with no all-reduce for the global one.
        return batchwise(fun, a)

    @kernel.def_vmap
    def _rule(axis_size, in_batched, a):
        del axis_size, in_batched
        out = kernel(a)
        return out, jax.tree.map(lambda _: True, out)

    return kernel
