"""Prints the accuracy figures quoted in issues and notes: ``python -m tests.accuracy_report``.

Not a test module (pytest collects ``test_*.py`` only); the bounds themselves
are asserted in the test suite. References are independent of jaxtrace: mpmath
(``tests.reference``) and autodiff through ``jax.scipy.linalg.expm`` (the peer).
Every figure is given for both methods, side by side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtrace import log_trace_expm, log_trace_expm_gram, trace_expm, trace_expm_gram
from jaxtrace._src import taylor
from tests.reference import (
    log_peer,
    mp_dscale,
    mp_expm,
    mp_trace_expm,
    mp_trace_expm_gram,
    orthonormal,
    peer,
    rel_err,
    square_cases,
    square_tolerance,
    with_singular_values,
)

METHODS = ("eigh", "expm")


def first_order() -> None:
    """Value, gradient and d/dscale against mpmath, worst over shapes and scales."""
    for dt, method in [(dt, m) for dt in ("float32", "float64") for m in METHODS]:
        f = lambda x, s, m=method: trace_expm_gram(x, scale=s, method=m)  # noqa: E731
        worst = dict.fromkeys(("value", "grad_x", "d/dscale"), 0.0)
        with jax.enable_x64(dt == "float64"):
            for shape in [(5, 3), (3, 5), (4, 4), (1, 1)]:
                for s in [1.0, 0.3, 0.0, -0.7, 2.5]:
                    rng = np.random.default_rng([0, *shape])
                    x = jnp.asarray(0.5 * rng.standard_normal(shape), dt)
                    xr = np.asarray(x, np.float64)
                    v, g = mp_trace_expm_gram(xr, s)
                    jv, (jg, jd) = jax.value_and_grad(f, argnums=(0, 1))(x, jnp.asarray(s, dt))
                    worst["value"] = max(worst["value"], rel_err(jv, v), rel_err(f(x, s), v))
                    worst["grad_x"] = max(worst["grad_x"], rel_err(jg, g))
                    worst["d/dscale"] = max(worst["d/dscale"], rel_err(jd, mp_dscale(xr, s)))
        figures = ", ".join(f"{k} {e:.1e}" for k, e in worst.items())
        print(f"first order vs mpmath, {dt}, {method}: {figures}")


DEGENERATE = {
    "zero 4x3": np.zeros((4, 3)),
    "zero 3x4": np.zeros((3, 4)),
    "orthonormal 4x3": orthonormal(np.random.default_rng(0), 4, 3),
    "repeated sv (2,2,1) 4x3": with_singular_values(4, 3, [2.0, 2.0, 1.0]) / 2,
    "repeated sv (2,2,1) 3x4": with_singular_values(3, 4, [2.0, 2.0, 1.0]) / 2,
    "rank-deficient 4x3": with_singular_values(4, 3, [1.0, 0.5]),
    "rank-deficient 3x4": with_singular_values(3, 4, [1.0, 0.5]),
    "0.8 I 3x3": 0.8 * np.eye(3),
    "40x3 repeated sv": with_singular_values(40, 3, [0.7, 0.7, 0.3]),
}


def hessians() -> None:
    """Hessian in x against the peer's at repeated eigenvalues, worst over four scales."""
    pairs = [("trace", trace_expm_gram, peer), ("log", log_trace_expm_gram, log_peer)]
    for dt in ("float64", "float32"):
        with jax.enable_x64(True):
            for name, x in DEGENERATE.items():
                errs = []
                for (fname, f, ref), method in [(p, m) for p in pairs for m in METHODS]:
                    worst = 0.0
                    for s in [1.0, 0.5, -0.7, 0.0]:
                        want = jax.hessian(lambda y, s=s, ref=ref: ref(y, s))(jnp.asarray(x))
                        xs = jnp.asarray(x, dt)
                        hess = jax.hessian(lambda y, s=s, f=f, m=method: f(y, scale=s, method=m))
                        got = jax.jit(hess)(xs)
                        if not bool(jnp.all(jnp.isfinite(got))):
                            worst = float("nan")
                            break
                        worst = max(worst, rel_err(got, want))
                    errs.append(f"{fname} {method} {worst:.1e}")
                print(f"hessian vs peer, {dt}, {name}: " + ", ".join(errs))


