r"""The scalar functions of the family, as data.

Every method computes :math:`\ell = \log \sum_{i=1}^k e^{s\mu_i}`, the log-trace
of the exponential of the k x k Gram, and the trace-normalised weights
:math:`\hat E = \exp(sG) / e^\ell`. A function of the family is a scalar map
:math:`\varphi` of :math:`\ell` and of the count :math:`p = \max(n - m, 0)` of
zero eigenvalues the k x k Gram lacks:

* the trace, :math:`\varphi(\ell) = e^\ell + p`;
* its logarithm, :math:`\varphi(\ell) = \log(e^\ell + p)`.

By the chain rule :math:`\nabla_X \varphi = \varphi'(\ell)\, 2s\,X\hat E` and
:math:`\partial\varphi/\partial s = \varphi'(\ell)\,\partial\ell/\partial s`.
So a function is two scalar formulas (its value and :math:`\varphi'`), each
differentiable once more for second derivatives, and adding one touches this
module alone.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxtrace._src.numerics import below, repaired


def exp(a: jax.Array) -> jax.Array:
    """``jnp.exp`` that keeps NaN as NaN.

    XLA:CPU's float32 exp can turn a NaN that stems from a constant (eigh's
    failure value) into a finite number (jax-ml/jax#29537).
    """
    return jnp.where(jnp.isnan(a), a, jnp.exp(a))


def has_zeros(count) -> bool:
    """False only where the count of missing zero eigenvalues is statically 0."""
    return not (isinstance(count, int) and count == 0)


class LogTrace(NamedTuple):
    """ell = top + log(total), kept as a pair: the trace e^top total is then as
    exact as its terms, where exp(log(...)) would round once more."""

    top: jax.Array
    total: jax.Array

    @property
    def ell(self) -> jax.Array:
        return self.top + jnp.log(self.total)


class ScalarFunction(NamedTuple):
    """phi(ell) and phi'(ell) / total, given the (possibly symbolic) zero-eigenvalue count p.

    Gradients are phi'(ell) times those of ell, whose weights the methods hand
    over unnormalised (times ``total``): ``weight`` is the factor that turns
    them into the function's, e^top for the trace with no rounding in between.
    """

    name: str
    value: Callable[[LogTrace, object], jax.Array]
    weight: Callable[[LogTrace, object], jax.Array]
    # phi(log n), with n = k + p: the exact value at s = 0 and, phi being
    # increasing, an upper bound for every s < 0.
    at_zero: Callable[[int], float]


def value_at(fn: ScalarFunction, lt: LogTrace, count, k: int, s: jax.Array) -> jax.Array:
    """phi(ell), kept at or below the exact bound phi(log n) for s < 0.

    Rounding alone can put phi a unit above the bound where every eigenvalue of
    s G is zero to working precision (log 8 rounds up in float32). The bound
    repairs the value only. A symbolic count (``jax.export``) has no bound to use.
    """
    value = fn.value(lt, count)
    if not isinstance(count, int):
        return value
    cap = below(fn.at_zero(k + count), value.dtype)
    return repaired(value, jnp.where(s < 0, jnp.minimum(value, cap), value))


def _count(ell: jax.Array, count) -> jax.Array:
    return jnp.asarray(count, ell.dtype)


def _trace_value(lt: LogTrace, count):
    value = exp(lt.top) * lt.total
    return value + _count(value, count) if has_zeros(count) else value


def _trace_weight(lt: LogTrace, count):
    del count
    return exp(lt.top)


def _log_of(ell, count):
    return jnp.logaddexp(ell, jnp.log(_count(ell, count))) if has_zeros(count) else ell


def _log_value(lt: LogTrace, count):
    return _log_of(lt.ell, count)


def _log_weight(lt: LogTrace, count):
    # phi' = e^ell / (e^ell + p): the share of the k eigenvalues in the trace.
    share = _share(lt.ell, count) if has_zeros(count) else 1
    return share / lt.total


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _share(ell, count):
    return exp(ell - _log_of(ell, count))


@_share.defjvp
def _share_jvp(count, primals, tangents):
    # share' = share (1 - share), with 1 - share = p e^{-value} free of cancellation.
    (ell,), (d_ell,) = primals, tangents
    value = _log_of(ell, count)
    share = exp(ell - value)
    return share, share * exp(jnp.log(_count(ell, count)) - value) * d_ell


TRACE = ScalarFunction("trace", _trace_value, _trace_weight, float)
LOG_TRACE = ScalarFunction("log_trace", _log_value, _log_weight, math.log)
