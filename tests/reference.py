"""References independent of jaxtrace: mpmath at high precision, and the peer.

The mpmath reference exponentiates the full n x n matrix s X X^T with
``mpmath.expm`` (no eigendecomposition, no smaller-Gram identity), and for
``trace_expm`` the square matrix A itself, so it shares nothing with the code
under test.
"""

from __future__ import annotations

import math

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


def assert_close(actual, desired, *, rtol, atol=0.0, what: str = "") -> None:
    """Entry by entry, |actual - desired| <= atol + rtol |desired| (np.testing.assert_allclose).

    ``atol`` may be an array that broadcasts against ``desired``: a floor per
    entry. Shapes must match exactly; non-finite entries must be equal.
    """
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(desired, dtype=np.float64)
    assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
    bound = np.broadcast_to(np.asarray(atol, dtype=np.float64) + rtol * np.abs(b), b.shape)
    with np.errstate(invalid="ignore"):
        err = np.abs(a - b)
        ok = (a == b) | (err <= bound)
    if ok.all():
        return
    bad = np.flatnonzero(~ok)
    with np.errstate(divide="ignore", invalid="ignore"):
        excess = np.where(bound > 0, err / bound, np.inf).ravel()
    worst = bad[np.argsort(-np.nan_to_num(excess[bad], nan=np.inf))][:5]
    lines = [
        f"  {np.unravel_index(i, b.shape)}: got {a.flat[i]:.17g}, want {b.flat[i]:.17g}, "
        f"|diff| {err.flat[i]:.3e} > {bound.flat[i]:.3e}"
        for i in worst
    ]
    raise AssertionError(
        f"{what}: {bad.size} of {b.size} entries differ by more than "
        f"atol + {rtol:.1e} |want|:\n" + "\n".join(lines)
    )


def gram_eigenvalues(x) -> np.ndarray:
    """Eigenvalues (..., k) of the smaller Gram of x, in float64: for sizes, not references."""
    x = np.asarray(x, dtype=np.float64)
    wide = x.shape[-2] < x.shape[-1]
    xt = np.swapaxes(x, -1, -2)
    return np.linalg.eigvalsh(x @ xt if wide else xt @ x)


# Natural sizes. The gradient is 2s X W (tall; 2s W X wide), W = expm(s G) on
# the smaller Gram G, or W / tr expm(s X X^T) (softmax weights w_i) for the
# log. Each function bounds the entries of a derivative by Cauchy-Schwarz,
# with x_i row i of a tall X (column j of a wide one); rounding X, G, eigh
# and the products perturbs an entry by a few eps times its bound (times
# expm_condition where eigenvalue errors move W).


def _spectral(lam: np.ndarray, zeros: int, log: bool) -> tuple[np.ndarray, np.ndarray]:
    """(weights (..., k), value (...)) from the eigenvalues lam = s mu of s G.

    Weights of W in its eigenbasis: e^(s mu_i), or e^(s mu_i - L) for the log;
    the value is tr exp(s X X^T), or L = its log. The ``zeros`` = max(n - m, 0)
    zero eigenvalues of X X^T count in both.
    """
    if not log:
        w = np.exp(lam)
        return w, w.sum(axis=-1) + zeros
    top = lam.max(axis=-1, keepdims=True)
    if zeros:
        top = np.maximum(top, 0.0)
    e = np.exp(lam - top)
    total = e.sum(axis=-1, keepdims=True)
    if zeros:  # (not 0 * exp(-top): inf for large negative scales)
        total = total + zeros * np.exp(-top)
    return e / total, (top + np.log(total))[..., 0]


def _weights(x: np.ndarray, scale, log: bool) -> np.ndarray:
    """(..., k) weights of W in its eigenbasis: e^(s mu_i), or e^(s mu_i - L) for the log."""
    n, m = x.shape[-2:]
    return _spectral(scale * gram_eigenvalues(x), max(n - m, 0), log)[0]


