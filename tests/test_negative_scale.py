"""Negative scales: the Gram is positive semi-definite, whatever rounding leaves.

For s <= 0 every eigenvalue of s X X^T is <= 0, so
max(n - m, 0) <= tr exp(s X X^T) <= n, log tr exp(s X X^T) <= log n, the scale
derivatives sum_i mu_i w_i and sum_i mu_i^2 e^{s mu_i} are >= 0, and
everything is finite. Rounding leaves the computed Gram eigenvalues an absolute
error of order eps |G|, which must never make s * mu large and positive.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtrace import log_trace_expm_gram, trace_expm_gram
from tests.reference import mp_trace_expm_gram, sample

# Every test runs once per method (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("auto_method")

FUNCS = {"trace": trace_expm_gram, "log": log_trace_expm_gram}
SCALES = [-1e2, -1e4, -1e6, -1e8, -1e12, -1e20]


def _tall(kind: str) -> np.ndarray:
    """8 x 6: rank 3 by repeated columns, a zero column, or full rank."""
    a = sample((8, 3), seed=3)
    if kind == "repeated":
        return np.concatenate([a, a], axis=1)
    if kind == "zero_column":
        return np.concatenate([a, np.zeros((8, 1)), sample((8, 2), seed=4)], axis=1)
    return sample((8, 6), seed=5)


def _x(kind: str, layout: str, dtype) -> jax.Array:
    x = _tall(kind)
    return jnp.asarray(x if layout == "tall" else x.T, dtype)


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    request.getfixturevalue("x64" if request.param == "float64" else "x32")
    return np.dtype(request.param)


def _programs(fn):
    """Jitted value-and-grad, d2/dx2 and d2/ds2 of fn(x, scale=s): compiled once per shape."""
    f = lambda x, s: fn(x, scale=s)  # noqa: E731
    return (
        jax.jit(jax.value_and_grad(f, argnums=(0, 1))),
        jax.jit(jax.hessian(f)),
        jax.jit(jax.hessian(f, argnums=1)),
    )


PROGRAMS = {name: _programs(fn) for name, fn in FUNCS.items()}


def _derivatives(name, x, s):
    """value, d/dx, d/ds, d2/dx2 and d2/ds2 at (x, s), as float64 NumPy arrays."""
    vg, hx, hs = PROGRAMS[name]
    value, (gx, gs) = vg(x, s)
    return (np.asarray(a, np.float64) for a in (value, gx, gs, hx(x, s), hs(x, s)))


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("kind", ["repeated", "zero_column", "full_rank"])
@pytest.mark.parametrize("layout", ["tall", "wide"])
def test_bounds_hold_for_every_negative_scale(dtype, layout, kind, scale):
    x = _x(kind, layout, dtype)
    n, m = x.shape
    s = jnp.asarray(scale, dtype)
    for name in FUNCS:
        value, gx, gs, hxx, hss = _derivatives(name, x, s)
        for what, a in [("value", value), ("grad x", gx), ("grad s", gs), ("hessian", hxx)]:
            assert np.all(np.isfinite(a)), (name, what, a)
        assert np.isfinite(hss), (name, hss)
        # sum_i mu_i w_i with mu_i >= 0 and w_i >= 0.
        assert gs >= 0, (name, gs)
        if name == "trace":
            assert max(n - m, 0) <= value <= n, value
            assert hss >= 0, hss  # sum_i mu_i^2 e^{s mu_i}
        else:
            assert value <= np.log(n), value
            if n > m:
                assert value >= np.log(n - m), value


def _gram_error_bound(x: np.ndarray, dtype) -> float:
    """A first-order bound on the absolute error of the computed Gram eigenvalues.

    Forming G = X^T X costs |dG| <= n eps |X|^T |X| (so <= n eps |X|_F^2 in norm)
    and a backward-stable eigh another k eps |G|_2.
    """
    eps = np.finfo(dtype).eps
    n, m = x.shape
    k = min(n, m)
    return eps * (max(n, m) * np.sum(x**2) + k * np.linalg.norm(x, 2) ** 2)


@pytest.mark.parametrize("scale", [-1.0, -30.0, -1e2, -1e4])
@pytest.mark.parametrize("kind", ["repeated", "zero_column", "full_rank"])
@pytest.mark.parametrize("layout", ["tall", "wide"])
def test_values_match_mpmath_within_the_eigenvalue_error(dtype, layout, kind, scale):
    """Each computed eigenvalue is off by at most delta, which moves s mu by |s| delta.

    For s < 0 and mu >= 0, |d e^{s mu} / d mu| <= |s|, so the trace moves by at
    most k |s| delta; log-sum-exp is 1-Lipschitz in the largest exponent change.
    """
    x = _x(kind, layout, dtype)
    x64 = np.asarray(x, np.float64)
    eps = np.finfo(dtype).eps
    k = min(x.shape)
    shift = abs(scale) * _gram_error_bound(x64, dtype)
    want, _ = mp_trace_expm_gram(x64, scale)
    want_log, _ = mp_trace_expm_gram(x64, scale, log=True)
    got = float(trace_expm_gram(x, scale=scale))
    assert abs(got - want) <= k * shift + 4 * k * eps * want, (got, want)
    got_log = float(log_trace_expm_gram(x, scale=scale))
    assert abs(got_log - want_log) <= shift + 4 * eps * abs(want_log), (got_log, want_log)
