r"""Spectral formulas on the eigendecomposition of the smaller Gram matrix.

With :math:`G = V \operatorname{diag}(\mu) V^\top` the k x k Gram matrix of
``x`` and :math:`\lambda = s\mu`, every quantity of the family is a function of
one eigendecomposition. The eigenvalues are clamped at zero: a Gram matrix is
positive semi-definite, and rounding must not turn that around. The quantities:

* the value, :math:`\sum_i e^{\lambda_i} + p` or its logarithm, where
  :math:`p = \max(n - m, 0)` counts the zero eigenvalues of :math:`XX^\top`
  missing from :math:`G`;
* the weights :math:`w_i = e^{\lambda_i}` for the trace, and the softmax
  weights :math:`w_i = e^{\lambda_i - L}` (:math:`L` the log-trace) for its
  logarithm, formed from exponents :math:`d_i = \lambda_i - \lambda_{top}
  \le 0` so they never overflow, and :math:`W = V \operatorname{diag}(w) V^\top`;
* the gradients :math:`2s\,XW` (tall) or :math:`2s\,WX` (wide) and
  :math:`\sum_i \mu_i w_i` for the scale.

:func:`value_and_grads` carries its own JVP rule, built on the
Daleckii--Krein formula, so that second derivatives never differentiate
``eigh``'s eigenvectors (whose derivative divides by :math:`\lambda_i -
\lambda_j` and is NaN at repeated eigenvalues).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxtrace._src.gram import apply, congruence, cross, gram, is_wide, rotate, similarity


def zero_eigenvalue_count(x: jax.Array):
    """max(n - m, 0): the zero eigenvalues of the n x n Gram absent from the k x k one.

    An int, or a symbolic dimension under ``jax.export`` shape polymorphism.
    """
    return 0 if is_wide(x) else x.shape[-2] - x.shape[-1]


def _has_zeros(n_zero) -> bool:
    """False only where no zero eigenvalue is known statically to be missing."""
    return not (isinstance(n_zero, int) and n_zero == 0)


def _eigh(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The Gram is symmetric by construction and LAPACK/cuSOLVER read one
    # triangle, so neither symmetrisation nor sorting is worth paying for.
    v, mu = lax.linalg.eigh(g, symmetrize_input=False, sort_eigenvalues=False)
    # A Gram matrix is positive semi-definite; rounding can leave eigenvalues of
    # size eps * |G| below zero, which a large negative scale would turn into
    # huge positive exponents. (maximum keeps NaN.)
    return jnp.maximum(mu, 0), v


def gram_eigenvalues(x: jax.Array) -> jax.Array:
    """Eigenvalues (..., k) of the smaller Gram matrix of ``x``."""
    mu, _ = _eigh(gram(x, is_wide(x)))
    return mu


def _exp(a: jax.Array) -> jax.Array:
    # XLA:CPU's float32 exp can turn a NaN that stems from a constant (eigh's
    # failure value) into a finite number (jax-ml/jax#29537); keep NaN as NaN.
    return jnp.where(jnp.isnan(a), a, jnp.exp(a))


def _log_terms(mu: jax.Array, s: jax.Array, n_zero) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(d, top, total) with s mu = d + top, d <= 0 and log tr exp(s G) = top + log(total).

    ``total`` = sum(exp(d)) + n_zero exp(-top) never overflows. The exponents
    are formed as s (mu - mu_top), never as s mu - top: a compiler may contract
    the latter into a fused multiply-add that keeps the rounding of s mu, an
    error of eps |s mu| in the exponent (inf in float32 once |s mu| > 1e9).
    """
    mu_top = jnp.where(s >= 0, jnp.max(mu, axis=-1), jnp.min(mu, axis=-1))
    top = s * mu_top
    d = s * (mu - mu_top[..., None])
    if not _has_zeros(n_zero):
        return d, top, jnp.sum(_exp(d), axis=-1)
    # The n_zero eigenvalues 0 of X X^T join the sum: shift by max(top, 0) instead.
    count = jnp.asarray(n_zero, mu.dtype)
    shifted = jnp.where(count > 0, jnp.maximum(top, 0), top)
    d = d + (top - shifted)[..., None]
    return d, shifted, jnp.sum(_exp(d), axis=-1) + count * _exp(-shifted)


def value_from_eigenvalues(mu: jax.Array, s: jax.Array, n_zero, log: bool) -> jax.Array:
    """tr(expm(s X X^T)) (or its log) from the Gram eigenvalues ``mu``."""
    if log:
        _, top, total = _log_terms(mu, s, n_zero)
        return top + jnp.log(total)
    total = jnp.sum(_exp(s * mu), axis=-1)
    return total + jnp.asarray(n_zero, mu.dtype) if _has_zeros(n_zero) else total


class _Spectrum(NamedTuple):
    mu: jax.Array  # (..., k) eigenvalues of the Gram
    v: jax.Array  # (..., k, k) its eigenvectors
    d: jax.Array  # (..., k) s * mu, less the log variant's top exponent
    norm: jax.Array  # (...,) 1 for the trace, the log variant's total
    w: jax.Array  # (..., k) exp(d) / norm: e^{s mu}, or softmax weights e^{s mu - L}
    w_zero: jax.Array  # (...,) the log variant's weight of the n - m zero eigenvalues, 1 - sum(w)
    wmat: jax.Array  # (..., k, k) V diag(w) V^T = expm(s G) / tr expm(s X X^T) for the log
    value: jax.Array  # (...,)