def eigh_reference(x, scale: float, *, log: bool = False):
    """(value (...), gradient (..., n, m), d value / d scale (...)) in float64 from NumPy's eigh.

    Independent of jaxtrace and cheaper than mpmath, for inputs whose Gram is
    well conditioned: W = V diag(w) V^T, the gradient 2s X W (tall; 2s W X
    wide) and d/ds = sum_i mu_i w_i.
    """
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape[-2:]
    wide = n < m
    xt = np.swapaxes(x, -1, -2)
    mu, v = np.linalg.eigh(x @ xt if wide else xt @ x)
    w, value = _spectral(scale * mu, max(n - m, 0), log)
    weights = (v * w[..., None, :]) @ np.swapaxes(v, -1, -2)
    grad = 2 * scale * (weights @ x if wide else x @ weights)
    return value, grad, np.sum(mu * w, axis=-1)


def _line_norms(x: np.ndarray) -> np.ndarray:
    """|x_i|: rows of a tall x (columns of a wide one), shaped (..., n, 1) or (..., 1, m)."""
    axis = -2 if x.shape[-2] < x.shape[-1] else -1
    # Scaled, so that squares of tiny entries do not underflow to a zero norm.
    top = np.max(np.abs(x), axis=axis, keepdims=True, initial=0.0)
    safe = np.where(top > 0, top, 1.0)
    return top * np.sqrt(np.sum((x / safe) ** 2, axis=axis, keepdims=True))


def grad_scale(x, scale, *, log: bool = False) -> np.ndarray:
    """The natural size of each gradient entry, shaped like x: |2s (X W)_ij| <= 2|s| |x_i| |W|."""
    x = np.asarray(x, dtype=np.float64)
    w_norm = _weights(x, scale, log).max(axis=-1)[..., None, None]
    return 2 * abs(scale) * w_norm * np.broadcast_to(_line_norms(x), x.shape)


def _dw_ds_norm(x: np.ndarray, scale, log: bool) -> np.ndarray:
    """|dW/ds|: |G W| <= mu_max |W| for the trace; for the log the weights move by
    w_i (mu_i - sum_j w_j mu_j), at most mu_max w_i (1 - w_i)."""
    mu_max = gram_eigenvalues(x).max(axis=-1)
    w = _weights(x, scale, log)
    spread = (w * (1 - w)).max(axis=-1) if log else w.max(axis=-1)
    return mu_max * spread


def mixed_scale(x, scale, *, log: bool = False) -> np.ndarray:
    """The natural size of each entry of d/ds grad_x = 2 X W + 2s X dW/ds, shaped like x."""
    x = np.asarray(x, dtype=np.float64)
    w_norm = _weights(x, scale, log).max(axis=-1)
    size = w_norm + abs(scale) * _dw_ds_norm(x, scale, log)
    return 2 * size[..., None, None] * np.broadcast_to(_line_norms(x), x.shape)


def _dw_norm(x: np.ndarray, scale, log: bool) -> float:
    """A bound on |dW| per unit |d(s G)|, for one matrix.

    The trace: the Frechet derivative of exp at a symmetric matrix is at most
    |W|. The log (Daleckii-Krein, with the shift dL): off-diagonal weights
    (w_i - w_j) / (lam_i - lam_j), at most sqrt(2) of their max in norm for a
    rank-2 direction, and diagonal ones w_i (dA_ii - sum_j w_j dA_jj), at most
    2 w_i (1 - w_i) |dA|: small where the top eigenvalue stands alone.
    """
    w = _weights(x, scale, log)
    if not log:
        return float(w.max())
    lam = scale * gram_eigenvalues(x)
    gap = np.abs(lam[:, None] - lam[None, :])
    with np.errstate(divide="ignore", invalid="ignore"):
        dd = np.where(gap > 0, np.abs(w[:, None] - w[None, :]) / gap, np.maximum.outer(w, w))
    np.fill_diagonal(dd, 0.0)
    return float(np.sqrt(2) * dd.max(initial=0.0) + 2 * (w * (1 - w)).max())


