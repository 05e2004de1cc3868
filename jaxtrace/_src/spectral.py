r"""Spectral formulas on the eigendecomposition of the smaller Gram matrix.

With :math:`G = V \operatorname{diag}(\mu) V^\top` the k x k Gram matrix of
``x`` and :math:`\lambda = s\mu`, every quantity of the family is a function of
one eigendecomposition:

* the value, :math:`\sum_i e^{\lambda_i} + p` or its logarithm, where
  :math:`p = \max(n - m, 0)` counts the zero eigenvalues of :math:`XX^\top`
  missing from :math:`G`;
* the weights :math:`w_i = e^{\lambda_i - \ell}` (:math:`\ell = 0` for the
  trace, :math:`\ell` = the log-trace for its logarithm, so they never
  overflow there) and :math:`W = V \operatorname{diag}(w) V^\top`;
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


def zero_eigenvalue_count(x: jax.Array) -> int:
    """max(n - m, 0): the zero eigenvalues of the n x n Gram absent from the k x k one."""
    return max(x.shape[-2] - x.shape[-1], 0)


def _eigh(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The Gram is symmetric by construction and LAPACK/cuSOLVER read one
    # triangle, so neither symmetrisation nor sorting is worth paying for.
    v, mu = lax.linalg.eigh(g, symmetrize_input=False, sort_eigenvalues=False)
    return mu, v


def gram_eigenvalues(x: jax.Array) -> jax.Array:
    """Eigenvalues (..., k) of the smaller Gram matrix of ``x``."""
    mu, _ = _eigh(gram(x, is_wide(x)))
    return mu


def _exp(a: jax.Array) -> jax.Array:
    # XLA:CPU's float32 exp can turn a NaN that stems from a constant (eigh's
    # failure value) into a finite number (jax-ml/jax#29537); keep NaN as NaN.
    return jnp.where(jnp.isnan(a), a, jnp.exp(a))


def _log_sum_exp(lam: jax.Array, n_zero: int) -> jax.Array:
    """log(sum(exp(lam)) + n_zero) without overflow; n_zero is static."""
    top = jnp.max(lam, axis=-1)
    if n_zero:
        top = jnp.maximum(top, 0)
    total = jnp.sum(_exp(lam - top[..., None]), axis=-1)
    if n_zero:
        total = total + n_zero * _exp(-top)
    return top + jnp.log(total)


def value_from_eigenvalues(mu: jax.Array, s: jax.Array, n_zero: int, log: bool) -> jax.Array:
    """tr(expm(s X X^T)) (or its log) from the Gram eigenvalues ``mu``."""
    lam = s * mu
    if log:
        return _log_sum_exp(lam, n_zero)
    return jnp.sum(_exp(lam), axis=-1) + n_zero


class _Spectrum(NamedTuple):
    mu: jax.Array  # (..., k) eigenvalues of the Gram
    v: jax.Array  # (..., k, k) its eigenvectors
    lam: jax.Array  # (..., k) s * mu
    shift: jax.Array  # (...,) 0 for the trace, the log-trace for the log
    norm: jax.Array  # (...,) 1 for the trace, sum of exp(eigenvalues - shift) for the log
    w: jax.Array  # (..., k) exp(lam - shift) / norm
    wmat: jax.Array  # (..., k, k) V diag(w) V^T = expm(s G) / (exp(shift) norm)
    xw: jax.Array  # (..., n, m) x W (tall) or W x (wide)
    value: jax.Array  # (...,)


def _spectrum(x: jax.Array, s: jax.Array, log: bool) -> _Spectrum:
    wide = is_wide(x)
    mu, v = _eigh(gram(x, wide))
    lam = s * mu
    n_zero = zero_eigenvalue_count(x)
    value = value_from_eigenvalues(mu, s, n_zero, log)
    if log:
        shift = value
        w = _exp(lam - shift[..., None])
        # The rounded log-trace leaves sum(w) = 1 + O(eps * max|lam|); dividing
        # by the sum restores softmax weights that sum to one, without which
        # derivatives through the scale lose all accuracy in clustered spectra.
        norm = jnp.sum(w, axis=-1)
        if n_zero:
            norm = norm + n_zero * _exp(-shift)
        w = w / norm[..., None]
    else:
        shift = jnp.zeros_like(value)
        norm = jnp.ones_like(value)
        w = _exp(lam)
    wmat = congruence(v, w)
    return _Spectrum(mu, v, lam, shift, norm, w, wmat, apply(x, wmat, wide), value)


def _outputs(sp: _Spectrum, s: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return sp.value, 2 * s * sp.xw, jnp.sum(sp.mu * sp.w, axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def value_and_grads(x: jax.Array, s: jax.Array, log: bool):
    """(value, d value / d x, d value / d s) from one eigendecomposition."""
    return _outputs(_spectrum(x, s, log), s)


def _exp_divided_differences(lam: jax.Array, shift: jax.Array) -> jax.Array:
    r"""Phi_ij = (e^{lam_i} - e^{lam_j}) / (lam_i - lam_j) / e^{shift}, Phi_ii = e^{lam_i - shift}.

    Written as :math:`e^{\max(\lambda_i,\lambda_j) - \ell}\,(1 - e^{-d})/d` with
    :math:`d = |\lambda_i - \lambda_j|`: both factors are bounded and ``expm1``
    keeps close eigenvalues free of cancellation and of 0/0.
    """
    li, lj = lam[..., :, None], lam[..., None, :]
    gap = jnp.abs(li - lj)
    positive = gap > 0
    safe_gap = jnp.where(positive, gap, 1)
    ratio = jnp.where(positive, -jnp.expm1(-safe_gap) / safe_gap, 1)
    return _exp(jnp.maximum(li, lj) - shift[..., None, None]) * ratio


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
    d_shift = d_value if log else jnp.zeros_like(d_value)

    # Daleckii-Krein: d expm(A)[E] = V (Phi o (V^T E V)) V^T.
    phi = _exp_divided_differences(sp.lam, sp.shift) / sp.norm[..., None, None]
    d_wmat = similarity(sp.v, phi * d_lam) - d_shift[..., None, None] * sp.wmat
    d_grad_x = 2 * ds * sp.xw + 2 * s * (
        apply(dx, sp.wmat, wide, tangent=True) + apply(x, d_wmat, wide, tangent=True)
    )
    d_grad_s = jnp.sum(
        sp.w * d_gram_diag + sp.mu * sp.w * (d_lam_diag - d_shift[..., None]), axis=-1
    )

    return _outputs(sp, s), (d_value, d_grad_x, d_grad_s)
