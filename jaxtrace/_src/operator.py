"""The custom-VJP operator behind the public functions."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxtrace._src import layouts
from jaxtrace._src.methods import Method
from jaxtrace._src.scalars import LogTrace, ScalarFunction, value_at


def zero_eigenvalue_count(x: jax.Array):
    """max(n - m, 0): the zero eigenvalues of X X^T absent from the k x k Gram.

    An int, or a symbolic dimension under ``jax.export`` shape polymorphism.
    """
    return 0 if layouts.is_wide(x) else x.shape[-2] - x.shape[-1]


class _Residuals(NamedTuple):
    grad_x: jax.Array  # (..., n, m) d value / d x
    grad_scale: jax.Array  # (...,) d value / d scale


def _value_and_grads(x: jax.Array, s: jax.Array, fn: ScalarFunction, method: Method):
    """(value, d value / d x, d value / d s): phi(ell) and phi'(ell) times the grads of ell."""
    wide = layouts.is_wide(x)
    count = zero_eigenvalue_count(x)
    g = layouts.gram(x, wide)
    top, total, weights, moment = method.weights(g, s)
    lt = LogTrace(top, total)
    factor = fn.weight(lt, count)
    # 2s goes into the k x k weights: the n x m gradient is one product, no extra pass.
    grad_x = layouts.weight(x, (2 * s * factor)[..., None, None] * weights, wide)
    return value_at(fn, lt, count, g.shape[-1], s), grad_x, factor * moment


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _op(x: jax.Array, s: jax.Array, fn: ScalarFunction, method: Method) -> jax.Array:
    # Undifferentiated calls need ell only: no product of the gradient.
    g = layouts.gram(x, layouts.is_wide(x))
    top, total = method.log_trace(g, s)
    return value_at(fn, LogTrace(top, total), zero_eigenvalue_count(x), g.shape[-1], s)


def _op_fwd(x: jax.Array, s: jax.Array, fn: ScalarFunction, method: Method):
    # The primal is computed inline (not through _op) so that forward-mode
    # differentiation of this rule, as in jax.hessian, stays possible.
    value, grad_x, grad_scale = _value_and_grads(x, s, fn, method)
    return value, _Residuals(grad_x, grad_scale)


def _op_bwd(fn: ScalarFunction, method: Method, res: _Residuals, ct: jax.Array):
    del fn, method
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


def evaluate(x: jax.Array, s: jax.Array, fn: ScalarFunction, method: Method) -> jax.Array:
    """Runs the operator on prepared inputs, empty matrices included."""
    n, m = x.shape[-2:]
    if (n if layouts.is_wide(x) else m) == 0:
        # No Gram: ell is the log of an empty sum, and only n - m zero eigenvalues remain.
        top = jnp.full(x.shape[:-2], -jnp.inf, dtype=x.dtype)
        return fn.value(LogTrace(top, jnp.ones_like(top)), zero_eigenvalue_count(x))
    return _op(x, _vary_like(s, x), fn, method)
