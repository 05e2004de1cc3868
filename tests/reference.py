"""References independent of jaxtrace: mpmath at high precision, and the peer.

The mpmath reference exponentiates the full n x n matrix s X X^T with
``mpmath.expm`` (no eigendecomposition, no smaller-Gram identity), so it shares
nothing with the code under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import mpmath
import numpy as np

DPS = 60


def _mp_expm_gram(x: np.ndarray, scale: float):
    x = np.asarray(x, dtype=np.float64)
    xm = mpmath.matrix(x.tolist()) if x.size else mpmath.matrix(x.shape[0], x.shape[1])
    a = mpmath.mpf(scale) * (xm * xm.T)
    return xm, mpmath.expm(a)


def mp_trace_expm_gram(x: np.ndarray, scale: float = 1.0, *, log: bool = False):
    """(value, gradient) of tr(expm(s X X^T)) (or its log) as float64, via mpmath."""
    with mpmath.workdps(DPS):
        xm, e = _mp_expm_gram(x, scale)
        n, m = xm.rows, xm.cols
        tr = mpmath.fsum(e[i, i] for i in range(n))
        grad = 2 * mpmath.mpf(scale) * (e * xm)
        if log:
            grad = grad / tr
            tr = mpmath.log(tr)
        g = np.array([[float(grad[i, j]) for j in range(m)] for i in range(n)], dtype=np.float64)
        return float(tr), g.reshape(np.shape(x))


def mp_dscale(x: np.ndarray, scale: float = 1.0, *, log: bool = False) -> float:
    """d/ds tr(expm(s X X^T)) = tr(X X^T expm(s X X^T)) (or divided by the trace)."""
    with mpmath.workdps(DPS):
        xm, e = _mp_expm_gram(x, scale)
        g = xm * xm.T
        prod = g * e
        d = mpmath.fsum(prod[i, i] for i in range(xm.rows))
        if log:
            d = d / mpmath.fsum(e[i, i] for i in range(xm.rows))
        return float(d)


def sample(shape, seed=0, sigma=0.5) -> np.ndarray:
    """Entries ~ N(0, sigma^2), reproducible per shape: small, well-conditioned X."""
    rng = np.random.default_rng([seed, *shape])
    return sigma * rng.standard_normal(shape)


def orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """An n x k matrix with orthonormal columns."""
    q, _ = np.linalg.qr(rng.standard_normal((n, k)))
    return q


def with_singular_values(n: int, m: int, sv, seed: int = 1) -> np.ndarray:
    """U diag(sv) V^T with orthonormal U (n x r), V (m x r), r = len(sv): float64."""
    rng = np.random.default_rng(seed)
    r = len(sv)
    return orthonormal(rng, n, r) @ np.diag(np.asarray(sv, float)) @ orthonormal(rng, m, r).T


def peer(x: jax.Array, scale=1.0) -> jax.Array:
    """The route jaxtrace replaces: autodiff through jax.scipy.linalg.expm."""
    return jnp.trace(jax.scipy.linalg.expm(scale * (x @ x.T)))


def log_peer(x: jax.Array, scale=1.0) -> jax.Array:
    return jnp.log(peer(x, scale))


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = max(np.max(np.abs(b)) if b.size else 0.0, np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b)) / denom) if a.size else 0.0
