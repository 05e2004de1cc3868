r"""The matrix-product method: :math:`\exp(sG)` by scaling, Taylor and squaring.

No eigensolver, factorisation, solve or host callback: the k x k Gram's
exponential comes from matrix products alone (``taylor.py``), which run near
peak on every accelerator. The kernel returns
:math:`\ell = \log\operatorname{tr}\exp(sG)` and
:math:`\hat E = \exp(sG)/e^\ell` without ever forming :math:`e^{\lambda}`, so
it is free of overflow; :math:`\partial\ell/\partial s = \langle G, \hat E\rangle`.

Exact bounds of a positive semi-definite :math:`G` are enforced, as the
eigenvalue clamp of the eigh method does: :math:`\ell \le \log k` (rounded
down) for :math:`s < 0` and :math:`\langle G, \hat E\rangle \ge 0`. (The
kernel itself keeps :math:`\log k + s\operatorname{tr}G/k \le \ell`.) They
repair values only; derivatives are those of the smooth function.

Derivatives: the kernel's squaring loop is a ``while_loop``, which reverse mode
cannot transpose. Along :math:`dG` the JVP rule runs the kernel's transposable
variant (the same arithmetic, a fixed-length ``scan`` of skipped steps) in the
direction :math:`s\,dG`, so that second derivatives work in forward and
reverse mode alike. Along :math:`ds` the direction :math:`G` commutes with
:math:`sG`, and the derivatives are closed-form, with no squarings to amplify
rounding: :math:`d\ell = M\,ds`, :math:`d\hat E = (G - M)\hat E\,ds` and
:math:`dM = \langle (G - M)^2, \hat E\rangle\,ds \ge 0`, with
:math:`M = \langle G, \hat E\rangle`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtrace._src import layouts, taylor
from jaxtrace._src.numerics import PRECISION, log_below, repaired


def _bounded(ell: jax.Array, g: jax.Array, s: jax.Array) -> jax.Array:
    # For s < 0 every eigenvalue of s G is <= 0, so ell <= log k.
    log_k = log_below(g.shape[-1], g.dtype)
    return repaired(ell, jnp.where(s < 0, jnp.minimum(ell, log_k), ell))


_kernel = layouts.per_device(taylor.log_trace_and_weights)
_value_kernel = layouts.per_device(taylor.log_trace)


def log_trace(g: jax.Array, s: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(ell, 1): ell = log tr exp(s G) by products alone (no E_hat: one product fewer)."""
    ell = _bounded(_value_kernel(s * g), g, s)
    return ell, jnp.ones_like(ell)


@jax.custom_jvp
def weights(g: jax.Array, s: jax.Array):
    """(ell, 1, E_hat, d ell / d s) of the k x k Gram ``g`` (..., k, k) at scale ``s``:
    top = ell and total = 1, so E_hat and d ell / d s need no unnormalising."""
    ell, e_hat = _kernel(s * g)
    moment = taylor.pair(g, e_hat)
    return _bounded(ell, g, s), jnp.ones_like(ell), e_hat, jnp.maximum(moment, 0)


def _weights_jvp(primals, tangents):
    g, s = primals
    dg, ds = tangents
    if _zero(dg):
        ell, e_hat = _kernel(s * g)
        dell, de_hat = jnp.zeros_like(ell), jnp.zeros_like(e_hat)
    else:
        # Along dg: the Frechet derivative, as the JVP of the kernel's transposable
        # variant at A = s G in the direction s dg.
        (ell, e_hat), (dell, de_hat) = jax.jvp(
            lambda a: taylor.log_trace_and_weights(a, transposable=True), (s * g,), (s * dg,)
        )
    ell = _bounded(ell, g, s)
    moment = taylor.pair(g, e_hat)
    moment = repaired(moment, jnp.maximum(moment, 0))
    if _zero(dg):
        dmoment = jnp.zeros_like(moment)
    else:
        dmoment = taylor.pair(dg, e_hat) + taylor.pair(g, de_hat)
    if not _zero(ds):
        # Along ds the direction G commutes with A, so the derivatives are closed-form
        # (no squarings to amplify rounding): d ell = M, d E_hat = (G - M) E_hat and
        # d M = <(G - M)^2, E_hat>, a variance, kept >= 0 as the exact value is.
        z = g - moment[..., None, None] * jnp.eye(g.shape[-1], dtype=g.dtype)
        ze = jnp.matmul(z, e_hat, precision=PRECISION)
        variance = taylor.pair(z, ze)
        variance = repaired(variance, jnp.maximum(variance, 0))
        dell = dell + ds * moment
        de_hat = de_hat + ds[..., None, None] * 0.5 * (ze + jnp.swapaxes(ze, -1, -2))
        dmoment = dmoment + ds * variance
    primal_out = (ell, jnp.ones_like(ell), e_hat, moment)
    return primal_out, (dell, jnp.zeros_like(ell), de_hat, dmoment)


def _zero(tangent) -> bool:
    """A tangent known to be zero at trace time (an input that is not differentiated)."""
    return isinstance(tangent, jax.custom_derivatives.SymbolicZero)


# Symbolic zeros: an HVP in x alone skips the scale's terms, one in the scale alone
# the Frechet derivative.
weights.defjvp(_weights_jvp, symbolic_zeros=True)
