r"""The custom-VJP operator behind ``trace_expm`` and ``log_trace_expm``.

For a real square :math:`A` the kernel (``taylor.log_scale_and_direction``)
gives :math:`e^{A} = e^{L} E` with :math:`\|E\|_F = 1`, so
:math:`\operatorname{tr} e^{A} = e^{L}\operatorname{tr} E`: the pair
``LogTrace(L, tr E)`` of ``scalars.py``, whose functions then apply
unchanged. By :math:`d \operatorname{tr} f(A) = f'(A^\top) : dA` the
gradient is :math:`\varphi'\,e^{A^\top}`, formed from the forward pass's
:math:`E`: the trace's is :math:`e^{L} E^\top`, the log-trace's
:math:`E^\top/\operatorname{tr} E`. Nothing is differentiated through the
exponential for first derivatives; second derivatives go through the
Fréchet derivative of :math:`e^{A}`, as the JVP of the kernel's transposable
variant (forward and reverse mode alike).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxtrace._src import layouts, taylor
from jaxtrace._src.scalars import LogTrace, ScalarFunction

_kernel = layouts.per_device(taylor.log_scale_and_direction)


def _trace(x: jax.Array) -> jax.Array:
    return jnp.trace(x, axis1=-2, axis2=-1)


@jax.custom_jvp
def exp_parts(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(L, E) with exp(A) = e^L E and ||E||_F = 1, for ``a`` of shape (..., d, d)."""
    return _kernel(a)


@exp_parts.defjvp
def _exp_parts_jvp(primals, tangents):
    # The Frechet derivative, as the JVP of the transposable variant: the same
    # arithmetic, in a loop that reverse mode can transpose.
    return jax.jvp(
        functools.partial(taylor.log_scale_and_direction, transposable=True), primals, tangents
    )


class _Residuals(NamedTuple):
    grad: jax.Array  # (..., d, d) d value / d a


def _log_trace(a: jax.Array) -> tuple[LogTrace, jax.Array]:
    """(LogTrace(L, tr E), E)."""
    top, e = exp_parts(a)
    return LogTrace(top, _trace(e)), e


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _op(a: jax.Array, fn: ScalarFunction) -> jax.Array:
    return fn.value(_log_trace(a)[0], 0)


def _op_fwd(a: jax.Array, fn: ScalarFunction):
    # The primal inline (not through _op), so that forward mode can differentiate
    # this rule, as jax.hessian does.
    lt, e = _log_trace(a)
    grad = fn.weight(lt, 0)[..., None, None] * jnp.swapaxes(e, -1, -2)
    return fn.value(lt, 0), _Residuals(grad)


def _op_bwd(fn: ScalarFunction, res: _Residuals, ct: jax.Array):
    del fn
    return (ct[..., None, None] * res.grad,)


_op.defvjp(_op_fwd, _op_bwd)


def evaluate(a: jax.Array, fn: ScalarFunction) -> jax.Array:
    """Runs the operator on a prepared (..., d, d) array, d = 0 included."""
    if a.shape[-1] == 0:
        # exp of a 0 x 0 matrix is 0 x 0: an empty trace, 0 (log: -inf).
        top = jnp.full(a.shape[:-2], -jnp.inf, dtype=a.dtype)
        return fn.value(LogTrace(top, jnp.ones_like(top)), 0)
    return _op(a, fn)
