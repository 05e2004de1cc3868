"""The custom-VJP operator behind the public functions."""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxtrace._src.products import is_wide
from jaxtrace._src.spectral import (
    gram_eigenvalues,
    value_and_grads,
    value_from_eigenvalues,
    zero_eigenvalue_count,
)


class _Residuals(NamedTuple):
    grad_x: jax.Array  # (..., n, m) d value / d x
    grad_scale: jax.Array  # (...,) d value / d scale


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _op(x: jax.Array, s: jax.Array, log: bool) -> jax.Array:
    # Undifferentiated calls use the eigenvalues only: no product of the gradient.
    return value_from_eigenvalues(gram_eigenvalues(x), s, zero_eigenvalue_count(x), log)


def _op_fwd(x: jax.Array, s: jax.Array, log: bool):
    # The primal is computed inline (not through _op) so that forward-mode
    # differentiation of this rule, as in jax.hessian, stays possible.
    value, grad_x, grad_scale = value_and_grads(x, s, log)
    return value, _Residuals(grad_x, grad_scale)


def _op_bwd(log: bool, res: _Residuals, ct: jax.Array):
    del log
    return ct[..., None, None] * res.grad_x, jnp.sum(ct * res.grad_scale)


_op.defvjp(_op_fwd, _op_bwd)


def _varying_axes(a: jax.Array) -> frozenset:
    """The manual mesh axes (inside ``shard_map``) over which ``a`` varies."""
    aval = jax.typeof(a)
    mat = getattr(aval, "mat", None)
    varying = getattr(mat, "varying", None) if mat is not None else getattr(aval, "vma", None)
    return frozenset(varying or ())


def _vary_like(s: jax.Array, x: jax.Array) -> jax.Array:
    """Marks ``s`` as varying wherever ``x`` does.

    Inside ``shard_map`` the scale's cotangent varies with ``x``, and a custom
    VJP must return it with the type of ``s``; the cast's transpose psums it.
    """
    missing = tuple(sorted(_varying_axes(x) - _varying_axes(s)))
    return jax.lax.pcast(s, missing, to="varying") if missing else s


def evaluate(x: jax.Array, s: jax.Array, log: bool) -> jax.Array:
    """Runs the operator on prepared inputs, empty matrices included."""
    n, m = x.shape[-2:]
    if (n if is_wide(x) else m) == 0:
        # No Gram to decompose: n - m zero eigenvalues, or none at all.
        count = zero_eigenvalue_count(x)
        if log:
            value = math.log(count) if count else -math.inf
        else:
            value = float(count)
        return jnp.full(x.shape[:-2], value, dtype=x.dtype)
    return _op(x, _vary_like(s, x), log)
