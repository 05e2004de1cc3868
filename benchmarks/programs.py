"""The programs compared: jaxtrace, its peer, the design's core and the HVP.

Every builder returns a plain function of JAX arrays, to be jitted by
:mod:`benchmarks.timing`. For a batch, both jaxtrace and the peer differentiate
the sum over the batch, so the two compute exactly the same value and gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

import jaxtrace

_HIGHEST = lax.Precision.HIGHEST


def _with_grad(f: Callable[[jax.Array], jax.Array], mode: str) -> Callable[..., Any]:
    """``f`` (mode ``"value"``) or ``value_and_grad`` of its sum over the batch."""
    if mode == "value":
        return f
    if mode == "value_and_grad":
        return jax.value_and_grad(lambda x: f(x).sum())
    raise ValueError(f"unknown mode {mode!r}")


def jaxtrace_program(mode: str) -> Callable[..., Any]:
    """``jaxtrace.trace_expm_gram`` in the given mode.

    Args:
      mode: ``"value"`` (returns the batch of values) or ``"value_and_grad"``
        (returns the summed value and the gradient, shaped like ``x``).
    """
    return _with_grad(jaxtrace.trace_expm_gram, mode)


def peer_program(mode: str, precision: str = "highest") -> Callable[..., Any]:
    """The peer: ``jnp.trace(jax.scipy.linalg.expm(x @ x.T))``, vmapped over the batch.

    Args:
      mode: as in :func:`jaxtrace_program`.
      precision: JAX's default matmul precision while tracing the peer.
        ``"highest"`` matches jaxtrace, which uses full-precision products; on
        GPUs and TPUs ``"default"`` lets the peer round float32 to TF32/bfloat16,
        which would compare precisions rather than algorithms.
    """

    def single(x: jax.Array) -> jax.Array:
        return jnp.trace(jax.scipy.linalg.expm(x @ x.T))

    def batched(x: jax.Array) -> jax.Array:
        batch_shape, (n, m) = x.shape[:-2], x.shape[-2:]
        if not batch_shape:
            return single(x)
        flat = jax.vmap(single)(x.reshape(-1, n, m))
        return flat.reshape(batch_shape)

    def peer(x: jax.Array) -> jax.Array:
        if precision == "default":
            return batched(x)
        with jax.default_matmul_precision(precision):
            return batched(x)

    return _with_grad(peer, mode)


def core_program() -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """The unavoidable core of jaxtrace's value-and-gradient for one matrix ``x``.

    One Gram product ``x.T @ x`` (``x @ x.T`` if wide), one ``eigh`` (no symmetrisation, no sorting,
    as in jaxtrace), ``W = V diag(2 e^mu) V^T`` and ``x @ W`` (``W @ x``), plus the value
    ``sum(e^mu) + n - m``. The factor 2 rides on the k-vector, so the core has
    no elementwise pass over ``x`` that the formula does not need.
    """

    def core(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        n, m = x.shape
        wide = n < m  # a wide x takes the Gram on the other side, as in jaxtrace
        gram = (
            jnp.matmul(x, x.T, precision=_HIGHEST)
            if wide
            else jnp.matmul(x.T, x, precision=_HIGHEST)
        )
        v, mu = lax.linalg.eigh(gram, symmetrize_input=False, sort_eigenvalues=False)
        e = jnp.exp(mu)
        w = jnp.matmul(v * (2 * e), v.T, precision=_HIGHEST)
        grad = (
            jnp.matmul(w, x, precision=_HIGHEST) if wide else jnp.matmul(x, w, precision=_HIGHEST)
        )
        return jnp.sum(e) + max(n - m, 0), grad

    return core


def hvp_program() -> Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """Forward-over-reverse Hessian-vector product: ``jax.jvp(jax.grad(f), (x,), (v,))``.

    Returns:
      A function of ``(x, v)`` returning ``(grad, hvp)``.
    """
    grad = jax.grad(lambda x: jaxtrace.trace_expm_gram(x).sum())

    def hvp(x: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jax.jvp(grad, (x,), (v,))

    return hvp


def peer_flops(shape: tuple[int, ...], mode: str) -> float:
    """A rough flop count of the peer, to decide whether it is worth running.

    The peer forms the n x n matrix ``x @ x.T`` and runs Padé-13 scaling and
    squaring on it: about 10 n x n matmul equivalents with the solve and a few
    squarings. Under ``vmap`` every Padé branch and all 16 squarings are
    evaluated (``switch`` and ``cond`` become ``select``): about 40. The
    gradient triples it. Only the order of magnitude matters here.

    Args:
      shape: ``(..., n, m)``.
      mode: ``"value"`` or ``"value_and_grad"``.

    Returns:
      Estimated floating-point operations of one call.
    """
    *batch_shape, n, m = shape
    batch = 1
    for d in batch_shape:
        batch *= d
    matmuls = 40.0 if batch_shape else 10.0
    if mode == "value_and_grad":
        matmuls *= 3.0
    return batch * (2.0 * n * n * m + matmuls * 2.0 * n**3)
