"""Products on a mesh with auto axes: only XLA's partitioner knows the layout.

The Gram and ``x @ w`` are ``custom_partitioning`` ops: XLA calls back at
compile time with the sharding it chose for ``x``, asks for
``blocks.contracting_spec`` where that divides (so that ``x`` moves once for
both products) and runs the per-device bodies of ``blocks.py``.
``custom_partitioning`` has no rules for ``vmap`` or autodiff, so
``custom_vmap`` (a mapped ``x`` is one more batch dimension; a mapped ``w``
alone one more leading dimension of ``w``, with ``x`` left as it is) and
``custom_jvp`` (the products are bilinear; tangents use the plain products,
which reverse mode can transpose) wrap it. ``batchwise`` (a function of the
k x k matrices, run by each device on its own) is one too, left to its caller
to map and never differentiated.
"""

from __future__ import annotations

import functools
import itertools
import warnings

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec

from jaxtrace._src.layouts import blocks, plain


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
        return blocks.full_spec(sharding.spec, ndim)
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
    return blocks.contracting_spec(spec, x.shape, wide, mesh.shape) or spec


def _define_partition(op, shardings, sharding_rule) -> None:
    """Partitions ``op`` by ``shardings(mesh, arg_shapes) -> (body, out, arg shardings)``."""

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        return mesh, *shardings(mesh, arg_shapes)

    op.def_partition(
        partition=partition,
        infer_sharding_from_operands=lambda mesh, arg_shapes, _: shardings(mesh, arg_shapes)[1],
        sharding_rule=sharding_rule,
    )


def _cp_gram(wide: bool):
    @custom_partitioning
    def gram(x):
        return plain.gram(x, wide)

    def partition(mesh, arg_shapes, result_shape):
        del result_shape
        spec = _operand_spec(arg_shapes[0], wide, mesh)
        body = functools.partial(blocks.gram, **blocks.body_kwargs(spec, wide, mesh.shape))
        return (
            mesh,
            body,
            NamedSharding(mesh, blocks.gram_spec(spec)),
            (NamedSharding(mesh, PartitionSpec(*spec)),),
        )

    gram.def_partition(
        partition=partition,
        infer_sharding_from_operands=lambda mesh, arg_shapes, _: NamedSharding(
            mesh, blocks.gram_spec(_chosen_spec(arg_shapes[0], mesh))
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
        return plain.weight(x, w, wide)

    def shardings(mesh, arg_shapes):
        spec = _operand_spec(arg_shapes[0], wide, mesh)
        extra = (None,) * n_extra
        w_spec = PartitionSpec(*extra, *blocks.gram_spec(spec))
        body = functools.partial(blocks.weight, **blocks.body_kwargs(spec, wide, mesh.shape))
        args = (NamedSharding(mesh, PartitionSpec(*spec)), NamedSharding(mesh, w_spec))
        return body, NamedSharding(mesh, PartitionSpec(*extra, *spec)), args

    _define_partition(weight, shardings, functools.partial(_weight_rule, wide, n_extra))
    return weight


@functools.cache
def _auto_gram(wide: bool):
    gram = jax.custom_batching.custom_vmap(_cp_gram(wide))

    @gram.def_vmap
    def _rule(axis_size, in_batched, x):
        del axis_size, in_batched  # x is batched: the mapped axis is one more batch dimension
        return gram(x), True

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
        return weight(x, w), plain.weight(dx, w, wide) + plain.weight(x, dw, wide)

    return weight


def _batchwise_rule(n_batch: int, out_ndims: tuple, mesh, value_types, result_types):
    """Shardy rule of ``_cp_batchwise``: a (b.., i, j) -> each output (b.., [i, j])."""
    del mesh, value_types, result_types
    batch = [f"b{i}" for i in range(n_batch)]
    outs = ", ".join(" ".join(batch + ["i", "j"][: nd - n_batch]) for nd in out_ndims)
    return f"{' '.join([*batch, 'i', 'j'])} -> {outs}", {"need_replication_factors": ("i", "j")}


@functools.cache
def _cp_batchwise(fun, n_batch: int, out_ndims: tuple, out_tree):
    """``fun`` run by every device on its own matrices: only batch dimensions stay sharded."""
    # (A function of one positional argument: custom_partitioning binds by signature.)
    partitioned = custom_partitioning(lambda a: fun(a))

    def shardings(mesh, arg_shapes):
        batch = _chosen_spec(arg_shapes[0], mesh)[:n_batch]
        out = [NamedSharding(mesh, PartitionSpec(*batch)) for _ in out_ndims]
        arg = NamedSharding(mesh, PartitionSpec(*batch, None, None))
        return fun, out_tree.unflatten(out), (arg,)

    _define_partition(
        partitioned, shardings, functools.partial(_batchwise_rule, n_batch, out_ndims)
    )
    return partitioned


def batchwise(fun, a: jax.Array):
    """``fun`` of k x k matrices ``a``, partitioned so that every device runs it on its own."""
    leaves, out_tree = jax.tree.flatten(jax.eval_shape(fun, a))
    out_ndims = tuple(o.ndim for o in leaves)
    return _cp_batchwise(fun, a.ndim - 2, out_ndims, out_tree)(a)


def gram(x: jax.Array, wide: bool) -> jax.Array:
    """The Gram of ``x``, partitioned for the layout XLA gives ``x``."""
    return _auto_gram(wide)(x)


def weight(x: jax.Array, w: jax.Array, wide: bool) -> jax.Array:
    """``plain.weight``, partitioned for the layout XLA gives ``x``; laid out like ``x``."""
    return _auto_weight(wide)(x, w)