LARGE = [
    ("float32", (4, 3), [300.0, 120.0, 5.0]),
    ("float32", (4, 3), [3000.0, 1000.0, 1.0]),
    ("float32", (3, 4), [3.0e4, 1.0e4, 2.0]),
    ("float64", (4, 3), [700.0, 300.0, 1.0]),
    ("float64", (3, 4), [1.0e4, 5.0e3, 3.0]),
    ("float64", (4, 3), [1.0e5, 5.0e4, 3.0]),
    ("float64", (4, 3), [1.0e5, 1.0e5, 3.0]),
]


def large_eigenvalues() -> None:
    """log_trace_expm_gram against mpmath where the plain trace overflows.

    The conditioning of ell itself: a relative perturbation u of G moves ell by
    up to u lambda_max, i.e. ell's relative error is about u (u the unit
    roundoff). The expm method's q squarings amplify rounding about 2^q-fold,
    to about u rho(B) / theta: the same order (printed as "u lambda_max / ell").
    """
    for (dt, shape, lam), method in [(c, m) for c in LARGE for m in METHODS]:
        f = lambda x, s, m=method: log_trace_expm_gram(x, scale=s, method=m)  # noqa: E731
        with jax.enable_x64(dt == "float64"):
            x = jnp.asarray(with_singular_values(*shape, np.sqrt(lam)), dt)
            xr = np.asarray(x, np.float64)
            v, g = mp_trace_expm_gram(xr, 1.0, log=True)
            jv, (jg, jd) = jax.value_and_grad(f, argnums=(0, 1))(x, jnp.asarray(1.0, dt))
            plain = trace_expm_gram(x, method=method)
            gram = xr.T @ xr if shape[0] >= shape[1] else xr @ xr.T
            q = int(taylor._squarings(jnp.asarray(gram, dt)))
            u = float(jnp.finfo(dt).eps) / 2
            print(
                f"log vs mpmath, {dt}, {method}, lambda_max {max(lam):g} (q = {q}, "
                f"u lambda_max / ell = {u * max(lam) / abs(v):.1e}): value {rel_err(jv, v):.1e}, "
                f"grad_x {rel_err(jg, g):.1e}, "
                f"d/dscale {rel_err(jd, mp_dscale(xr, 1.0, log=True)):.1e}; "
                f"finite: {bool(jnp.isfinite(jv) & jnp.all(jnp.isfinite(jg)))}; "
                f"plain trace {float(plain):.3g}"
            )


def square_matrices() -> None:
    """trace_expm and log_trace_expm against mpmath's expm of the matrix, with the tests' bound."""
    for dt in ("float32", "float64"):
        with jax.enable_x64(dt == "float64"):
            for name, a in sorted(square_cases().items()):
                a = a.astype(dt)
                parts = []
                for fn_name, fn in (("trace", trace_expm), ("log", log_trace_expm)):
                    ref_value, ref_grad = mp_trace_expm(a, fn_name == "log")
                    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(a))
                    grad_err = np.max(np.abs(np.asarray(grad, np.float64) - ref_grad))
                    parts.append(
                        f"{fn_name} value {abs(float(value) - ref_value) / abs(ref_value):.1e} "
                        f"grad {grad_err / np.max(np.abs(ref_grad)):.1e} "
                        f"(bound {square_tolerance(a, dt, fn_name == 'log'):.0e})"
                    )
                d = a.shape[0]
                print(f"square vs mpmath, {dt}, {name} {d}x{d}: " + "; ".join(parts))


def near_dags(count: int = 200, d: int = 10) -> None:
    """float32 tr exp(W o W) of random sparse W, trace_expm against jax.scipy.linalg.expm."""
    rng = np.random.default_rng(0)
    ours, peers = [], []
    f = jax.jit(trace_expm)
    g = jax.jit(lambda a: jnp.trace(jax.scipy.linalg.expm(a)))
    for _ in range(count):
        w = rng.standard_normal((d, d)) * (rng.random((d, d)) < 0.3) * 0.5
        a = (w * w).astype(np.float32)
        ref = float(np.trace(mp_expm(a).astype(np.float64)))
        ours.append(abs(float(f(jnp.asarray(a))) - ref) / ref)
        peers.append(abs(float(g(jnp.asarray(a))) - ref) / ref)
    print(
        f"near-DAGs, float32, {count} sparse {d}x{d} W: tr exp(W o W) relative error "
        f"trace_expm max {max(ours):.1e} (median {np.median(ours):.1e}), "
        f"jax.scipy.linalg.expm max {max(peers):.1e} (median {np.median(peers):.1e})"
    )


if __name__ == "__main__":
    first_order()
    hessians()
    large_eigenvalues()
    square_matrices()
    near_dags()
