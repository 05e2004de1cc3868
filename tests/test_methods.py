"""The evaluation methods: ``method="eigh"``, ``"expm"`` and ``"auto"`` against references.

Each check runs the public functions with every method against mpmath on the
full matrix (values, gradients) and against the eigh method's exact second
derivatives, over the inputs that stress a matrix exponential: degenerate
spectra, negative and zero scales, large eigenvalues for the log variant, NaN,
empty matrices and batches.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

from jaxtrace import log_trace_expm_gram, trace_expm_gram
from jaxtrace._src import methods
from tests.reference import (
    assert_close,
    grad_scale,
    mp_trace_expm_gram,
    orthonormal,
    sample,
    with_singular_values,
)

FUNCS = {"trace": trace_expm_gram, "log": log_trace_expm_gram}
METHODS = ["eigh", "expm"]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
ULP = {np.dtype(np.float32): 2.0**-23, np.dtype(np.float64): 2.0**-52}

# Two shapes, tall and wide, so that each program compiles twice per dtype.
POINTS = {
    "random_tall": sample((4, 3)),
    "random_wide": sample((3, 5)),
    "zero": np.zeros((4, 3)),
    "orthonormal": orthonormal(np.random.default_rng(0), 4, 3),
    "repeated_sv": with_singular_values(4, 3, [1.5, 1.5, 0.5], seed=1),
    "rank_deficient": with_singular_values(4, 3, [1.2, 0.7], seed=2),
}
# Second derivatives at the degenerate points (one shape: one compilation each).
SECOND_ORDER_POINTS = ["zero", "orthonormal", "repeated_sv", "rank_deficient"]


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    request.getfixturevalue("x64" if request.param == "float64" else "x32")
    return np.dtype(request.param)


@functools.cache
def _first_order_programs(name: str, method: str):
    """Jitted value_and_grad in x and plain value of fn(x, scale=s): compiled once per shape."""
    f = lambda x, s: FUNCS[name](x, scale=s, method=method)  # noqa: E731
    return jax.jit(jax.value_and_grad(f)), jax.jit(f)


@functools.cache
def _reference(point: str, scale: float, dtype: str, log: bool):
    """mpmath's (value, gradient) at the point rounded to ``dtype``: shared by the methods."""
    x = np.asarray(np.asarray(POINTS[point], dtype), np.float64)
    return mp_trace_expm_gram(x, scale, log=log)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1.0, 0.0, -0.7, 2.5])
@pytest.mark.parametrize("point", sorted(POINTS))
def test_values_and_gradients_match_mpmath(dtype, method, point, scale):
    x = jnp.asarray(POINTS[point], dtype)
    x_ref = np.asarray(x, np.float64)
    s = jnp.asarray(scale, dtype)
    for log, name in ((False, "trace"), (True, "log")):
        want, want_grad = _reference(point, scale, dtype.name, log)
        value_and_grad, value_only = _first_order_programs(name, method)
        value, grad = value_and_grad(x, s)
        plain = value_only(x, s)
        assert value.dtype == grad.dtype == plain.dtype == dtype
        # Values: relative; the log-trace near 0 is compared against its own size 1.
        atol = RTOL[dtype] * (1.0 if log else 0.0)
        assert_close(value, want, rtol=RTOL[dtype], atol=atol)
        assert_close(plain, want, rtol=RTOL[dtype], atol=atol)
        # Gradient entries: a few ulps of their natural size 2|s| |x_i| |W|.
        floor = 8 * ULP[dtype] * grad_scale(x_ref, scale, log=log)
        assert_close(grad, want_grad, rtol=RTOL[dtype], atol=floor)


@functools.cache
def _second_order_programs(name: str, method: str):
    """Hessian (forward over reverse), reverse over reverse, mixed d/ds grad_x and
    d^2/ds^2, jitted."""
    fn = FUNCS[name]
    f = lambda x, s: fn(x, scale=s, method=method)  # noqa: E731
    return [
        jax.jit(jax.hessian(f)),
        jax.jit(jax.jacrev(jax.grad(f))),
        jax.jit(jax.jacfwd(jax.grad(f), argnums=1)),
        jax.jit(jax.hessian(f, argnums=1)),
    ]


@pytest.mark.parametrize("name", sorted(FUNCS))
@pytest.mark.parametrize("point", SECOND_ORDER_POINTS)
@pytest.mark.parametrize("scale", [0.8, 0.0])
def test_expm_second_derivatives_match_eigh(x64, name, point, scale):
    """Forward-over-reverse, reverse-over-reverse and mixed, at repeated eigenvalues too,
    and at s = 0, where the expm method's value bounds are attained."""
    x = jnp.asarray(POINTS[point], jnp.float64)
    s = jnp.asarray(scale, jnp.float64)
    want = [p(x, s) for p in _second_order_programs(name, "eigh")]
    got = [p(x, s) for p in _second_order_programs(name, "expm")]
    for g, w in zip(got, want, strict=True):
        assert np.all(np.isfinite(g))
        # The eigh route is exact to a few ulps at these points (test_second_order.py).
        assert_close(g, w, rtol=1e-11, atol=1e-11 * max(1.0, float(np.max(np.abs(w)))))


