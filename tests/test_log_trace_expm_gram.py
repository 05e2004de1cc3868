"""Overflow-safe log_trace_expm_gram: L(X) = log tr expm(s X X^T).

References: mpmath (tests/reference.py), which exponentiates the full n x n
matrix with arbitrary exponent range, so it is exact to float64 rounding even
where e^lambda overflows every float type; jnp.log(trace_expm_gram(x)) where
the latter is finite; and finite differences of gradients (jaxtrace's and
mpmath's) for second derivatives at large eigenvalues, where the peer overflows.

Second derivatives at the degenerate points (X = 0, repeated singular values,
rank-deficient, ...) against log_peer are in tests/test_second_order.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from jax.test_util import check_grads

from jaxtrace import log_trace_expm_gram, trace_expm_gram
from tests.reference import (
    assert_close,
    expm_condition,
    grad_scale,
    gram_eigenvalues,
    hessian_scale,
    mixed_scale,
    mp_dscale,
    mp_trace_expm_gram,
    with_singular_values,
)

# Every test runs once per method (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("auto_method")

EPS = {np.dtype(np.float32): float(np.finfo(np.float32).eps), np.dtype(np.float64): 2.0**-52}

# --------------------------------------------------------------------------
# Tolerances against mpmath, per dtype, as multiples of eps (measured first).
#
# Value: |dL| = |2 s tr(X^T dX W)| <= 2 eps max|lambda| for a relative
# perturbation eps of the entries of X (||W|| <= 1), and the Gram product and
# eigh add a few eps * max|lambda| of backward error; for large lambda_max,
# L ~ lambda_max, so this is a relative error. Measured <= 3.6 eps * max|lambda|
# (f32 and f64, lambda_max up to 1e5); 16 eps * max(max|lambda|, 1) allowed.
VALUE_TOL_EPS = 16
# Gradient 2 s X V diag(w) V^T with softmax weights w. When the top eigenvalue
# is separated from the rest by a gap ~ lambda_max, every weight but the top
# one is ~0 and the top eigenvector is well conditioned: measured <= 7 eps;
# 32 eps allowed.
GRAD_TOL_EPS = 32
# When the top eigenvalues are clustered (gap <= 1), the weights
# exp(lambda_i - L) depend on eigenvalue *differences*, which eigh determines
# only to ~eps * |s G| = eps * lambda_max absolutely: the gradient of L is
# intrinsically conditioned like lambda_max. Measured <= 1.1 eps * lambda_max
# for gradients (f32 at 3000 and 1e5, f64 at 3000 and 1e5), <= 2.6 eps *
# lambda_max for d/ds grad_x (the weights are renormalised to sum to one);
# 8 eps * lambda_max allowed.
CLUSTER_TOL_EPS_PER_LAMBDA = 8
# The tolerances above are relative (rtol); every entry also gets an absolute
# floor of ATOL_EPS eps times its natural size (tests/reference.py), times
# expm_condition = 1 + |s| mu_max where the top of the spectrum is clustered
# (or O(1)): there eigenvalue errors of eps * lambda_max move the weights. A
# top eigenvalue that stands alone has weight ~1 whatever its error: no factor.
# Gradients: measured <= 3.3 eps (alone) and <= 0.31 eps * lambda_max (clustered).
ATOL_EPS = 8
# Central differences of the float64 gradient (step 1e-5) against the
# Hessian at large eigenvalues: measured <= 4e-8 relative; 1e-6 allowed, as
# a fraction of each entry's natural size (the error is absolute).
FD_STEP = 1e-5
TOL_FD = 1e-6


def top_clustered(x, scale) -> bool:
    """Whether the top two eigenvalues of s X X^T (its zeros included) lie within 1."""
    x = np.asarray(x, dtype=np.float64)
    n, m = x.shape
    lam = np.sort(np.concatenate([scale * gram_eigenvalues(x), np.zeros(max(n - m, 0))]))
    return lam.size > 1 and lam[-1] - lam[-2] <= 1


def floor(size, x, scale, eps, conditioned=True):
    """ATOL_EPS eps times the natural sizes ``size`` of the entries (see ATOL_EPS)."""
    x = np.asarray(x, dtype=np.float64)
    cond = expm_condition(x, scale)[..., None, None] if conditioned else 1.0
    return ATOL_EPS * eps * cond * np.asarray(size)


def grad_atol(x, scale, eps, conditioned=True):
    """The floor of each entry of grad_x L."""
    return floor(grad_scale(x, scale, log=True), x, scale, eps, conditioned)


def with_eigenvalues(n: int, m: int, lam, scale: float = 1.0, seed: int = 1) -> np.ndarray:
    """float64 X (n x m) whose s X X^T has nonzero eigenvalues ``lam`` (signs as s)."""
    return with_singular_values(n, m, np.sqrt(np.asarray(lam, dtype=np.float64) / scale), seed)


def _value_and_grads(x, scale):
    """(L, dL/dx, dL/ds) from jaxtrace, in the dtype of x."""
    dtype = jnp.asarray(x).dtype

    def f(y, s):
        return log_trace_expm_gram(y, scale=s)

    value, (gx, gs) = jax.value_and_grad(f, argnums=(0, 1))(x, jnp.asarray(scale, dtype))
    return value, gx, gs


# --------------------------------------------------------------------------
# Large eigenvalues against mpmath.

# (dtype, shape, eigenvalues of s X X^T, scale, clustered top?)
LARGE_CASES = [
    # float32: the plain trace overflows past lambda ~ 88.7.
    (np.float32, (4, 3), [300.0, 120.0, 5.0], 1.0, False),
    (np.float32, (3, 5), [3000.0, 1500.0, 10.0], 2.5, False),
    (np.float32, (4, 3), [3e4, 1e4, 1.0], 1.0, False),
    (np.float32, (4, 3), [3000.0, 3000.0, 10.0], 1.0, True),
    (np.float32, (3, 5), [3000.0, 2999.0, 2000.0], 2.5, True),
    # float64: the plain trace overflows past lambda ~ 709.8.
    (np.float64, (4, 3), [300.0, 120.0, 5.0], 1.0, False),
    (np.float64, (3, 5), [3000.0, 1500.0, 10.0], 2.5, False),
    (np.float64, (4, 3), [1e5, 5e4, 3.0], 1.0, False),
    (np.float64, (3, 5), [1e5, 5e4, 3.0], 2.5, False),
    (np.float64, (4, 3), [1e5, 1e5, 3.0], 1.0, True),
    (np.float64, (3, 5), [1e5, 1e5 - 1, 3.0], 2.5, True),
    # Negative scale, all eigenvalues very negative and no zero eigenvalue
    # (n <= m): L ~ lambda_max < 0 while the plain trace underflows to 0.
    (np.float32, (3, 3), [-3000.0, -3001.0, -5000.0], -1.0, True),
    (np.float64, (3, 5), [-3000.0, -3000.0, -5000.0], -1.0, True),
    (np.float64, (2, 2), [-1e5, -2e5], -1.0, False),
]


def _case_id(case):
    dtype, shape, lam, scale, clustered = case
    return f"{np.dtype(dtype).name}-{shape[0]}x{shape[1]}-lam{lam[0]:g}-s{scale:g}" + (
        "-clustered" if clustered else ""
    )


@pytest.mark.parametrize("case", LARGE_CASES, ids=_case_id)
def test_large_eigenvalues_match_mpmath(case):
    dtype, shape, lam, scale, clustered = case
    dtype = np.dtype(dtype)
    with jax.enable_x64(dtype == np.float64):
        x = with_eigenvalues(*shape, lam, scale).astype(dtype)
        # The reference is evaluated at exactly the (rounded) input.
        want_v, want_g = mp_trace_expm_gram(x.astype(np.float64), scale, log=True)
        want_s = mp_dscale(x.astype(np.float64), scale, log=True)
        value, gx, gs = _value_and_grads(jnp.asarray(x), scale)
        plain = trace_expm_gram(jnp.asarray(x), scale=scale)

    assert value.dtype == gx.dtype == gs.dtype == dtype
    assert np.isfinite(value) and np.isfinite(gx).all() and np.isfinite(gs)
    # Where exp overflows (or every term underflows) the plain trace is useless.
    finfo = np.finfo(dtype)
    if max(lam) > np.log(finfo.max) or max(lam) < np.log(finfo.smallest_subnormal):
        with np.errstate(divide="ignore"):
            assert not np.isfinite(np.log(np.asarray(plain, dtype=np.float64)))
    eps = EPS[dtype]
    lam_max = max(abs(v) for v in lam)
    grad_tol = CLUSTER_TOL_EPS_PER_LAMBDA * eps * lam_max if clustered else GRAD_TOL_EPS * eps
    assert abs(float(value) - want_v) <= VALUE_TOL_EPS * eps * lam_max
    atol = grad_atol(x, scale, eps, conditioned=clustered)
    assert_close(gx, want_g, rtol=grad_tol, atol=atol, what="grad_x")
    assert abs(float(gs) - want_s) <= grad_tol * abs(want_s)


def test_negative_scale_with_zero_eigenvalues_gives_log_of_their_count():
    # Tall X: n - m zero eigenvalues dominate once s * mu_i << 0.
    with jax.enable_x64(True):
        x = jnp.asarray(with_eigenvalues(5, 3, [-3000.0, -3001.0, -5000.0], -1.0))
        value, gx, gs = _value_and_grads(x, -1.0)
    assert float(value) == pytest.approx(math.log(2), rel=1e-15)
    # Every weight exp(lambda_i - L) underflows: the gradients are (exactly) 0.
    assert np.max(np.abs(gx)) <= 1e-300 and abs(float(gs)) <= 1e-300


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_batch_mixing_huge_and_tiny_eigenvalues(dtype):
    # One batch holding lambda_max = 3000, 1, 0 and a negative one: each
    # element is exact on its own (no shared shift across the batch).
    with jax.enable_x64(dtype == np.float64):
        xs = np.stack(
            [
                with_eigenvalues(4, 3, [3000.0, 10.0, 1.0], seed=1),
                with_eigenvalues(4, 3, [1.0, 0.5, 0.25], seed=2),
                np.zeros((4, 3)),
                with_eigenvalues(4, 3, [2.0, 1.0], seed=3),
            ]
        ).astype(dtype)
        scales = np.array([1.0, 1.0, 1.0, -1.0], dtype=dtype)
        f = jax.value_and_grad(lambda y, s: log_trace_expm_gram(y, scale=s))
        values, grads = jax.jit(jax.vmap(f))(jnp.asarray(xs), jnp.asarray(scales))
    assert values.dtype == grads.dtype == dtype
    eps = EPS[np.dtype(dtype)]
    for i, s in enumerate(scales):
        want_v, want_g = mp_trace_expm_gram(xs[i].astype(np.float64), float(s), log=True)
        lam_max = max(abs(want_v), 1.0)
        assert abs(float(values[i]) - want_v) <= VALUE_TOL_EPS * eps * lam_max
        atol = grad_atol(xs[i], float(s), eps, conditioned=top_clustered(xs[i], float(s)))
        assert_close(grads[i], want_g, rtol=GRAD_TOL_EPS * eps, atol=atol, what=f"grad {i}")


# --------------------------------------------------------------------------
# Consistency with the plain operator where it is finite.


@jax.jit
def _log_and_plain_grads(x, scale):
    return (
        jax.grad(lambda y: log_trace_expm_gram(y, scale=scale).sum())(x),
        jax.grad(lambda y: jnp.log(trace_expm_gram(y, scale=scale)).sum())(x),
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [1.0, 0.3, -0.8, 0.0])
def test_matches_log_of_trace_where_finite(dtype, scale):
    rng = np.random.default_rng(0)
    with jax.enable_x64(dtype == np.float64):
        xs = [
            rng.standard_normal((2, 4, 3)),
            rng.standard_normal((3, 5)),
            rng.standard_normal((3, 3)),
            rng.standard_normal((1, 1)),
        ]
        for x in xs:
            x = jnp.asarray(x, dtype=dtype)
            plain = trace_expm_gram(x, scale=scale)
            assert np.isfinite(plain).all()
            got = log_trace_expm_gram(x, scale=scale)
            assert got.dtype == dtype and got.shape == plain.shape
            # log is well conditioned (relative error of f becomes absolute
            # error of log f): compare with a tolerance relative to max(|L|, 1).
            want = np.log(np.asarray(plain, dtype=np.float64))
            err = np.max(np.abs(np.asarray(got, np.float64) - want))
            assert err <= VALUE_TOL_EPS * EPS[np.dtype(dtype)] * max(np.max(np.abs(want)), 1.0)
            g_log, g_plain = _log_and_plain_grads(x, scale)
            eps = EPS[np.dtype(dtype)]
            atol = grad_atol(x, scale, eps)
            assert_close(g_log, g_plain, rtol=GRAD_TOL_EPS * eps, atol=atol, what="grad")


def test_overflow_threshold_float32():
    # Just past float32's exp overflow (88.7) the plain trace is inf, the log is not.
    x = jnp.asarray(with_eigenvalues(3, 2, [100.0, 1.0]), dtype=jnp.float32)
    assert np.isinf(trace_expm_gram(x))
    # log(e^100 + e^1 + 1) = 100 + O(e^-99).
    assert float(log_trace_expm_gram(x)) == pytest.approx(100.0, rel=VALUE_TOL_EPS * 2**-23)
    assert np.isfinite(jax.grad(log_trace_expm_gram)(x)).all()


# --------------------------------------------------------------------------
# Shapes, batching, jit.


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 3, 2), (2, 3, 2, 4)], ids=str)
def test_shapes_batching_and_jit(x64, shape):
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape))
    got = log_trace_expm_gram(x, scale=0.5)
    assert got.shape == shape[:-2] and got.dtype == jnp.float64
    flat = x.reshape((-1, *shape[-2:]))
    want = np.array([mp_trace_expm_gram(np.asarray(a), 0.5, log=True)[0] for a in flat])
    np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-14, atol=1e-14)
    # vmap over the leading axis and jit give the same values.
    f = lambda y: log_trace_expm_gram(y, scale=0.5)  # noqa: E731
    np.testing.assert_allclose(jax.vmap(f)(flat), got.reshape(-1), rtol=1e-14)
    np.testing.assert_allclose(jax.jit(f)(x), got, rtol=1e-14)
    # The gradient of the batch sum is the stack of per-matrix gradients.
    g = jax.grad(lambda y: f(y).sum())(x)
    assert g.shape == shape
    for a, ga in zip(flat, g.reshape(flat.shape), strict=True):
        want_g = mp_trace_expm_gram(np.asarray(a), 0.5, log=True)[1]
        atol = grad_atol(a, 0.5, EPS[np.dtype(np.float64)])
        assert_close(ga, want_g, rtol=1e-13, atol=atol, what="grad")


@pytest.mark.parametrize(
    ("shape", "want"),
    [
        ((3, 0), math.log(3)),
        ((1, 0), 0.0),
        ((0, 3), -math.inf),
        ((0, 0), -math.inf),
        ((2, 4, 0), math.log(4)),
        ((2, 0, 5), -math.inf),
    ],
    ids=str,
)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_empty_shapes(shape, want, dtype):
    with jax.enable_x64(dtype == jnp.float64):
        x = jnp.zeros(shape, dtype)
        for scale in (1.0, -2.0):
            got = log_trace_expm_gram(x, scale=scale)
            assert got.shape == shape[:-2] and got.dtype == dtype
            assert np.all(np.asarray(got, np.float64) == np.float64(want).astype(dtype))
            jitted = jax.jit(lambda y, s=scale: log_trace_expm_gram(y, scale=s))(x)
            assert np.array_equal(np.asarray(jitted), np.asarray(got))
        g = jax.grad(lambda y: log_trace_expm_gram(y).sum())(x)
        assert g.shape == shape and g.dtype == dtype


# --------------------------------------------------------------------------
# dtype rules (as trace_expm_gram).


@pytest.mark.parametrize(
    ("in_dtype", "x64_on", "out_dtype"),
    [
        (np.float32, False, np.float32),
        (np.float32, True, np.float32),
        (np.float64, True, np.float64),
        (np.int32, False, np.float32),
        (np.int32, True, np.float64),
        (np.bool_, False, np.float32),
        (jnp.float16, False, jnp.float16),
        (jnp.bfloat16, False, jnp.bfloat16),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_dtype_rules(in_dtype, x64_on, out_dtype):
    base = np.array([[1.0, 0.0], [1.0, 2.0], [0.0, 1.0]])
    with jax.enable_x64(x64_on):
        x = jnp.asarray(base.astype(in_dtype))
        got = log_trace_expm_gram(x, scale=0.5)
        assert got.dtype == jnp.dtype(out_dtype)
        want = mp_trace_expm_gram(np.asarray(x, dtype=np.float64), 0.5, log=True)[0]
        eps = float(jnp.finfo(jnp.dtype(out_dtype)).eps)
        assert abs(float(got) - want) <= VALUE_TOL_EPS * eps * abs(want)
        if jnp.issubdtype(jnp.dtype(in_dtype), jnp.floating):
            g = jax.grad(lambda y: log_trace_expm_gram(y, scale=0.5))(x)
            assert g.dtype == jnp.dtype(in_dtype)
            want_g = mp_trace_expm_gram(np.asarray(x, dtype=np.float64), 0.5, log=True)[1]
            atol = grad_atol(base, 0.5, eps)
            assert_close(g, want_g, rtol=GRAD_TOL_EPS * eps, atol=atol, what="grad")


# --------------------------------------------------------------------------
# Bad inputs (as trace_expm_gram); the message names the function.


@pytest.mark.parametrize(
    ("x", "scale", "exc"),
    [
        ([[1.0, 2.0], [3.0, 4.0]], 1.0, TypeError),
        ("abc", 1.0, TypeError),
        (np.ones((2, 2), dtype=np.complex64), 1.0, TypeError),
        (np.array([["a", "b"]]), 1.0, TypeError),
        (np.ones(3), 1.0, ValueError),
        (np.float32(1.0), 1.0, ValueError),
        (np.ones((2, 2), np.float32), True, TypeError),
        (np.ones((2, 2), np.float32), "1", TypeError),
        (np.ones((2, 2), np.float32), 1j, TypeError),
        (np.ones((2, 2), np.float32), np.ones(2), ValueError),
        (np.ones((2, 2), np.float32), np.array(1.0 + 0j), TypeError),
    ],
    ids=[
        "list",
        "str",
        "complex",
        "str-array",
        "1d",
        "0d",
        "scale-bool",
        "scale-str",
        "scale-complex",
        "scale-vector",
        "scale-complex-array",
    ],
)
def test_bad_inputs(x, scale, exc):
    with pytest.raises(exc, match="log_trace_expm_gram"):
        log_trace_expm_gram(x, scale=scale)


# --------------------------------------------------------------------------
# Scale semantics.


def test_scale_semantics(x64):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 3)))
    # scale = 0: log tr I_n = log n, whatever X (tall and wide).
    assert float(log_trace_expm_gram(x, scale=0.0)) == pytest.approx(math.log(4), rel=1e-15)
    assert float(log_trace_expm_gram(x.T, scale=0)) == pytest.approx(math.log(3), rel=1e-15)
    # L(X, s) = L(sqrt(s) X, 1) for s > 0.
    for s in (0.25, 2.0, 7.5):
        a = log_trace_expm_gram(x, scale=s)
        b = log_trace_expm_gram(math.sqrt(s) * x)
        assert float(a) == pytest.approx(float(b), rel=1e-14)
    # Python int, NumPy and JAX scalars of any real dtype agree.
    ref = float(log_trace_expm_gram(x, scale=2.0))
    for s in (2, np.float32(2.0), jnp.asarray(2.0), jnp.asarray(2, jnp.int32), np.int64(2)):
        assert float(log_trace_expm_gram(x, scale=s)) == pytest.approx(ref, rel=1e-15)
    # Negative scales against mpmath.
    for s in (-0.5, -3.0):
        want = mp_trace_expm_gram(np.asarray(x), s, log=True)[0]
        assert float(log_trace_expm_gram(x, scale=s)) == pytest.approx(want, rel=1e-14)


def test_scale_traced_under_jit_vmap_and_grad(x64):
    x = jnp.asarray(np.random.default_rng(3).standard_normal((3, 4)))
    scales = jnp.array([-1.0, -0.1, 0.0, 0.5, 2.0])
    f = lambda s: log_trace_expm_gram(x, scale=s)  # noqa: E731
    loop = np.array([float(f(s)) for s in scales])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(scales), loop, rtol=1e-14)
    ds = jax.jit(jax.vmap(jax.grad(f)))(scales)
    want = [mp_dscale(np.asarray(x), float(s), log=True) for s in scales]
    np.testing.assert_allclose(ds, want, rtol=1e-13)


# --------------------------------------------------------------------------
# Gradients and Hessians.


@pytest.mark.parametrize(
    "lam",
    [[2.0, 2.0, 0.5], [300.0, 120.0, 5.0], [300.0, 300.0, 5.0]],
    ids=["repeated", "large", "large-repeated"],
)
def test_check_grads_second_order(x64, lam):
    x = jnp.asarray(with_eigenvalues(4, 3, lam, 0.7))
    check_grads(lambda y: log_trace_expm_gram(y, scale=0.7), (x,), order=2, modes=["rev"])


_hessian = jax.jit(jax.hessian(lambda x, s: log_trace_expm_gram(x, scale=s), argnums=(0, 1)))
_grads = jax.jit(jax.grad(lambda x, s: log_trace_expm_gram(x, scale=s), argnums=(0, 1)))


@pytest.mark.parametrize(
    ("shape", "lam", "scale"),
    [
        ((4, 3), [3000.0, 1500.0, 10.0], 1.0),
        ((3, 4), [3000.0, 3000.0, 10.0], 2.0),
        ((4, 3), [3000.0, 2999.5, 10.0], 1.0),
        ((3, 4), [1e5, 5e4, 3.0], 1.0),
        ((3, 3), [-3000.0, -3001.0, -5000.0], -1.0),
    ],
    ids=["separated", "repeated-top", "clustered-top", "1e5", "negative"],
)
def test_hessian_at_large_eigenvalues_matches_finite_differences(x64, shape, lam, scale):
    xn = with_eigenvalues(*shape, lam, scale)
    x, s = jnp.asarray(xn), jnp.asarray(scale)
    # The peer route (and the plain trace) overflows or underflows here.
    with np.errstate(divide="ignore"):
        assert not np.isfinite(np.log(float(trace_expm_gram(x, scale=scale))))
    (hxx, hxs), (hsx, hss) = _hessian(x, s)
    hxx, hxs, hsx, hss = np.asarray(hxx), np.asarray(hxs), np.asarray(hsx), float(hss)
    assert np.isfinite(hxx).all() and np.isfinite(hxs).all() and np.isfinite(hss)
    assert np.isfinite(hsx).all()
    n, m = shape
    flat = hxx.reshape(n * m, n * m)
    lam_max = max(abs(v) for v in lam)
    eps = EPS[np.dtype(np.float64)]
    size = hessian_scale(xn, scale, log=True)
    atol = floor(size, xn, scale, eps, top_clustered(xn, scale)).reshape(n * m, n * m)
    rtol = CLUSTER_TOL_EPS_PER_LAMBDA * eps * lam_max
    assert_close(flat, flat.T, rtol=rtol, atol=atol, what="d2L/dx2 not symmetric")

    h = FD_STEP
    v = np.random.default_rng(4).standard_normal(shape)
    hv = np.tensordot(hxx, v, axes=2)
    own = (np.asarray(_grads(x + h * v, s)[0]) - np.asarray(_grads(x - h * v, s)[0])) / (2 * h)
    mp = (
        mp_trace_expm_gram(xn + h * v, scale, log=True)[1]
        - mp_trace_expm_gram(xn - h * v, scale, log=True)[1]
    ) / (2 * h)
    # Central differences err absolutely, at the natural size of each entry.
    fd_atol = TOL_FD * np.tensordot(size, np.abs(v), axes=2)
    assert_close(hv, own, rtol=0, atol=fd_atol, what="H v vs FD of jaxtrace")
    assert_close(hv, mp, rtol=0, atol=fd_atol, what="H v vs FD of mpmath")
    # d/ds grad_x against finite differences of the mpmath gradient (the
    # exact-reference check of the scale derivatives is the next test).
    mp_xs = (
        mp_trace_expm_gram(xn, scale + h, log=True)[1]
        - mp_trace_expm_gram(xn, scale - h, log=True)[1]
    ) / (2 * h)
    fd_atol = TOL_FD * mixed_scale(xn, scale, log=True)
    assert_close(hxs, mp_xs, rtol=0, atol=fd_atol, what="d/ds grad_x vs FD")
    # d/dx (dL/ds) = d/ds grad_x L
    assert_close(hsx, mp_xs, rtol=0, atol=fd_atol, what="d/dx dL/ds vs FD")


def mp_log_scale_derivatives(x: np.ndarray, scale: float):
    """Exact (d/ds grad_x L, d2L/ds2) via mpmath, at 60 digits.

    With A = X X^T, E = expm(s A), T = tr E: grad_x L = 2 s E X / T, so
    d/ds grad_x L = 2 E X / T + 2 s A E X / T - 2 s E X tr(A E) / T^2 and
    d2L/ds2 = tr(A^2 E) / T - (tr(A E) / T)^2 (a variance: >= 0). The
    cancellation in the last one is harmless at 60 digits.
    """
    with mpmath.workdps(60):
        xm = mpmath.matrix(np.asarray(x, dtype=np.float64).tolist())
        a = xm * xm.T
        s = mpmath.mpf(scale)
        e = mpmath.expm(s * a)
        ae = a * e

        def tr(mat):
            return mpmath.fsum(mat[i, i] for i in range(mat.rows))

        t = tr(e)
        gxs = 2 * e * xm / t + 2 * s * ae * xm / t - 2 * s * e * xm * (tr(ae) / t**2)
        hss = tr(a * ae) / t - (tr(ae) / t) ** 2
        g = np.array([[float(gxs[i, j]) for j in range(xm.cols)] for i in range(xm.rows)])
        return g, float(hss)


@pytest.mark.parametrize(
    ("shape", "lam", "scale"),
    [
        ((4, 3), [300.0, 120.0, 5.0], 1.0),
        ((3, 4), [3000.0, 1500.0, 10.0], 2.0),
        ((4, 3), [1e5, 5e4, 3.0], 1.0),
        ((4, 3), [4.0, 4.0, 1.0], 0.7),
        ((4, 3), [30.0, 29.0, 1.0], 1.0),
        ((3, 4), [3000.0, 3000.0, 10.0], 2.0),
        ((4, 3), [3000.0, 2999.5, 10.0], 1.0),
        ((4, 3), [1e5, 1e5, 3.0], 1.0),
    ],
    ids=[
        "300",
        "3000",
        "1e5",
        "repeated-4",
        "clustered-30",
        "repeated-3000",
        "clustered-3000",
        "repeated-1e5",
    ],
)
def test_scale_derivatives_match_exact_mpmath(x64, shape, lam, scale):
    xn = with_eigenvalues(*shape, lam, scale)
    (_, hxs), (hsx, hss) = _hessian(jnp.asarray(xn), jnp.asarray(scale))
    want_xs, want_ss = mp_log_scale_derivatives(xn, scale)
    eps = EPS[np.dtype(np.float64)]
    lam_max = max(lam)
    mu_max = lam_max / scale
    # Intrinsic conditioning (see CLUSTER_TOL_EPS_PER_LAMBDA): eigenvalue
    # differences are known to eps * lam_max, which moves the weights, hence
    # these derivatives, by a relative ~eps * lam_max; d2L/ds2 = Var_w(mu) is
    # in addition a difference of O(mu_max^2) terms (absolute eps * mu_max^2).
    rel = CLUSTER_TOL_EPS_PER_LAMBDA * eps * lam_max + GRAD_TOL_EPS * eps
    assert float(hss) >= -VALUE_TOL_EPS * eps * mu_max**2, "d2L/ds2 = Var_w(mu) < 0"
    assert abs(float(hss) - want_ss) <= rel * abs(want_ss) + VALUE_TOL_EPS * eps * mu_max**2
    atol = floor(mixed_scale(xn, scale, log=True), xn, scale, eps, top_clustered(xn, scale))
    assert_close(hxs, want_xs, rtol=rel, atol=atol, what="d/ds grad_x")
    # d/dx (dL/ds), the other mixed block
    assert_close(hsx, want_xs, rtol=rel, atol=atol, what="d/dx dL/ds")


@pytest.mark.parametrize("lam", [[300.0, 120.0, 5.0], [3000.0, 3000.0, 10.0]], ids=str)
def test_hessian_float32_at_large_eigenvalues(lam):
    xn = with_eigenvalues(4, 3, lam)
    with jax.enable_x64(True):
        want = np.asarray(_hessian(jnp.asarray(xn), jnp.asarray(1.0))[0][0])
    with jax.enable_x64(False):
        got = _hessian(jnp.asarray(xn, jnp.float32), jnp.asarray(1.0, jnp.float32))[0][0]
    assert got.dtype == jnp.float32 and np.isfinite(got).all()
    # The Hessian of L is conditioned like lambda_max (see the gradient
    # tolerance above): measured 5.8e-6 at 300 and 4.6e-5 at 3000. At 300
    # (top alone) that is not conditioning: perturbing x by eps moves the exact
    # Hessian by ~1 eps of its natural size, jaxtrace errs by 25 eps32.
    eps = EPS[np.dtype(np.float32)]
    atol = floor(hessian_scale(xn, 1.0, log=True), xn, 1.0, eps, top_clustered(xn, 1.0))
    rtol = CLUSTER_TOL_EPS_PER_LAMBDA * eps * lam[0]
    assert_close(got, want, rtol=rtol, atol=atol, what="float32 d2L/dx2")


# --------------------------------------------------------------------------
# Property-based: bounds and mpmath over random shapes and magnitudes.


@st.composite
def _scaled_matrices(draw):
    n, m = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    x = draw(hnp.arrays(np.float64, (n, m), elements=st.floats(-1, 1, allow_subnormal=False)))
    return x * 10.0 ** draw(st.integers(0, 2))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=_scaled_matrices(), scale=st.floats(-1, 1, allow_subnormal=False))
def test_property_bounds_and_mpmath(x, scale):
    n = x.shape[0]
    with jax.enable_x64(True):
        value = float(log_trace_expm_gram(jnp.asarray(x), scale=scale))
    # L = log(sum_i e^{lambda_i}) over all n eigenvalues of s X X^T (zeros
    # included), so lambda_top <= L <= lambda_top + log n.
    lam = scale * np.linalg.eigvalsh(x @ x.T)
    top = float(np.max(lam))
    size = max(float(np.max(np.abs(lam))), 1.0)  # max(max|lambda|, 1): see VALUE_TOL_EPS
    tol = VALUE_TOL_EPS * EPS[np.dtype(np.float64)] * size
    assert top - tol <= value <= top + math.log(n) + tol
    want = mp_trace_expm_gram(x, scale, log=True)[0]
    assert abs(value - want) <= tol
