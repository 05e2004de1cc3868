"""Products on a mesh with explicit axes: the layout of ``x`` is in its type.

Where the contracted dimension divides evenly over the axes to move, ``x`` is
resharded (``reshard``, one all-to-all if its k dimension is sharded) and the
contraction is given its output sharding, which a bare ``x.T @ x`` lacks under
an explicit mesh; XLA then all-reduces the k x k partial sums. Elsewhere the
per-device bodies of ``blocks.py`` run under ``shard_map``, which pads.
"""

from __future__ import annotations

import functools

import jax
from jax.sharding import NamedSharding, PartitionSpec

from jaxtrace._src.layouts import blocks, plain


def _named(mesh, spec) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(*spec))


def _laid_out(a: jax.Array, spec, mesh) -> jax.Array:
    """``a`` laid out as ``spec`` (a no-op when it already is)."""
    if blocks.full_spec(jax.typeof(a).sharding.spec, a.ndim) == tuple(spec):
        return a
    return jax.sharding.reshard(a, _named(mesh, spec))


def _body(fun, spec: tuple, wide: bool, mesh):
    return functools.partial(fun, **blocks.body_kwargs(spec, wide, mesh.shape))


def gram(x: jax.Array, wide: bool, spec: tuple, mesh) -> jax.Array:
    """``plain.gram`` of ``x`` laid out as ``spec``: replicated but for batch dimensions."""
    target = blocks.contracting_spec(spec, x.shape, wide, mesh.shape)
    if target is None:
        return jax.shard_map(
            _body(blocks.gram, spec, wide, mesh),
            mesh=mesh,
            in_specs=PartitionSpec(*spec),
            out_specs=blocks.gram_spec(spec),
        )(x)
    x = _laid_out(x, target, mesh)
    return plain.gram(x, wide, out_sharding=NamedSharding(mesh, blocks.gram_spec(target)))


def cross(a: jax.Array, b: jax.Array, wide: bool, spec: tuple, mesh) -> jax.Array:
    """``plain.cross`` of ``a`` laid out as ``spec`` and ``b`` (moved to ``spec`` if needed)."""
    b = _laid_out(b, spec, mesh)
    target = blocks.contracting_spec(spec, a.shape, wide, mesh.shape)
    if target is None:
        return jax.shard_map(
            _body(blocks.cross, spec, wide, mesh),
            mesh=mesh,
            in_specs=(PartitionSpec(*spec),) * 2,
            out_specs=blocks.gram_spec(spec),
        )(a, b)
    a, b = _laid_out(a, target, mesh), _laid_out(b, target, mesh)
    return plain.cross(a, b, wide, out_sharding=NamedSharding(mesh, blocks.gram_spec(target)))


def weight(x: jax.Array, w: jax.Array, wide: bool, spec: tuple, mesh) -> jax.Array:
    """``plain.weight``, laid out like ``x``."""
    target = blocks.contracting_spec(spec, x.shape, wide, mesh.shape)
    if target is None:
        w_spec = blocks.gram_spec(spec)
        w = _laid_out(w, w_spec, mesh)
        return jax.shard_map(
            _body(blocks.weight, spec, wide, mesh),
            mesh=mesh,
            in_specs=(PartitionSpec(*spec), w_spec),
            out_specs=PartitionSpec(*spec),
        )(x, w)
    out = plain.weight(_laid_out(x, target, mesh), w, wide, out_sharding=_named(mesh, target))
    return _laid_out(out, spec, mesh)


def batchwise(fun, a: jax.Array, spec: tuple, mesh):
    """``fun`` of k x k matrices ``a`` laid out as ``spec``, each device on its own matrices.

    Only the batch dimensions stay sharded (a Gram's layout): a loop inside
    ``fun`` then runs per device, with no collective for its trip count.
    """
    batch = spec[:-2]
    if all(e is None for e in batch):
        return fun(a)
    out_specs = jax.tree.map(
        lambda o: PartitionSpec(*batch, *(None,) * (o.ndim - len(batch))), jax.eval_shape(fun, a)
    )
    in_spec = blocks.gram_spec(spec)
    return jax.shard_map(fun, mesh=mesh, in_specs=in_spec, out_specs=out_specs)(
        _laid_out(a, in_spec, mesh)
    )