@pytest.mark.parametrize("method", ["eigh", "expm"])
def test_log_variant_at_huge_eigenvalues(dtype, method):
    # One eigenvalue 1e5 (float64) / 3e4 (float32) of s X X^T: L = lam_max + log(mult).
    top = 1e5 if dtype == np.float64 else 3e4
    x = jnp.asarray(with_singular_values(5, 3, [np.sqrt(top), 1.0, 0.5], seed=3), dtype)
    x_ref = np.asarray(x, np.float64)
    want, want_grad = mp_trace_expm_gram(x_ref, 1.0, log=True)
    value, grad = jax.value_and_grad(lambda x: log_trace_expm_gram(x, method=method))(x)
    # Conditioning: a relative rounding of x moves L by about eps * lam_max.
    eps = float(jnp.finfo(dtype).eps)
    assert_close(value, want, rtol=8 * eps * 1.0, atol=8 * eps * top)
    floor = 8 * eps * top * grad_scale(x_ref, 1.0, log=True)
    assert_close(grad, want_grad, rtol=RTOL[dtype], atol=floor)


@pytest.mark.parametrize("method", ["eigh", "expm"])
@pytest.mark.parametrize("scale", [-1e4, -1e8, -1e20])
def test_negative_scales_keep_the_bounds(dtype, method, scale):
    a = sample((8, 3), seed=3)
    x = jnp.asarray(np.concatenate([a, a], axis=1), dtype)  # rank 3
    value = float(trace_expm_gram(x, scale=scale, method=method))
    log_value = float(log_trace_expm_gram(x, scale=scale, method=method))
    grad = jax.grad(lambda x: trace_expm_gram(x, scale=scale, method=method))(x)
    assert 2 <= value <= 8 and log_value <= np.log(8) + 4 * float(jnp.finfo(dtype).eps)
    assert bool(jnp.all(jnp.isfinite(grad)))


@pytest.mark.parametrize("method", ["eigh", "expm"])
def test_nan_empty_and_batches(x32, method):
    x = jnp.asarray(sample((3, 5, 4)), jnp.float32)
    batched = trace_expm_gram(x, method=method)
    one_by_one = jnp.stack([trace_expm_gram(m, method=method) for m in x])
    assert_close(batched, one_by_one, rtol=2e-6)
    assert_close(jax.vmap(lambda m: trace_expm_gram(m, method=method))(x), batched, rtol=2e-6)
    bad = x.at[1, 0, 0].set(jnp.nan)
    out = trace_expm_gram(bad, method=method)
    assert bool(jnp.isnan(out[1])) and bool(jnp.all(jnp.isfinite(out[jnp.array([0, 2])])))
    assert float(trace_expm_gram(jnp.zeros((4, 0)), method=method)) == 4.0
    assert float(log_trace_expm_gram(jnp.zeros((0, 3)), method=method)) == -np.inf


def test_auto_is_one_of_the_methods(x32):
    x = jnp.asarray(sample((6, 4)), jnp.float32)
    auto = jax.value_and_grad(lambda x: trace_expm_gram(x, method="auto"))(x)
    chosen = [jax.value_and_grad(lambda x, m=m: trace_expm_gram(x, method=m))(x) for m in METHODS]
    assert any(all(np.array_equal(a, b) for a, b in zip(auto, c, strict=True)) for c in chosen)


@pytest.mark.parametrize(
    ("platform", "k", "batch", "dtype", "want"),
    [
        ("cpu", 64, 1, np.float32, "expm"),
        ("cpu", 2048, 1, np.float32, "expm"),
        ("cpu", 1023, 1, np.float64, "expm"),
        ("cpu", 1024, 1, np.float64, "eigh"),
        ("cpu", 1024, 8, np.float64, "expm"),
        ("gpu", 4096, 1, np.float64, "expm"),
        ("tpu", 4096, 1, np.float32, "expm"),
    ],
)
def test_auto_rule(platform, k, batch, dtype, want):
    assert methods.auto(platform=platform, k=k, batch=batch, dtype=dtype) == want


@pytest.mark.parametrize("method", ["", "EIGH", "pade", None, 3])
def test_unknown_method_is_a_trace_time_error(method):
    with pytest.raises(ValueError, match=r"trace_expm_gram: expected method to be one of 'auto'"):
        jax.jit(lambda x: trace_expm_gram(x, method=method)).lower(jnp.ones((3, 2)))


# Solvers, factorisations and callbacks that the expm method must never lower to.
_FORBIDDEN = ["syevd", "syevj", "eigh", "getrf", "potrf", "geqrf", "gesvd", "triangular"]
_FORBIDDEN += ["callback", "custom_call"]


def _hvp(f):
    def hvp(x):
        return jax.jvp(jax.grad(f), (x,), (jnp.ones_like(x),))[1]

    return hvp


# Plain values, value-and-grad and second derivatives (an HVP runs the Frechet
# derivative's transposable loop): every program the expm method lowers to.
_PROGRAMS = {"value": lambda f: f, "value_and_grad": jax.value_and_grad, "hvp": _hvp}


@pytest.mark.parametrize("program", sorted(_PROGRAMS))
@pytest.mark.parametrize("platform", ["cuda", "rocm", "tpu"])
@pytest.mark.parametrize("name", sorted(FUNCS))
def test_expm_lowers_to_products_only(platform, name, program):
    fn = FUNCS[name]
    program = jax.jit(_PROGRAMS[program](lambda x: fn(x, method="expm")))
    exported = export.export(program, platforms=[platform])(
        jax.ShapeDtypeStruct((64, 8), jnp.float32)
    )
    assert_products_only(exported)


def assert_products_only(exported: export.Exported) -> None:
    """The lowered module has matrix products and none of :data:`_FORBIDDEN`."""
    # Location metadata names Python functions (log_trace_and_weights contains
    # "eigh"): only the operations count.
    ops = " ".join(
        line.split(" loc(")[0] for line in exported.mlir_module().splitlines() if "=" in line
    )
    assert "dot_general" in ops
    for word in _FORBIDDEN:
        assert word not in ops, word