def _spectrum(x: jax.Array, s: jax.Array, log: bool) -> _Spectrum:
    wide = is_wide(x)
    mu, v = _eigh(gram(x, wide))
    n_zero = zero_eigenvalue_count(x)
    if log:
        # Weights from d and total alone, which sum to one exactly as computed:
        # derivatives through the scale lose all accuracy in clustered spectra
        # otherwise.
        d, top, norm = _log_terms(mu, s, n_zero)
        value = top + jnp.log(norm)
        w = _exp(d) / norm[..., None]
        w_zero = jnp.zeros_like(value)
        if _has_zeros(n_zero):
            w_zero = jnp.asarray(n_zero, mu.dtype) * _exp(-top) / norm
    else:
        d = s * mu
        w = _exp(d)
        norm = jnp.ones(mu.shape[:-1], mu.dtype)
        value = jnp.sum(w, axis=-1)
        w_zero = jnp.zeros_like(value)
        if _has_zeros(n_zero):
            value = value + jnp.asarray(n_zero, mu.dtype)
    return _Spectrum(mu, v, d, norm, w, w_zero, congruence(v, w), value)


def _outputs(x: jax.Array, sp: _Spectrum, s: jax.Array):
    # 2s goes into the k x k weights: the n x m gradient is one product, no extra pass.
    grad_x = apply(x, 2 * s * sp.wmat, is_wide(x))
    return sp.value, grad_x, jnp.sum(sp.mu * sp.w, axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def value_and_grads(x: jax.Array, s: jax.Array, log: bool):
    """(value, d value / d x, d value / d s) from one eigendecomposition."""
    return _outputs(x, _spectrum(x, s, log), s)


def _exp_divided_differences(d: jax.Array) -> jax.Array:
    r"""Phi_ij = (e^{d_i} - e^{d_j}) / (d_i - d_j), Phi_ii = e^{d_i}.

    Written as :math:`e^{\max(d_i, d_j)}\,(1 - e^{-g})/g` with
    :math:`g = |d_i - d_j|`: both factors are bounded and ``expm1``
    keeps close eigenvalues free of cancellation and of 0/0.
    """
    di, dj = d[..., :, None], d[..., None, :]
    gap = jnp.abs(di - dj)
    positive = gap > 0
    safe_gap = jnp.where(positive, gap, 1)
    ratio = jnp.where(positive, -jnp.expm1(-safe_gap) / safe_gap, 1)
    return _exp(jnp.maximum(di, dj)) * ratio


@value_and_grads.defjvp
def _value_and_grads_jvp(log, primals, tangents):
    x, s = primals
    dx, ds = tangents
    wide = is_wide(x)
    sp = _spectrum(x, s, log)

    # d(s G) in the eigenbasis: s V^T (dX^T X + X^T dX) V + ds diag(mu).
    c = cross(dx, x, wide)
    d_gram = rotate(sp.v, c + jnp.swapaxes(c, -1, -2))
    d_gram_diag = jnp.diagonal(d_gram, axis1=-2, axis2=-1)
    k = sp.mu.shape[-1]
    d_lam = s * d_gram + ds * (jnp.eye(k, dtype=sp.mu.dtype) * sp.mu[..., None, :])
    d_lam_diag = s * d_gram_diag + ds * sp.mu

    d_value = jnp.sum(sp.w * d_lam_diag, axis=-1)
    # The log variant's weights move by w_i (d lam_i - dL) with dL = sum_j w_j d lam_j.
    # Written as w_i (sum_j w_j (d lam_i - d lam_j) + w_zero d lam_i): when one
    # weight is close to 1 the plain difference cancels, leaving eps * lam_max.
    if log:
        gaps = d_lam_diag[..., :, None] - d_lam_diag[..., None, :]
        centred = jnp.sum(gaps * sp.w[..., None, :], axis=-1) + sp.w_zero[..., None] * d_lam_diag
    else:
        centred = d_lam_diag

    # Daleckii-Krein: d expm(A)[E] = V (Phi o (V^T E V)) V^T, with the diagonal
    # (where the log-trace's own change enters) set in the eigenbasis.
    phi = _exp_divided_differences(sp.d) / sp.norm[..., None, None]
    eye = jnp.eye(k, dtype=sp.mu.dtype)
    d_wmat = similarity(sp.v, phi * d_lam * (1 - eye) + eye * (sp.w * centred)[..., None, :])
    # d(2s X W) = X (2 ds W + 2s dW) + dX (2s W), each a product with a k x k matrix.
    d_grad_x = apply(x, 2 * ds * sp.wmat + 2 * s * d_wmat, wide, tangent=True) + apply(
        dx, 2 * s * sp.wmat, wide, tangent=True
    )
    d_grad_s = jnp.sum(sp.w * d_gram_diag + sp.mu * sp.w * centred, axis=-1)

    return _outputs(x, sp, s), (d_value, d_grad_x, d_grad_s)
