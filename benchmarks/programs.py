"""The programs compared: jaxtrace, three peers, the design's core and the HVP.

Every builder returns a plain function of JAX arrays, jitted by
:mod:`benchmarks.timing`. With gradients, every program differentiates the sum
over the batch, so all compute the same value and gradient.

The peers are what a well-read user writes, each differentiated by autodiff:

* ``peer_card``, the design card's: ``jnp.trace(expm(x @ x.T))`` (an n x n expm);
* ``peer_gram``: the smaller Gram, ``jnp.trace(expm(x.T @ x)) + n - m`` (``x @ x.T`` if wide);
* ``peer_eigvalsh``: ``jnp.sum(jnp.exp(jnp.linalg.eigvalsh(G))) + n - m``.

Their log forms take the log of the trace (``peer_card``, ``peer_gram``: these
overflow at large norms, as users' code would) or a ``logsumexp`` over the
eigenvalues and ``max(n - m, 0)`` zeros (``peer_eigvalsh``).

NOTEARS' acyclicity constraint ``h(W) = tr exp(W o W) - d`` has one peer,
``peer_expm``: ``jnp.trace(jax.scipy.linalg.expm(w * w)) - d``, against
``jaxtrace.trace_expm(w * w) - d``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import jaxtrace

_HIGHEST = lax.Precision.HIGHEST
JAXTRACE = {"trace": jaxtrace.trace_expm_gram, "log_trace": jaxtrace.log_trace_expm_gram}
METHODS = ("eigh", "expm")


def with_grad(f: Callable[[jax.Array], jax.Array], mode: str) -> Callable[..., Any]:
    """``f`` (mode ``"value"``) or ``value_and_grad`` of its sum over the batch."""
    if mode == "value":
        return f
    if mode == "value_and_grad":
        return jax.value_and_grad(lambda x: f(x).sum())
    raise ValueError(f"unknown mode {mode!r}")


def jaxtrace_fn(function: str, method: str = "auto") -> Callable[[jax.Array], jax.Array]:
    """``jaxtrace.trace_expm_gram`` (``"trace"``) or its log, with ``method``."""
    return functools.partial(JAXTRACE[function], method=method)


def _small_gram(x: jax.Array) -> tuple[jax.Array, int]:
    """The smaller Gram of one matrix and the count of unit eigenvalues it leaves out."""
    n, m = x.shape
    return (x.T @ x if n >= m else x @ x.T), max(n - m, 0)


def _card(x: jax.Array, log: bool) -> jax.Array:
    t = jnp.trace(jax.scipy.linalg.expm(x @ x.T))
    return jnp.log(t) if log else t


def _gram(x: jax.Array, log: bool) -> jax.Array:
    g, pad = _small_gram(x)
    t = jnp.trace(jax.scipy.linalg.expm(g)) + pad
    return jnp.log(t) if log else t


def _eigvalsh(x: jax.Array, log: bool) -> jax.Array:
    g, pad = _small_gram(x)
    mu = jnp.linalg.eigvalsh(g)
    if not log:
        return jnp.sum(jnp.exp(mu)) + pad
    if pad:  # the pad unit eigenvalues of expm contribute log(pad) to the logsumexp
        mu = jnp.concatenate([mu, jnp.log(jnp.full((1,), pad, mu.dtype))])
    return jax.nn.logsumexp(mu)


PEERS = {"peer_card": _card, "peer_gram": _gram, "peer_eigvalsh": _eigvalsh}


def peer_fn(name: str, function: str, precision: str = "highest") -> Callable[..., jax.Array]:
    """A peer of :data:`PEERS`, vmapped over the batch.

    Args:
      name: key of :data:`PEERS`.
      function: ``"trace"`` or ``"log_trace"``.
      precision: JAX's default matmul precision while tracing the peer.
        ``"highest"`` matches jaxtrace's full-precision products; on GPUs and
        TPUs ``"default"`` lets the peer round float32 to TF32/bfloat16,
        which would compare precisions rather than algorithms.
    """
    return _vmapped(functools.partial(PEERS[name], log=function == "log_trace"), precision)


def _vmapped(single: Callable[[jax.Array], jax.Array], precision: str) -> Callable[..., jax.Array]:
    """``single`` (of one matrix) vmapped over the batch, traced under ``precision``."""

    def peer(x: jax.Array) -> jax.Array:
        batch_shape, (n, m) = x.shape[:-2], x.shape[-2:]
        with jax.default_matmul_precision(None if precision == "default" else precision):
            if not batch_shape:
                return single(x)
            return jax.vmap(single)(x.reshape(-1, n, m)).reshape(batch_shape)

    return peer


def notears_fn(w: jax.Array) -> jax.Array:
    """NOTEARS' ``h(W) = tr exp(W o W) - d`` by ``jaxtrace.trace_expm``, per matrix."""
    return jaxtrace.trace_expm(w * w) - w.shape[-1]


def notears_peer_fn(precision: str = "highest") -> Callable[..., jax.Array]:
    """``peer_expm``: ``jnp.trace(jax.scipy.linalg.expm(w * w)) - d``, vmapped like the peers."""
    return _vmapped(lambda w: jnp.trace(jax.scipy.linalg.expm(w * w)) - w.shape[-1], precision)


def core_program() -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """The unavoidable core of the eigh method's value and gradient, for one matrix.

    One Gram product (``x.T @ x``, or ``x @ x.T`` if wide), one ``eigh`` (no
    symmetrisation, no sorting), ``W = V diag(2 e^mu) V^T``, ``x @ W`` (``W @ x``)
    and the value ``sum(e^mu) + n - m``.
    """

    def core(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        n, m = x.shape
        mm = functools.partial(jnp.matmul, precision=_HIGHEST)
        wide = n < m
        v, mu = lax.linalg.eigh(
            mm(x, x.T) if wide else mm(x.T, x), symmetrize_input=False, sort_eigenvalues=False
        )
        e = jnp.exp(mu)
        w = mm(v * (2 * e), v.T)
        return jnp.sum(e) + max(n - m, 0), mm(w, x) if wide else mm(x, w)

    return core


def hvp_program(function: str, method: str) -> Callable[..., tuple[jax.Array, jax.Array]]:
    """Forward-over-reverse HVP ``jax.jvp(jax.grad(f), (x,), (v,))``: ``(x, v) -> (grad, hvp)``."""
    grad = jax.grad(lambda x: jaxtrace_fn(function, method)(x).sum())
    return lambda x, v: jax.jvp(grad, (x,), (v,))