def hessian_scale(x, scale, *, log: bool = False) -> np.ndarray:
    """The natural size of each entry of d2f/dx2 of one n x m matrix, shaped (n, m, n, m).

    Along E = e_k e_l^T (tall) the Hessian is 2s (E W + X dW) with |(E W)_ij|
    <= [i = k] |W| and d(s G) = s (E^T X + X^T E) of norm <= 2 |s| |x_k|, so
    |(X dW)_ij| <= 2 |s| |x_i| |x_k| _dw_norm. A wide x: columns for rows.
    """
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    w_norm = float(_weights(x, scale, log).max(initial=0.0))
    cross = 2 * abs(scale) * _dw_norm(x, scale, log)
    r = _line_norms(x).ravel()
    block = w_norm * np.eye(r.size) + cross * np.outer(r, r)
    if n < m:  # indexed (j, l)
        size = np.broadcast_to(block[None, :, None, :], (n, m, n, m))
    else:  # indexed (i, k)
        size = np.broadcast_to(block[:, None, :, None], (n, m, n, m))
    return 2 * abs(scale) * size


def expm_condition(x, scale) -> np.ndarray:
    """1 + |s| mu_max per matrix: G is known to eps |G|, so the exponents s mu to eps |s| mu_max."""
    return 1 + abs(scale) * gram_eigenvalues(x).max(axis=-1, initial=0.0)


def rel_err(a, b) -> float:
    """max|a - b| / max|b|: a scalar figure for reports, not for assertions."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    denom = max(np.max(np.abs(b)) if b.size else 0.0, np.finfo(np.float64).tiny)
    return float(np.max(np.abs(a - b)) / denom) if a.size else 0.0


# tr exp(A) of square A (trace_expm, log_trace_expm): mpmath's expm of A itself.


def square_cases() -> dict[str, np.ndarray]:
    """Square matrices for trace_expm: non-symmetric, nilpotent, defective (a Jordan
    block), non-negative, symmetric indefinite and of large norm."""
    rng = np.random.default_rng(13)
    w = rng.standard_normal((8, 8)) * (rng.random((8, 8)) < 0.3)
    return {
        "nonsymmetric": rng.standard_normal((5, 5)),
        "nilpotent": np.triu(rng.standard_normal((6, 6)), 1) * 3,
        "jordan": 2 * np.eye(5) + np.eye(5, k=1),
        "nonnegative": w * w,  # NOTEARS' W o W
        "symmetric_indefinite": (lambda s: 2 * (s + s.T))(rng.standard_normal((6, 6))),
        "large_norm": rng.standard_normal((6, 6)) * 12,
    }


def mp_expm(a: np.ndarray) -> np.ndarray:
    """expm(A) at 50 digits, as an object array of mpf."""
    with mpmath.workdps(50):
        e = mpmath.expm(mpmath.matrix(np.asarray(a, np.float64).tolist()))
        return np.array(e.tolist(), dtype=object)


def mp_trace_expm(a: np.ndarray, log: bool) -> tuple[float, np.ndarray]:
    """(value, gradient) in float64: tr e^A and e^(A^T), or their log forms."""
    with mpmath.workdps(50):
        e = mp_expm(a)
        tr = sum(e[i, i] for i in range(a.shape[0]))
        grad = np.array(e.T.tolist(), dtype=object)
        if log:
            value, grad = mpmath.log(tr), grad / tr
        else:
            value = tr
        return float(value), grad.astype(np.float64)


def square_tolerance(a: np.ndarray, dtype, log: bool) -> float:
    """The issue's figure (1e-12 in float64, 2e-5 in float32), or the conditioning where worse.

    The relative condition number of tr e^A under a relative perturbation of A
    is at most ||A||_F ||e^A||_F / |tr e^A| (the gradient is e^(A^T)); the
    squarings amplify the rounding of the polynomial by 2^q ~ ||A|| as well.
    In float32 that is stated as 8 u times it.
    """
    base = 1e-12 if np.dtype(dtype) == np.float64 else 2e-5
    e = mp_expm(a).astype(np.float64)
    cond = np.linalg.norm(a) * np.linalg.norm(e) / abs(np.trace(e))
    if log:
        cond /= max(1.0, abs(math.log(abs(np.trace(e)))))
    return max(base, 8 * float(np.finfo(dtype).eps) / 2 * cond)
