"""trace_expm and log_trace_expm: tr exp(A) of any real square A, and its log.

References are independent of the code: mpmath's expm of the matrix itself at
50 digits, central finite differences and ``jax.test_util.check_grads``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.test_util import check_grads

from jaxtrace import log_trace_expm, trace_expm
from tests.reference import mp_trace_expm, square_cases, square_tolerance
from tests.test_methods import _PROGRAMS, assert_products_only

FUNCS = {"trace": trace_expm, "log": log_trace_expm}
DTYPES = [np.float32, np.float64]


CASES = square_cases()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_value_and_gradient_match_mpmath(x64, fn, name, dtype):
    a = CASES[name].astype(dtype)
    log = fn == "log"
    ref_value, ref_grad = mp_trace_expm(a, log)
    if log and not ref_value > -np.inf:
        pytest.skip("tr exp(A) <= 0: no log")
    value, grad = jax.jit(jax.value_and_grad(FUNCS[fn]))(jnp.asarray(a))
    assert value.dtype == dtype and grad.dtype == dtype and grad.shape == a.shape
    tol = square_tolerance(a, dtype, log)
    np.testing.assert_allclose(float(value), ref_value, rtol=tol, atol=0)
    # Elementwise, relative to the gradient's largest entry.
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol * np.max(np.abs(ref_grad)))


def test_rotation_by_pi_gives_minus_two_and_a_nan_log(x64):
    a = jnp.array([[0.0, -math.pi], [math.pi, 0.0]])
    # Three squarings: rounding of a few 2^3 u (measured: 10 u).
    np.testing.assert_allclose(float(trace_expm(a)), -2.0, rtol=20 * 2**-53, atol=0)
    assert np.isnan(float(log_trace_expm(a)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_log_is_finite_where_the_trace_overflows(x64, dtype):
    # A non-normal, non-negative matrix with eigenvalues 0 and 2000: tr e^A = e^2000 + 1.
    a = np.array([[2000.0, 5.0, 1.0], [0.0, 0.0, 3.0], [0.0, 0.0, 0.0]], dtype)
    assert np.isinf(float(trace_expm(jnp.asarray(a))))
    value, grad = jax.value_and_grad(log_trace_expm)(jnp.asarray(a))
    u = float(np.finfo(dtype).eps) / 2
    # The value's own conditioning: a relative perturbation u of A moves it by u ||A||.
    np.testing.assert_allclose(float(value), 2000.0, rtol=0, atol=8 * u * 2000)
    # exp(A^T)/tr: the top eigenvector's outer product, e_1 (1, 5/2000 + ..., ...)^T.
    ref = mp_trace_expm(a, log=True)[1]
    np.testing.assert_allclose(grad, ref, rtol=0, atol=8 * u * 2000 * np.max(np.abs(ref)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_dag_gives_exactly_d(x64, dtype):
    # NOTEARS' h(W) = tr exp(W o W) - d is 0 exactly on a DAG: the powers of its
    # adjacency have zero diagonals, and every normalisation is a power of two.
    rng = np.random.default_rng(4)
    d = 12
    perm = rng.permutation(d)
    w = np.triu(rng.standard_normal((d, d)) * (rng.random((d, d)) < 0.4), 1)[perm][:, perm]
    a = jnp.asarray(w * w, dtype)
    assert float(trace_expm(a)) == d
    assert float(log_trace_expm(a)) == pytest.approx(math.log(d), rel=float(np.finfo(dtype).eps))


def _fd_gradient(f, a: np.ndarray, h: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        e = np.zeros_like(a)
        e[idx] = h
        g[idx] = (float(f(jnp.asarray(a + e))) - float(f(jnp.asarray(a - e)))) / (2 * h)
    return g


@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_gradient_matches_finite_differences(x64, fn):
    a = CASES["nonnegative"][:5, :5] + np.triu(np.ones((5, 5)), 1) * 0.3
    f = jax.jit(FUNCS[fn])
    fd = _fd_gradient(f, a)
    # Truncation h^2 |f'''| and rounding eps |f| / h: about 1e-9 here.
    np.testing.assert_allclose(jax.grad(FUNCS[fn])(jnp.asarray(a)), fd, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_check_grads_to_second_order(x64, fn):
    a = jnp.asarray(CASES["nonsymmetric"] * 0.5)
    check_grads(FUNCS[fn], (a,), order=2, modes=["rev"])


@pytest.mark.parametrize("name", ["jordan", "nilpotent", "nonnegative"])
@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_hessian_and_hvp_match_finite_differences(x64, fn, name):
    a = jnp.asarray(CASES[name][:4, :4])
    f = FUNCS[fn]
    v = jnp.asarray(np.random.default_rng(2).standard_normal(a.shape))
    hvp = jax.jit(lambda a, v: jax.jvp(jax.grad(f), (a,), (v,))[1])(a, v)
    hessian = jax.jit(jax.hessian(f))(a)
    h = 1e-5
    grad = jax.jit(jax.grad(f))
    fd = (grad(a + h * v) - grad(a - h * v)) / (2 * h)
    scale = float(jnp.max(jnp.abs(fd)))
    np.testing.assert_allclose(hvp, fd, rtol=0, atol=1e-8 * max(1.0, scale))
    np.testing.assert_allclose(jnp.tensordot(hessian, v, axes=2), hvp, rtol=0, atol=1e-12 * scale)
    # Reverse over reverse agrees with forward over reverse.
    rr = jax.grad(lambda a: jnp.vdot(jax.grad(f)(a), v))(a)
    np.testing.assert_allclose(rr, hvp, rtol=0, atol=1e-12 * max(1.0, scale))


@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_batches_vmap_and_jit_match_one_by_one(x64, fn):
    rng = np.random.default_rng(3)
    a = rng.random((2, 3, 4, 4))
    f = FUNCS[fn]
    one = np.array([[float(f(jnp.asarray(a[i, j]))) for j in range(3)] for i in range(2)])
    for got in (f(jnp.asarray(a)), jax.jit(f)(a), jax.vmap(jax.vmap(f))(a)):
        assert got.shape == (2, 3)
        np.testing.assert_allclose(got, one, rtol=1e-14, atol=0)
    g = jax.grad(lambda a: jnp.sum(f(a)))(jnp.asarray(a))
    g_one = np.stack(
        [np.stack([jax.grad(f)(jnp.asarray(a[i, j])) for j in range(3)]) for i in range(2)]
    )
    np.testing.assert_allclose(g, g_one, rtol=1e-14, atol=1e-15)


def test_nan_stays_in_its_matrix_and_empty_matrices(x64):
    a = np.zeros((3, 2, 2))
    a[1, 0, 1] = np.nan
    a[2, 1, 1] = np.inf
    got = trace_expm(jnp.asarray(a))
    assert float(got[0]) == 2.0 and np.isnan(got[1]) and np.isnan(got[2])
    assert np.all(np.isnan(jax.grad(lambda a: trace_expm(a)[1])(jnp.asarray(a))[1]))
    empty = jnp.zeros((4, 0, 0))
    assert np.array_equal(trace_expm(empty), np.zeros(4))
    assert np.all(np.isneginf(log_trace_expm(empty)))
    assert jax.grad(lambda a: jnp.sum(trace_expm(a)))(empty).shape == (4, 0, 0)


@pytest.mark.parametrize(
    ("dtype", "want"),
    [(jnp.bfloat16, jnp.bfloat16), (jnp.float16, jnp.float16), (jnp.int32, jnp.float32)],
)
def test_dtypes_are_promoted_as_the_gram_functions_do(x32, dtype, want):
    a = jnp.eye(3, dtype=dtype)
    got = trace_expm(a)
    assert got.dtype == want
    np.testing.assert_allclose(float(got), 3 * math.e, rtol=1e-2)


@pytest.mark.parametrize(
    ("arg", "error", "match"),
    [
        (
            np.ones((3, 4)),
            ValueError,
            r"trace_expm: expected a square matrix .* got shape \(3, 4\)",
        ),
        (
            np.ones(3),
            ValueError,
            r"trace_expm: expected a of shape \(\.\.\., d, d\) with ndim >= 2",
        ),
        (np.ones((2, 2), np.complex64), TypeError, r"trace_expm: expected a to be a real array"),
        ([[1.0]], TypeError, r"trace_expm: expected a to be a JAX or NumPy array"),
    ],
)
def test_bad_input_is_a_trace_time_error(arg, error, match):
    with pytest.raises(error, match=match):
        trace_expm(arg)


def test_symbolic_matrix_size_is_a_trace_time_error():
    (d,) = export.symbolic_shape("d")
    with pytest.raises(ValueError, match=r"log_trace_expm: expected a concrete matrix size d"):
        export.export(jax.jit(log_trace_expm))(jax.ShapeDtypeStruct((d, d), jnp.float32))


@pytest.mark.parametrize("program", sorted(_PROGRAMS))
@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
@pytest.mark.parametrize("fn", sorted(FUNCS))
def test_lowers_to_products_only(platform, fn, program):
    exported = export.export(jax.jit(_PROGRAMS[program](FUNCS[fn])), platforms=[platform])(
        jax.ShapeDtypeStruct((20, 20), jnp.float32)
    )
    assert_products_only(exported)
