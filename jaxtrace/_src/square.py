r"""The custom-VJP operator behind ``trace_expm`` and ``log_trace_expm``.

For a real square :math:`A` the kernel (``taylor.exp_factors``) gives
:math:`e^{A} = e^{c}\,2^{k} E` with an exact power of two; here it becomes
:math:`e^{A} = e^{top} W`, with the part of :math:`2^k` within
:math:`2^{\pm 64}` kept in :math:`W` (exactly) and the rest in :math:`top`. So
:math:`\operatorname{tr} e^{A} = e^{top}\operatorname{tr} W`: the pair
``LogTrace(top, tr W)`` of ``scalars.py``, whose functions then apply
unchanged. Where :math:`c = 0` and :math:`|k| \le 64` (NOTEARS' :math:`W \circ
W`, for one) the trace is :math:`\operatorname{tr} W`, with no exponential
rounded in. By :math:`d \operatorname{tr} f(A) = f'(A^\top) : dA` the gradient
is :math:`\varphi'\,e^{A^\top}`, formed from the forward pass's :math:`W`: the
trace's is :math:`e^{top} W^\top`, the log-trace's
:math:`W^\top/\operatorname{tr} W`. Nothing is differentiated through the
exponential for first derivatives; second derivatives go through the Fréchet
derivative of :math:`e^{A}`, as the JVP of the kernel's transposable variant
(forward and reverse mode alike).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxtrace._src import layouts, taylor
from jaxtrace._src.scalars import LogTrace, ScalarFunction

_kernel = layouts.per_device(taylor.exp_factors)
_KEPT = 64  # |exponent| of the power of two kept in W: finite entries and sums in any dtype


def _trace(x: jax.Array) -> jax.Array:
    return jnp.trace(x, axis1=-2, axis2=-1)


def _parts(c: jax.Array, k: jax.Array, e: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(top, W) with e^c 2^k E = e^top W."""
    kept = jnp.clip(k, -_KEPT, _KEPT)
    w = taylor.times_pow2(e, kept.astype(jnp.int32)[..., None, None])
    return c + (k - kept) * math.log(2), w


@jax.custom_jvp
def exp_parts(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(top, W) with exp(A) = e^top W, for ``a`` of shape (..., d, d)."""
    return _parts(*_kernel(a))


@exp_parts.defjvp
def _exp_parts_jvp(primals, tangents):
    # The Frechet derivative, as the JVP of the transposable variant: the same
    # arithmetic, in a loop that reverse mode can transpose.
    def parts(a):
        return _parts(*taylor.exp_factors(a, transposable=True))

    return jax.jvp(parts, primals, tangents)


class _Residuals(NamedTuple):
    grad: jax.Array  # (..., d, d) d value / d a


def _log_trace(a: jax.Array) -> tuple[LogTrace, jax.Array]:
    """(LogTrace(top, tr W), W)."""
    top, w = exp_parts(a)
    return LogTrace(top, _trace(w)), w


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _op(a: jax.Array, fn: ScalarFunction) -> jax.Array:
    return fn.value(_log_trace(a)[0], 0)


def _op_fwd(a: jax.Array, fn: ScalarFunction):
    # The primal inline (not through _op), so that forward mode can differentiate
    # this rule, as jax.hessian does.
    lt, w = _log_trace(a)
    grad = fn.weight(lt, 0)[..., None, None] * jnp.swapaxes(w, -1, -2)
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
