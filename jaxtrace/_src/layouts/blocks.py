"""Layouts of a sharded ``x`` and the per-device bodies of its products.

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
needed. ``explicit.py`` runs them with ``shard_map``, ``auto.py`` with
``custom_partitioning``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec

from jaxtrace._src.layouts import plain


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


def _summed(partial_sum: jax.Array, c_axes: tuple, k_axes: tuple) -> jax.Array:
    axes = c_axes + k_axes
    return lax.psum(partial_sum, axes) if axes else partial_sum


def cross(a, b, *, wide: bool, c_axes: tuple, k_axes: tuple, n_k: int):
    """Per device: the k x k ``plain.cross`` of two blocks, summed over the mesh."""
    if k_axes:
        a = _to_contracted(a, wide, k_axes, n_k)[0]
        b = _to_contracted(b, wide, k_axes, n_k)[0]
    return _summed(plain.cross(a, b, wide), c_axes, k_axes)


def gram(x, *, wide: bool, c_axes: tuple, k_axes: tuple, n_k: int):
    """Per device: the Gram of a block (moved once where k is sharded), summed over the mesh."""
    if k_axes:
        x = _to_contracted(x, wide, k_axes, n_k)[0]
    return _summed(plain.gram(x, wide), c_axes, k_axes)


def weight(x, w, *, wide: bool, c_axes: tuple, k_axes: tuple, n_k: int):
    """Per device: ``plain.weight`` of a block, laid out like the block."""
    del c_axes  # rows (columns) of x @ w (w @ x) are those of x: nothing to sum
    if not k_axes:
        return plain.weight(x, w, wide)
    moved, pad = _to_contracted(x, wide, k_axes, n_k)
    return _from_contracted(plain.weight(moved, w, wide), wide, k_axes, pad)


def body_kwargs(spec: tuple, wide: bool, mesh_shape) -> dict:
    _, c_axes, k_axes = split_spec(spec, wide)
    n_k = math.prod(mesh_shape[a] for a in k_axes)
    return {"wide": wide, "c_axes": c_axes, "k_axes": k_axes, "n_k": n_k}
