"""The Gram matrix and ``x @ w`` of a sharded ``x``, written per device.

A layout of ``x`` is read as three sets of mesh axes: those of its leading
batch dimensions, those of its contracted dimension (n for tall ``x``, m for
wide; "c" below) and those of its k dimension, which indexes the rows and
columns of the Gram. Every device then runs the same program on its block:

* k dimension sharded: the block is moved onto the contracted dimension with
  one all-to-all over the k axes, padded first with zero rows (columns) where
  that dimension does not divide evenly, since zeros add nothing to a Gram. No
  device ever holds all of ``x``.
* The k x k Gram of the (moved) block is a partial sum over the contracted
  dimension; one all-reduce over the c and k axes completes it.
* ``x @ w`` of the moved block is local, and one all-to-all moves it back to
  the layout of ``x``.

Where the contracted dimension divides evenly, the move is better left to the
framework: ``x`` is resharded to ``contracting_spec``, a layout in which the k
axes shard the contracted dimension instead, and XLA moves it once for the Gram
and the gradient alike. The bodies do it themselves only where a padding is
needed.

Two wrappers run these bodies. ``shard_map`` serves meshes with explicit axes,
whose layout is in the type of ``x`` while tracing (``gram.py`` reshards
divisible layouts itself). ``custom_partitioning`` serves auto axes, where only
XLA's partitioner knows the layout: it calls back at compile time with the
sharding it chose for ``x``, and asks for ``contracting_spec`` where that
divides. ``custom_partitioning``
has no rules for ``vmap`` or autodiff, so ``custom_vmap`` (the batched call is
the same operation with one more batch dimension) and ``custom_jvp`` (the
products are bilinear; tangents use the plain products) wrap it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jaxtrace._src.products import cross_product, weight_product


def spec_axes(entry) -> tuple:
    """The mesh axes of one PartitionSpec entry."""
    if entry is None:
        return ()
    if isinstance(entry, str):
        return (entry,)
    return tuple(entry)


def full_spec(spec, ndim: int) -> tuple:
    """``spec`` as a tuple with one entry per dimension."""
    spec = tuple(spec)
    return spec + (None,) * (ndim - len(spec))


def _dims(ndim: int, wide: bool) -> tuple[int, int]:
    """(k dimension, contracted dimension) of an ``ndim``-dimensional ``x``."""
    return (ndim - 2, ndim - 1) if wide else (ndim - 1, ndim - 2)


def split_spec(spec: tuple, wide: bool) -> tuple[tuple, tuple, tuple]:
    """(batch entries, contracted-dimension axes, k-dimension axes) of a full spec."""
    k_dim, c_dim = _dims(len(spec), wide)
    return spec[:-2], spec_axes(spec[c_dim]), spec_axes(spec[k_dim])


def contracting_spec(spec: tuple, shape, wide: bool, mesh_shape) -> tuple | None:
    """``spec`` with the mesh axes of the k dimension moved onto the contracted one.

    None when the contracted dimension does not divide evenly over its own axes
    and the moved ones: a reshard cannot pad, the per-device bodies below do.
    """
    k_dim, c_dim = _dims(len(spec), wide)
    _, c_axes, k_axes = split_spec(spec, wide)
    if not k_axes:
        return spec
    axes = c_axes + k_axes
    if shape[c_dim] % math.prod(mesh_shape[a] for a in axes):
        return None
    new = list(spec)
    new[k_dim], new[c_dim] = None, axes[0] if len(axes) == 1 else axes
    return tuple(new)


def gram_spec(spec: tuple) -> PartitionSpec:
    """The layout of the Gram (and of any k x k matrix) of an ``x`` laid out as ``spec``."""
    return PartitionSpec(*spec[:-2], None, None)


# Per-device bodies. ``k_axes``/``n_k``: the mesh axes of the k dimension and
# their number of devices; ``c_axes``: those of the contracted dimension.


def _to_contracted(block: jax.Array, wide: bool, k_axes: tuple, n_k: int):
    """Moves a block sharded along k onto the contracted dimension; returns it and the padding."""
    k_dim, c_dim = _dims(block.ndim, wide)
    pad = -block.shape[c_dim] % n_k
    if pad:
        widths = [(0, 0)] * block.ndim
        widths[c_dim] = (0, pad)
        block = jnp.pad(block, widths)
    moved = lax.all_to_all(block, k_axes, split_axis=c_dim, concat_axis=k_dim, tiled=True)
    return moved, pad


def _from_contracted(block: jax.Array, wide: bool, k_axes: tuple, pad: int) -> jax.Array:
    k_dim, c_dim = _dims(block.ndim, wide)
    block = lax.all_to_all(block, k_axes, split_axis=k_dim, concat_axis=c_dim, tiled=True)
    if pad:
        block = lax.slice_in_dim(block, 0, block.shape[c_dim] - pad, axis=c_dim)
    return block


def cross_body(a, b, *, wide: bool, c_axes: tuple, k_axes: tuple, n_k: int):
    same = b is a
    if k_axes:
        a = _to_contracted(a, wide, k_axes, n_k)[0]
        b = a if same else _to_contracted(b, wide, k_axes, n_k)[0]
    partial_sum = cross_product(a, b, wide)
    axes = c_axes + k_axes
    return lax.psum(partial_sum, axes) if axes else partial_sum


def weight_body(x, w, *, wide: bool, c_axes: tuple, k_axes: tuple, n_k: int):
    del c_axes  # rows (columns) of x @ w (w @ x) are those of x: nothing to sum
    if not k_axes:
        return weight_product(x, w, wide)
    moved, pad = _to_contracted(x, wide, k_axes, n_k)
    return _from_contracted(weight_product(moved, w, wide), wide, k_axes, pad)


def _body_kwargs(spec: tuple, wide: bool, mesh_shape) -> dict:
    _, c_axes, k_axes = split_spec(spec, wide)
    n_k = math.prod(mesh_shape[a] for a in k_axes)
    return {"wide": wide, "c_axes": c_axes, "k_axes": k_axes, "n_k": n_k}


# shard_map: the layout is known while tracing.


def _twice(body, x):
    return body(x, x)


def cross_shard_map(a, b, wide: bool, spec: tuple, mesh) -> jax.Array:
    """``cross_product`` of two arrays laid out as ``spec`` on ``mesh``; see ``gram_spec``."""
    body = functools.partial(cross_body, **_body_kwargs(spec, wide, mesh.shape))
    if b is a:
        in_specs, args, body = PartitionSpec(*spec), (a,), functools.partial(_twice, body)
    else:
        in_specs, args = (PartitionSpec(*spec),) * 2, (a, b)
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=gram_spec(spec))(*args)


def weight_shard_map(x, w, wide: bool, spec: tuple, mesh) -> jax.Array:
    """``weight_product`` of ``x`` laid out as ``spec`` on ``mesh``, laid out like ``x``."""
    body = functools.partial(weight_body, **_body_kwargs(spec, wide, mesh.shape))
    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(PartitionSpec(*spec), gram_spec(spec)),
        out_specs=PartitionSpec(*spec),
    )(x, w)


# custom_partitioning: the layout is known at compile time only.


def _chosen_spec(arg) -> tuple:
    """The full spec XLA chose for ``arg``; replicated where that is no mesh layout."""
    sharding = arg.sharding
    if not isinstance(sharding, NamedSharding):
        return (None,) * len(arg.shape)
    return full_spec(sharding.spec, len(arg.shape))


def _operand_spec(x, wide: bool, mesh) -> tuple:
    """The layout to ask for ``x`` in: XLA moves divisible layouts (once for both ops)."""
    spec = _chosen_spec(x)
    return contracting_spec(spec, x.shape, wide, mesh.shape) or spec


def _cp_gram(wide: bool):
    @custom_partitioning
    def gram(x):
        return cross_product(x, x, wide)

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        spec = _operand_spec(arg_shapes[0], wide, mesh)
        body = functools.partial(cross_body, **_body_kwargs(spec, wide, mesh.shape))
        return (
            mesh,
            functools.partial(_twice, body),
            NamedSharding(mesh, gram_spec(spec)),
            (NamedSharding(mesh, PartitionSpec(*spec)),),
        )

    gram.def_partition(
        partition=partition,
        infer_sharding_from_operands=lambda mesh, arg_shapes, _: NamedSharding(
            mesh, gram_spec(_chosen_spec(arg_shapes[0]))
        ),
        sharding_rule=("... k c -> ... i j" if wide else "... c k -> ... i j"),
        reduction_factors=("c",),
        need_replication_factors=("i", "j"),
    )
    return gram


def _cp_weight(wide: bool):
    @custom_partitioning
    def weight(x, w):
        return weight_product(x, w, wide)

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        spec = _operand_spec(arg_shapes[0], wide, mesh)
        x_sharding = NamedSharding(mesh, PartitionSpec(*spec))
        body = functools.partial(weight_body, **_body_kwargs(spec, wide, mesh.shape))
        return mesh, body, x_sharding, (x_sharding, NamedSharding(mesh, gram_spec(spec)))

    weight.def_partition(
        partition=partition,
        infer_sharding_from_operands=lambda mesh, arg_shapes, _: NamedSharding(
            mesh, PartitionSpec(*_chosen_spec(arg_shapes[0]))
        ),
        sharding_rule=("... k c, ... i j -> ... k c" if wide else "... c k, ... i j -> ... c k"),
        need_replication_factors=("i", "j"),
    )
    return weight


def _batched(fun):
    """``fun`` under ``vmap``: the same operation with the mapped axis as a batch dimension."""
    fun = jax.custom_batching.custom_vmap(fun)

    @fun.def_vmap
    def rule(axis_size, in_batched, *args):
        args = [
            a if batched else jnp.broadcast_to(a, (axis_size, *a.shape))
            for a, batched in zip(args, in_batched, strict=True)
        ]
        return fun(*args), True

    return fun


@functools.cache
def _auto_gram(wide: bool):
    inner = _batched(_cp_gram(wide))

    @jax.custom_jvp
    def gram(x):
        return inner(x)

    @gram.defjvp
    def _jvp(primals, tangents):
        (x,), (dx,) = primals, tangents
        c = cross_product(dx, x, wide)
        return gram(x), c + jnp.swapaxes(c, -1, -2)

    return gram


@functools.cache
def _auto_weight(wide: bool):
    inner = _batched(_cp_weight(wide))

    @jax.custom_jvp
    def weight(x, w):
        return inner(x, w)

    @weight.defjvp
    def _jvp(primals, tangents):
        (x, w), (dx, dw) = primals, tangents
        return weight(x, w), weight_product(dx, w, wide) + weight_product(x, dw, wide)

    return weight


def gram_partitioned(x: jax.Array, wide: bool) -> jax.Array:
    """The Gram of ``x`` on a mesh with auto axes, partitioned by the layout XLA gives ``x``."""
    return _auto_gram(wide)(x)


def weight_partitioned(x: jax.Array, w: jax.Array, wide: bool) -> jax.Array:
    """``weight_product`` on a mesh with auto axes; the result is laid out like ``x``."""
    return _auto_weight(wide)(x, w)
