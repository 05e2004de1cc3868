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
sharding it chose for ``x`` (read back as a spec over the mesh, whatever kind of
sharding XLA hands over), and asks for ``contracting_spec`` where that divides.
``custom_partitioning`` has no rules for ``vmap`` or autodiff, so
``custom_vmap`` and ``custom_jvp`` (the products are bilinear; tangents use the
plain products) wrap it. Under ``vmap`` a mapped ``x`` is one more batch
dimension; a mapped ``w`` alone (``vmap`` over the scale, ``x`` fixed) is one
more leading dimension of ``w``, so ``x`` is never broadcast.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

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


def _candidate_specs(ndim: int, axes: tuple):
    """Every full spec of ``ndim`` dimensions over the mesh ``axes``, each used at most once."""
    for r in range(len(axes) + 1):
        for chosen in itertools.permutations(axes, r):
            for dims in itertools.product(range(ndim), repeat=r):
                entries = [[] for _ in range(ndim)]
                for axis, dim in zip(chosen, dims, strict=True):
                    entries[dim].append(axis)
                yield tuple(e[0] if len(e) == 1 else (tuple(e) or None) for e in entries)


def _chosen_spec(arg, mesh) -> tuple:
    """The full spec over ``mesh`` of the sharding XLA chose for ``arg``.

    XLA hands over a ``NamedSharding`` where it can; any other sharding (an
    HLO sharding without a mesh) is matched against the layouts the mesh can
    express. One that none matches is gathered, with a warning.
    """
    ndim = len(arg.shape)
    sharding = arg.sharding
    if isinstance(sharding, NamedSharding):
        return full_spec(sharding.spec, ndim)
    if sharding.is_fully_replicated:
        return (None,) * ndim
    for spec in _candidate_specs(ndim, tuple(mesh.axis_names)):
        if sharding.is_equivalent_to(NamedSharding(mesh, PartitionSpec(*spec)), ndim):
            return spec
    warnings.warn(
        f"jaxtrace: XLA laid out an operand of shape {tuple(arg.shape)} as {sharding}, "
        f"which no PartitionSpec over the mesh axes {dict(mesh.shape)} expresses; it is "
        "gathered (replicated) for the Gram and the gradient. Shard x with a "
        "NamedSharding on the mesh to avoid the gather.",
        stacklevel=2,
    )
    return (None,) * ndim


def _operand_spec(x, wide: bool, mesh) -> tuple:
    """The layout to ask for ``x`` in: XLA moves divisible layouts (once for both ops)."""
    spec = _chosen_spec(x, mesh)
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
            mesh, gram_spec(_chosen_spec(arg_shapes[0], mesh))
        ),
        sharding_rule=("... k c -> ... i j" if wide else "... c k -> ... i j"),
        reduction_factors=("c",),
        need_replication_factors=("i", "j"),
    )
    return gram


def _weight_rule(wide: bool, n_extra: int, mesh, value_types, result_types):
    """Shardy rule of ``_cp_weight``: x (b.., c, k), w (e.., b.., i, j) -> (e.., b.., c, k)."""
    del mesh, result_types
    batch = [f"b{i}" for i in range(len(value_types[0].shape) - 2)]
    extra = [f"e{i}" for i in range(n_extra)]
    mat = ["k", "c"] if wide else ["c", "k"]
    x, w, out = (
        " ".join(f) for f in (batch + mat, extra + batch + ["i", "j"], extra + batch + mat)
    )
    # w is small: its own and its extra dimensions are replicated (in factor order).
    return f"{x}, {w} -> {out}", {"need_replication_factors": (*extra, "i", "j")}


def _cp_weight(wide: bool, n_extra: int):
    """``weight_product`` of x (..., c, k) and w with ``n_extra`` more leading dimensions.

    The extra dimensions come from ``vmap`` over ``w`` alone (over the scale,
    ``x`` fixed): ``x`` is never broadcast along them.
    """

    @custom_partitioning
    def weight(x, w):
        return weight_product(x, w, wide)

    def shardings(mesh, arg_shapes):
        spec = _operand_spec(arg_shapes[0], wide, mesh)
        extra = (None,) * n_extra
        w_spec = PartitionSpec(*extra, *gram_spec(spec))
        return spec, NamedSharding(mesh, PartitionSpec(*extra, *spec)), w_spec

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        spec, out_sharding, w_spec = shardings(mesh, arg_shapes)
        body = functools.partial(weight_body, **_body_kwargs(spec, wide, mesh.shape))
        x_sharding = NamedSharding(mesh, PartitionSpec(*spec))
        return mesh, body, out_sharding, (x_sharding, NamedSharding(mesh, w_spec))

    weight.def_partition(
        partition=partition,
        infer_sharding_from_operands=lambda mesh, arg_shapes, _: shardings(mesh, arg_shapes)[1],
        sharding_rule=functools.partial(_weight_rule, wide, n_extra),
    )
    return weight


@functools.cache
def _auto_gram(wide: bool):
    inner = jax.custom_batching.custom_vmap(_cp_gram(wide))

    @inner.def_vmap
    def _rule(axis_size, in_batched, x):
        del axis_size, in_batched  # x is batched: the mapped axis is one more batch dimension
        return inner(x), True

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
def _auto_weight(wide: bool, n_extra: int = 0):
    """The weight product under ``vmap`` and ``jvp``, with ``n_extra`` leading dimensions of w."""
    inner = jax.custom_batching.custom_vmap(_cp_weight(wide, n_extra))

    @inner.def_vmap
    def _rule(axis_size, in_batched, x, w):
        x_batched, w_batched = in_batched
        if not x_batched:
            # Mapped over w alone: one more extra dimension, x stays as it is.
            return _auto_weight(wide, n_extra + 1)(x, w), True
        # x's new batch dimension goes in front of its others, after w's extras.
        if w_batched:
            w = jnp.moveaxis(w, 0, n_extra)
        else:
            w = jnp.broadcast_to(
                jnp.expand_dims(w, n_extra), (*w.shape[:n_extra], axis_size, *w.shape[n_extra:])
            )
        out = _auto_weight(wide, n_extra)(x, w)
        return (jnp.moveaxis(out, n_extra, 0) if n_extra else out), True

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
