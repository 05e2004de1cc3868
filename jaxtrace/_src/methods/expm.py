r"""The matrix-product method: :math:`\exp(sG)` by scaling, Taylor and squaring.

No eigensolver, factorisation, solve or host callback: the k x k Gram's
exponential comes from matrix products alone (``taylor.py``), which run near
peak on every accelerator. The kernel returns
:math:`\ell = \log\operatorname{tr}\exp(sG)` and
:math:`\hat E = \exp(sG)/e^\ell` without ever forming :math:`e^{\lambda}`, so
it is free of overflow; :math:`\partial\ell/\partial s = \langle G, \hat E\rangle`.

Exact bounds of a positive semi-definite :math:`G` are enforced, as the
eigenvalue clamp of the eigh method does: :math:`\ell \le \log k` for
:math:`s \le 0` and :math:`\langle G, \hat E\rangle \ge 0`. (The kernel
itself keeps :math:`\log k + s\operatorname{tr}G/k \le \ell`.)

Derivatives: the kernel's squaring loop is a ``while_loop``, which reverse mode
cannot transpose; the JVP rule runs the kernel's transposable variant instead
(the same arithmetic, a fixed-length ``scan`` of skipped steps), so that
second derivatives work in forward and reverse mode alike.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxtrace._src import taylor


def _pair(a: jax.Array, b: jax.Array) -> jax.Array:
    """<a, b> = tr(a^T b) over the last two dimensions."""
    return jnp.sum(a * b, axis=(-2, -1))


def _bounded(ell: jax.Array, g: jax.Array, s: jax.Array) -> jax.Array:
    # For s <= 0 every eigenvalue of s G is <= 0.
    log_k = jnp.log(jnp.asarray(g.shape[-1], g.dtype))
    return jnp.where(s <= 0, jnp.minimum(ell, log_k), ell)


@jax.custom_batching.custom_vmap
def _kernel(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    return taylor.log_trace_and_weights(a)


@_kernel.def_vmap
def _kernel_vmap(axis_size, in_batched, a):
    # The kernel takes batch dimensions itself: under vmap its squaring loop stays
    # one loop over the batch's largest count. (vmap's own rule for a loop with a
    # batched predicate fails on meshes with explicit axes.) Never differentiated:
    # derivatives go through the transposable variant.
    del axis_size, in_batched
    return _kernel(a), (True, True)


def log_trace(g: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(ell, 1): ell = log tr exp(s G) by products alone."""
    ell = _bounded(_kernel(s * g)[0], g, s)
    return ell, jnp.ones_like(ell)


def _weights(g: jax.Array, s: jax.Array, *, transposable: bool):
    if transposable:
        ell, e_hat = taylor.log_trace_and_weights(s * g, transposable=True)
    else:
        ell, e_hat = _kernel(s * g)
    ell = _bounded(ell, g, s)
    return ell, jnp.ones_like(ell), e_hat, jnp.maximum(_pair(g, e_hat), 0)


@jax.custom_jvp
def weights(g: jax.Array, s: jax.Array):
    """(ell, 1, E_hat, d ell / d s) of the k x k Gram ``g`` (..., k, k) at scale ``s``:
    top = ell and total = 1, so E_hat and d ell / d s need no unnormalising."""
    return _weights(g, s, transposable=False)


@weights.defjvp
def _weights_jvp(primals, tangents):
    return jax.jvp(functools.partial(_weights, transposable=True), primals, tangents)
