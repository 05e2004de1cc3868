r"""Tests of the matrix-products-only exp kernel, :mod:`jaxtrace._src.taylor`.

The reference is ``mpmath.expm`` of the full k x k matrix at 50 digits (no
eigendecomposition, nothing shared with the code under test), evaluated on the
matrix exactly as rounded to the dtype under test.

Tolerances, from the error budget of the algorithm (u = eps/2 the unit
roundoff, rho = rho(A), q the squarings the kernel chose, B = A - cI):

* the shift rounds B's diagonal by at most u(|a_ii| + |c|) <= 2u rho, which moves
  ell by at most as much (d ell = tr(e_hat dB), e_hat has trace 1);
* the Taylor truncation is at most u relative to e^y at the dominant
  eigenvalues (theta_m is chosen so), and the polynomial and each of the q
  squarings (product, trace, division) add relative errors of a few u to the
  dominant eigenvalues; those of stage j are amplified 2^(q-j) by the squarings
  that follow. With a per-stage constant of 2u that is at most
  u 2^q (1 + 2 (1 + 1/2 + 1/4 + ...)) = 5 u 2^q;
* the result itself is rounded: u |ell|.

So ``|ell - ell_ref| <= u (2 rho + |ell| + 5 2^q)`` (2^q < 2 eta/theta, eta <=
k^(1/(2s)) rho(B) with s = 3 or 4, so this is O(u rho)). For e_hat, the derivative of
exp(B)/tr exp(B) at symmetric B in a direction dB is L/tau - e_hat tr(L)/tau
with L = int_0^1 e^(sB) dB e^((1-s)B) ds, tau = tr e^B, hence at most
2 ||e_hat||_2 ||dB||_2 in norm: the same budget moves the entries of e_hat by at
most 2 ||e_hat||_2 times it, plus their own rounding u max|e_hat|. (Measured
errors stay below 0.6 of these tolerances.)
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from jax import export

from jaxtrace._src.taylor import _THETA, _squarings, log_trace, log_trace_and_weights

DPS = 50
K = 6
DTYPES = [np.float32, np.float64]
RADII = {np.float32: [1e-3, 1.0, 30.0, 1e3, 3e4], np.float64: [1e-3, 1.0, 30.0, 1e3, 1e5]}


# --- mpmath references ----------------------------------------------------------------------


def _mp(a: np.ndarray) -> mpmath.matrix:
    return mpmath.matrix(np.asarray(a, np.float64).tolist())


def _np(m: mpmath.matrix, rows: range, cols: range) -> np.ndarray:
    return np.array([[float(m[i, j]) for j in cols] for i in rows])


def mp_log_trace_and_weights(a: np.ndarray) -> tuple[float, np.ndarray]:
    """(log tr exp(a), exp(a)/tr exp(a)) as float64, by mpmath.expm at DPS digits."""
    k = a.shape[-1]
    with mpmath.workdps(DPS):
        e = mpmath.expm(_mp(a))
        tr = mpmath.fsum(e[i, i] for i in range(k))
        return float(mpmath.log(tr)), _np(e / tr, range(k), range(k))


def mp_directional(a: np.ndarray, v: np.ndarray) -> tuple[float, float, np.ndarray, np.ndarray]:
    """First and second derivatives of (ell, e_hat) at a in the direction v.

    exp of the block Toeplitz matrix [[a, v, 0], [0, a, v], [0, 0, a]] has the
    Taylor coefficients of exp(a + t v) in its first block row: exp(a), L1, L2
    with exp(a + t v) = exp(a) + t L1 + t^2 L2 + O(t^3).
    """
    k = a.shape[-1]
    with mpmath.workdps(DPS):
        big = mpmath.zeros(3 * k, 3 * k)
        am, vm = _mp(a), _mp(v)
        for i in range(k):
            for j in range(k):
                for b in range(3):
                    big[b * k + i, b * k + j] = am[i, j]
                for b in range(2):
                    big[b * k + i, (b + 1) * k + j] = vm[i, j]
        ex = mpmath.expm(big)
        e, l1, l2 = (ex[0:k, b * k : (b + 1) * k] for b in range(3))
        t, t1, t2 = (mpmath.fsum(m[i, i] for i in range(k)) for m in (e, l1, l2))
        d1 = t1 / t
        d2 = 2 * t2 / t - d1**2
        de = l1 / t - e * (t1 / t**2)
        d2e = 2 * l2 / t - l1 * (2 * t1 / t**2) - e * (2 * t2 / t**2) + e * (2 * t1**2 / t**3)
        rk = range(k)
        return float(d1), float(d2), _np(de, rk, rk), _np(d2e, rk, rk)


# --- test matrices ------------------------------------------------------------------------


def _scaled(a: np.ndarray, radius: float) -> np.ndarray:
    return a * (radius / np.max(np.abs(np.linalg.eigvalsh(a))))


def _matrix(kind: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "indefinite":
        x = rng.standard_normal((K, K))
        return _scaled(x + x.T, radius)
    if kind == "gram":  # PSD, rank 3
        x = rng.standard_normal((3, K))
        return _scaled(x.T @ x, radius)
    if kind == "negative_definite":
        x = rng.standard_normal((K, K))
        return _scaled(-(x.T @ x + 0.1 * np.eye(K)), radius)
    if kind == "repeated":  # eigenvalues (1, 1, 1, -1/2, -1/2, 0) radius
        q, _ = np.linalg.qr(rng.standard_normal((K, K)))
        return (q * (radius * np.array([1.0, 1.0, 1.0, -0.5, -0.5, 0.0]))) @ q.T
    if kind == "projector":  # X^T X with orthonormal rows X: eigenvalues (1, 1, 1, 0, 0, 0)
        q, _ = np.linalg.qr(rng.standard_normal((K, 3)))
        return -radius * (q @ q.T)
    raise ValueError(kind)


KINDS = ["indefinite", "gram", "negative_definite", "repeated", "projector"]


def _in_dtype(a: np.ndarray, dtype) -> np.ndarray:
    a = np.asarray(a, dtype)
    return (a + a.T) / 2  # exactly symmetric in dtype


def _spectral_radius(a: np.ndarray) -> float:
    return float(np.max(np.abs(np.linalg.eigvalsh(np.asarray(a, np.float64)))))


def _ell_tolerance(a: np.ndarray, ell_ref: float, dtype) -> float:
    """u (2 rho + |ell| + 5 2^q): the error budget of the module docstring."""
    u = float(np.finfo(dtype).eps) / 2
    q = int(_jit_squarings(jnp.asarray(a)))
    return u * (2 * _spectral_radius(a) + abs(ell_ref) + 5 * 2.0**q)


def _check_against_mpmath(a: np.ndarray, dtype, ell, e_hat) -> None:
    ell_ref, e_ref = mp_log_trace_and_weights(a)
    tol = _ell_tolerance(a, ell_ref, dtype)
    u = float(np.finfo(dtype).eps) / 2
    np.testing.assert_allclose(float(ell), ell_ref, rtol=0, atol=tol)
    e_hat = np.asarray(e_hat, np.float64)
    e_tol = 2 * tol * np.linalg.norm(e_ref, 2) + u * np.max(np.abs(e_ref))
    np.testing.assert_allclose(e_hat, e_ref, rtol=0, atol=e_tol)
    np.testing.assert_array_equal(e_hat, e_hat.T)
    assert abs(np.trace(e_hat) - 1) <= K * 2 * u


_jit_f = jax.jit(log_trace_and_weights)
_jit_squarings = jax.jit(_squarings)


# --- accuracy -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_matches_mpmath(dtype, kind):
    rng = np.random.default_rng(KINDS.index(kind))
    with jax.enable_x64(dtype == np.float64):
        for radius in RADII[dtype]:
            a = _in_dtype(_matrix(kind, radius, rng), dtype)
            ell, e_hat = _jit_f(jnp.asarray(a))
            assert ell.dtype == dtype and e_hat.dtype == dtype
            _check_against_mpmath(a, dtype, ell, e_hat)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_dominant_eigenvalue_at_theta(dtype):
    # The truncation's worst case: Y's dominant eigenvalue just below theta_m.
    # Eigenvalues (r, -r/5, ..., -r/5) make tr = 0 and the bound eta within
    # 2e-6 of r, so r = 0.999 theta 2^q gets exactly q squarings; the Taylor
    # error at the top is then ~u, 2^q u in ell. (One degree less would be
    # (m + 1)/theta ~ 10-20 times that, outside the budget.)
    rng = np.random.default_rng(21)
    theta = _THETA[np.dtype(dtype)]
    with jax.enable_x64(dtype == np.float64):
        for q in (0, 4, 12):
            r = 0.999 * theta * 2.0**q
            basis, _ = np.linalg.qr(rng.standard_normal((K, K)))
            lam = np.array([r] + [-r / (K - 1)] * (K - 1))
            a = _in_dtype((basis * lam) @ basis.T, dtype)
            assert int(_jit_squarings(jnp.asarray(a))) == q
            ell, e_hat = _jit_f(jnp.asarray(a))
            _check_against_mpmath(a, dtype, ell, e_hat)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_zero_and_multiples_of_identity(dtype):
    with jax.enable_x64(dtype == np.float64):
        for k in (1, K):
            ell, e_hat = _jit_f(jnp.zeros((k, k), dtype))
            np.testing.assert_allclose(float(ell), math.log(k), rtol=np.finfo(dtype).eps)
            np.testing.assert_allclose(e_hat, np.eye(k) / k, rtol=np.finfo(dtype).eps)
            ell, e_hat = _jit_f(jnp.asarray(-7.5 * np.eye(k), dtype))
            np.testing.assert_allclose(float(ell), math.log(k) - 7.5, rtol=np.finfo(dtype).eps)
        ell, e_hat = _jit_f(jnp.asarray([[3.25]], dtype))
        assert float(ell) == 3.25 and float(e_hat[0, 0]) == 1.0


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_large_negative_scale_on_rank_deficient_gram(dtype):
    # a = -1e8 X^T X, X of rank 3: 3 (near-)zero eigenvalues, the rest ~ -1e9.
    rng = np.random.default_rng(11)
    x = rng.standard_normal((3, K))
    a = _in_dtype(-1e8 * (x.T @ x), dtype)
    with jax.enable_x64(dtype == np.float64):
        ell, e_hat = _jit_f(jnp.asarray(a))
        assert np.isfinite(float(ell)) and np.all(np.isfinite(e_hat))
        # Jensen (exact, enforced): ell >= log k + tr(a)/k.
        mean = float(np.trace(a.astype(np.float64))) / K
        assert float(ell) >= math.log(K) + mean - abs(mean) * float(np.finfo(dtype).eps) * K
        assert np.min(np.linalg.eigvalsh(np.asarray(e_hat, np.float64))) >= -np.finfo(dtype).eps
        # The rounded input's "zero" eigenvalues are only zero to eps rho(a), and
        # so is ell = log 3 + O(eps rho): within the same budget as everywhere else.
        _check_against_mpmath(a, dtype, ell, e_hat)
    if dtype == np.float64:  # here eps rho(a) ~ 1e-7: ell <= log k still visible
        assert float(ell) <= math.log(K) + 1e-6


# --- transformations ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_batch_and_vmap_give_each_matrix_its_own_squarings(dtype):
    rng = np.random.default_rng(3)
    scales = [0.0, 1e-3, 3.0, 30.0, 1e3, 3e4]
    mats = [_matrix("indefinite", s, rng) if s else np.zeros((K, K)) for s in scales]
    with jax.enable_x64(dtype == np.float64):
        a = jnp.asarray(np.stack([_in_dtype(m, dtype) for m in mats]))
        q = np.asarray(_jit_squarings(a))
        assert q[0] == q[1] == 0 and np.all(np.diff(q[1:]) > 0), q
        singles = [_jit_f(a[i]) for i in range(len(scales))]
        batched = _jit_f(a)
        mapped = jax.jit(jax.vmap(log_trace_and_weights))(a)
        eps = float(np.finfo(dtype).eps)
        for ell, e_hat in (batched, mapped):
            for i, (ell_i, e_i) in enumerate(singles):
                # A wrong count is off by far more than rounding: too few squarings
                # truncate, d too many give exp(2^d B) instead of exp(B).
                np.testing.assert_allclose(ell[i], ell_i, rtol=4 * eps, atol=4 * eps)
                np.testing.assert_allclose(e_hat[i], e_i, rtol=0, atol=4 * eps)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_nan_and_inf_give_nan_and_leave_the_rest_of_a_2d_batch_alone(dtype):
    with jax.enable_x64(dtype == np.float64):
        a = np.stack([np.eye(K, dtype=dtype) * s for s in (1.0, 1e4, 2.0, 3.0, 0.5, 1.0)])
        a[1, 0, 5] = a[1, 5, 0] = -2e3  # the batch's largest q: the loop runs past the NaNs
        a[0, 1, 2] = a[0, 2, 1] = np.nan
        a[2, 0, 0] = np.inf
        a[3, 1, 3] = a[3, 3, 1] = -np.inf
        a[5] = np.nan
        # Two batch dimensions, (2, 3, k, k).
        ell, e_hat = (
            np.reshape(r, (6, *r.shape[2:])) for r in _jit_f(jnp.asarray(a).reshape(2, 3, K, K))
        )
        for i in (0, 2, 3, 5):
            assert np.isnan(ell[i]) and np.all(np.isnan(e_hat[i])), i
        eps = float(np.finfo(dtype).eps)
        for i in (1, 4):
            ell_i, e_i = _jit_f(jnp.asarray(a[i]))
            np.testing.assert_allclose(ell[i], ell_i, rtol=4 * eps, atol=4 * eps)
            np.testing.assert_allclose(e_hat[i], e_i, rtol=0, atol=4 * eps)


def test_jvp_matches_mpmath_and_finite_differences(x64):
    rng = np.random.default_rng(5)
    eps = float(np.finfo(np.float64).eps)
    radii = (0.0, 1.0, 30.0)
    xs, ws = rng.standard_normal((2, len(radii), K, K))
    a = np.stack([_scaled(x + x.T, r) if r else 0 * x for x, r in zip(xs, radii, strict=True)])
    v = np.stack([_scaled(w + w.T, 1.0) for w in ws])  # ||v||_2 = 1: derivatives are O(1)

    def first_and_second(a, v):
        f = log_trace_and_weights
        (_, d1), (_, d2) = jax.jvp(lambda x: jax.jvp(f, (x,), (v,)), (a,), (v,))
        return d1, d2

    # Batched tangents through the while loop, to second order: vmap(jvp(jvp)).
    (j_ell, j_e), (j2_ell, j2_e) = jax.jit(jax.vmap(first_and_second))(a, v)
    for i, radius in enumerate(radii):
        r_ell, r2_ell, r_e, r2_e = mp_directional(a[i], v[i])
        # A tangent is the exact derivative of the computed map: its rounding
        # follows the value's budget u (2 rho + 5 2^q) relative to its O(1) size,
        # and 2^q < 2 eta/theta <= 2 k^(1/8) 2 rho/theta ~ 6 rho (float64: s = 4 and
        # theta = 0.83): u (2 + 30) rho = 16 eps rho. (The derivative of the truncated series
        # adds theta^m/m! ~ 20 u, relative, below that.)
        tol = 16 * eps * max(1.0, radius)
        np.testing.assert_allclose(float(j_ell[i]), r_ell, rtol=0, atol=tol)
        np.testing.assert_allclose(float(j2_ell[i]), r2_ell, rtol=0, atol=tol)
        np.testing.assert_allclose(j_e[i], r_e, rtol=0, atol=tol)
        np.testing.assert_allclose(j2_e[i], r2_e, rtol=0, atol=tol)
        # Central differences: truncation h^2 |third derivative| / 6 (O(h^2) for
        # ||v||_2 = 1) + rounding ~ eps (rho + 1) / h; about 1e-10 at h = 1e-5.
        h = 1e-5
        (lp, ep), (lm, em) = _jit_f(a[i] + h * v[i]), _jit_f(a[i] - h * v[i])
        fd_tol = h**2 + 10 * eps * (1 + radius) / h
        np.testing.assert_allclose(float(j_ell[i]), (lp - lm) / (2 * h), rtol=0, atol=fd_tol)
        np.testing.assert_allclose(j_e[i], (ep - em) / (2 * h), rtol=0, atol=fd_tol)


def test_jvp_at_tiny_matrices_in_float32(x32):
    # Near 0 the derivatives are those at 0: d ell = tr(v)/k, d e_hat = v/k - tr(v) I/k^2,
    # d^2 ell = tr(v^2)/k - (tr(v)/k)^2. Scaling a tiny B up to unit size would scale
    # its tangents by up to 2^126, and their products in the second order overflow.
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((2, K, K)).astype(np.float32)
    v = (w + w.T) / 2
    t = jnp.asarray(v)

    def first(a):
        return jax.jvp(log_trace_and_weights, (a,), (t,))[1]

    def derivatives(a):
        return jax.jvp(first, (a,), (t,))

    tr, tr2 = np.trace(v) / K, np.trace(v @ v) / K
    tol = 4 * float(np.finfo(np.float32).eps)
    for scale in (1e-20, 1e-30, 1e-38):
        (d_ell, d_e), (d2_ell, _) = jax.jit(derivatives)(jnp.asarray((x + x.T) * np.float32(scale)))
        np.testing.assert_allclose(d_ell, tr, rtol=0, atol=tol)
        np.testing.assert_allclose(d_e, v / K - tr * np.eye(K) / K, rtol=0, atol=tol)
        np.testing.assert_allclose(d2_ell, tr2 - tr**2, rtol=0, atol=tol * max(1, tr2))


def test_log_trace_and_narrow_dtypes():
    a = np.diag(np.linspace(-2.0, 1.0, K)).astype(np.float32)
    ell, _ = _jit_f(a)
    assert float(jax.jit(log_trace)(a)) == float(ell)
    ell16, e16 = _jit_f(a.astype(np.float16))
    assert ell16.dtype == np.float16 and e16.dtype == np.float16
    np.testing.assert_allclose(float(ell16), float(ell), rtol=1e-3)


# --- lowering -----------------------------------------------------------------------------

FORBIDDEN = ["callback", "syevd", "eigh", "getrf", "potrf", "geqrf", "gesvd", "triangular"]


def _program_text(fn, *args) -> str:
    """The exported module for cuda/rocm/tpu without location metadata.

    Locations name the Python functions (``log_trace_and_weights`` contains
    "eigh"), so they are dropped; the ops and custom-call targets remain.
    """
    exported = export.export(jax.jit(fn), platforms=["cuda", "rocm", "tpu"])(*args)
    lines = [ln for ln in exported.mlir_module().splitlines() if not ln.startswith("#loc")]
    return re.sub(r"loc\([^)]*\)", "", "\n".join(lines))


def test_export_detector_sees_an_eigensolver():
    x = jax.ShapeDtypeStruct((4, 4), np.float32)
    text = _program_text(lambda m: jnp.linalg.eigh(m)[0], x)
    assert "custom_call" in text and any(w in text.lower() for w in ("syevd", "eigh"))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float32", "float64"])
def test_export_has_only_products_and_elementwise_ops(dtype):
    with jax.enable_x64(dtype == np.float64):
        x = jax.ShapeDtypeStruct((3, K, K), dtype)

        def program(a):
            return log_trace_and_weights(a)

        def second_order(a, v):
            return jax.jvp(lambda y: jax.jvp(program, (y,), (v,)), (a,), (v,))

        for text in (_program_text(program, x), _program_text(second_order, x, x)):
            assert "stablehlo.while" in text and "stablehlo.dot_general" in text
            assert "custom_call" not in text
            for word in FORBIDDEN:
                assert word not in text.lower(), word
