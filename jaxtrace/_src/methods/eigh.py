r"""The eigendecomposition method: one symmetric ``eigh`` of the k x k Gram.

With :math:`G = V \operatorname{diag}(\mu) V^\top` and :math:`\lambda = s\mu`,

.. math::

    \ell = \log \sum_i e^{\lambda_i}, \qquad
    \hat E = V \operatorname{diag}(\hat w) V^\top, \quad
    \hat w_i = e^{\lambda_i - \ell}, \qquad
    \frac{\partial \ell}{\partial s} = \sum_i \mu_i \hat w_i .

The eigenvalues are clamped at zero: a Gram matrix is positive semi-definite,
and rounding (an error of order eps |G|) must not turn that around, since a
large negative scale would make such an eigenvalue a huge positive exponent.

:func:`weights` carries its own JVP rule, the Daleckii--Krein formula, so that
second derivatives never differentiate ``eigh``'s eigenvectors (whose
derivative divides by :math:`\mu_i - \mu_j` and is NaN at repeated eigenvalues).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

from jaxtrace._src.numerics import PRECISION
from jaxtrace._src.scalars import exp


def _eigh(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The Gram is symmetric by construction and LAPACK/cuSOLVER read one
    # triangle, so neither symmetrisation nor sorting is worth paying for.
    v, mu = lax.linalg.eigh(g, symmetrize_input=False, sort_eigenvalues=False)
    return jnp.maximum(mu, 0), v  # (maximum keeps NaN)


def _exponents(mu: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(d, top): s mu = d + top with sum(e^d) finite, so ell = top + log(sum(e^d)).

    top = 0 while every |s mu| is far from the overflow threshold: the trace is
    then sum(e^{s mu}) itself, as exact as its terms. Beyond, the top exponent
    is taken out, the exponents being formed as s (mu - mu_top), never as
    s mu - top: a compiler may contract the latter into a fused multiply-add
    that keeps the rounding of s mu, an error of eps |s mu| in the exponent
    (inf in float32 once |s mu| > 1e9).
    """
    safe = math.log(jnp.finfo(mu.dtype).max) / 2
    in_range = jnp.max(jnp.abs(s * mu), axis=-1) <= safe
    extreme = jnp.where(s >= 0, jnp.max(mu, axis=-1), jnp.min(mu, axis=-1))
    mu_top = jnp.where(in_range, 0, extreme)
    return s * (mu - mu_top[..., None]), s * mu_top


def log_trace(g: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(top, total) of ell = log tr exp(s G), from the eigenvalues (``eigh``
    computes, and drops, the vectors)."""
    d, top = _exponents(_eigh(g)[0], s)
    return top, jnp.sum(exp(d), axis=-1)


def _congruence(v: jax.Array, w: jax.Array) -> jax.Array:
    """``v @ diag(w) @ v.T``."""
    return jnp.einsum("...ij,...kj->...ik", v * w[..., None, :], v, precision=PRECISION)


def _from_eigenbasis(v: jax.Array, a: jax.Array) -> jax.Array:
    """``v @ a @ v.T``."""
    va = jnp.einsum("...ij,...jk->...ik", v, a, precision=PRECISION)
    return jnp.einsum("...ik,...lk->...il", va, v, precision=PRECISION)


def _to_eigenbasis(v: jax.Array, a: jax.Array) -> jax.Array:
    """``v.T @ a @ v``."""
    av = jnp.einsum("...jk,...kl->...jl", a, v, precision=PRECISION)
    return jnp.einsum("...ji,...jl->...il", v, av, precision=PRECISION)


def _exp_divided_differences(d: jax.Array) -> jax.Array:
    r"""Phi_ij = (e^{d_i} - e^{d_j}) / (d_i - d_j), Phi_ii = e^{d_i}.

    Written as :math:`e^{\max(d_i, d_j)}\,(1 - e^{-g})/g` with
    :math:`g = |d_i - d_j|`: both factors are bounded and ``expm1`` keeps close
    eigenvalues free of cancellation and of 0/0.
    """
    di, dj = d[..., :, None], d[..., None, :]
    gap = jnp.abs(di - dj)
    positive = gap > 0
    safe_gap = jnp.where(positive, gap, 1)
    ratio = jnp.where(positive, -jnp.expm1(-safe_gap) / safe_gap, 1)
    return exp(jnp.maximum(di, dj)) * ratio


def _sums(mu: jax.Array, d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum(e^d), sum(mu e^d)) in one reduction: as two, XLA would hold e^d, k
    numbers per scale, under ``vmap`` over scales."""
    e = exp(d)
    zero = jnp.zeros((), d.dtype)
    return lax.reduce(
        (e, mu * e), (zero, zero), lambda a, b: (a[0] + b[0], a[1] + b[1]), (d.ndim - 1,)
    )


def _decomposed(g: jax.Array, s: jax.Array):
    mu, v = _eigh(g)
    d, top = _exponents(mu, s)
    total, moment = _sums(mu, d)
    w = exp(d) / total[..., None]  # sums to one as computed
    return (top, total, _congruence(v, exp(d)), moment), (mu, v, d, total, w)


@jax.custom_jvp
def weights(g: jax.Array, s: jax.Array):
    """(top, total, V diag(e^d) V^T, sum(mu e^d)) of the k x k Gram ``g`` (..., k, k) at ``s``."""
    return _decomposed(g, s)[0]


@weights.defjvp
def _weights_jvp(primals, tangents):
    g, s = primals
    dg, ds = tangents
    out, (mu, v, d, total, w) = _decomposed(g, s)

    # d(s G) in the eigenbasis: s V^T dG V + ds diag(mu).
    dg_eig = _to_eigenbasis(v, dg)
    dmu = jnp.diagonal(dg_eig, axis1=-2, axis2=-1)
    k = mu.shape[-1]
    d_lam = s * dg_eig + ds * (jnp.eye(k, dtype=mu.dtype) * mu[..., None, :])
    d_lam_diag = s * dmu + ds * mu

    d_ell = jnp.sum(w * d_lam_diag, axis=-1)
    # The weights move by w_i (d lam_i - d ell), written as w_i sum_j w_j (d lam_i -
    # d lam_j): where one weight is close to 1 the plain difference cancels,
    # leaving an error of eps * lam_max.
    gaps = d_lam_diag[..., :, None] - d_lam_diag[..., None, :]
    d_w = w * jnp.sum(gaps * w[..., None, :], axis=-1)

    # Daleckii-Krein: d expm(A)[E] = V (Phi o (V^T E V)) V^T, normalised, with
    # the diagonal (where d ell enters) set in the eigenbasis.
    phi = _exp_divided_differences(d) / total[..., None, None]
    eye = jnp.eye(k, dtype=mu.dtype)
    d_e_hat = _from_eigenbasis(v, phi * d_lam * (1 - eye) + eye * d_w[..., None, :])
    d_ell_s = jnp.sum(w * dmu + mu * d_w, axis=-1)
    # ell = top + log(total) moves as a whole, all of it through top; W and M
    # are total times E_hat and d ell / d s.
    t = total[..., None, None]
    return out, (d_ell, jnp.zeros_like(total), t * d_e_hat, total * d_ell_s)
