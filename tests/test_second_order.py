"""Exact, finite second derivatives of trace_expm_gram (and log_trace_expm_gram) everywhere.

The references are the peer (autodiff through ``jax.scipy.linalg.expm`` of the
full n x n matrix, float64) and finite differences of gradients, both of
jaxtrace's own gradient and of the mpmath gradient from tests/reference.py.
The peer is checked to be finite before any comparison; at every point below it
is (measured), so no point needs the finite-difference fallback.

Every compiled function is defined once at module level and takes ``scale`` as
a traced argument, so each (shape, dtype) compiles once for the whole file;
Hessians are of tiny matrices only.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxtrace import log_trace_expm_gram, trace_expm_gram
from tests.reference import (
    log_peer,
    mp_dscale,
    mp_trace_expm_gram,
    orthonormal,
    peer,
    rel_err,
    with_singular_values,
)

# --------------------------------------------------------------------------
# Tolerances.
# float64: the brief asks for ~1e-9 relative against the peer; measured errors
# are <= 2e-14 at every point below, so 1e-9 leaves room for other BLAS/LAPACK
# builds without hiding an O(1) formula error.
TOL_F64 = 1e-9
# float32 against the float64 peer: measured <= ~1e-6 (a few ulps of float32
# through one eigh and a handful of k x k products); 2e-5 = ~170 eps32.
TOL_F32 = 2e-5
# Central differences of a float64 gradient with step h: truncation O(h^2 f''')
# plus rounding O(eps |grad| / h). With h = 1e-5 and the O(1) matrices here both
# are ~1e-10 relative (measured <= 3e-9 with an adversarial scale); 1e-6 still
# catches any wrong term of the Hessian.
FD_STEP = 1e-5
TOL_FD = 1e-6

OPS = {"trace": trace_expm_gram, "log": log_trace_expm_gram}
PEERS = {"trace": peer, "log": log_peer}
SCALES = [1.0, 0.5, -0.7, 0.0]


# --------------------------------------------------------------------------
# Degenerate points, all float64 numpy arrays built deterministically.


POINTS = {
    # X = 0: every eigenvalue is 0 (maximally repeated), gradient 0.
    "zero_tall": np.zeros((4, 3)),
    "zero_wide": np.zeros((3, 4)),
    # Orthonormal columns from QR: X^T X = I, three equal eigenvalues.
    "orthonormal_tall": orthonormal(np.random.default_rng(0), 4, 3),
    # Repeated singular values U diag(2, 2, 1) V^T, tall and wide.
    "repeated_sv_tall": with_singular_values(4, 3, [2.0, 2.0, 1.0], seed=1),
    "repeated_sv_wide": with_singular_values(3, 4, [2.0, 2.0, 1.0], seed=2),
    # Rank-deficient: a zero eigenvalue inside the small Gram as well.
    "rank_deficient_tall": with_singular_values(4, 3, [1.2, 0.8], seed=3),
    "rank_deficient_wide": with_singular_values(3, 4, [1.5], seed=4),
    # A multiple of the identity (square).
    "scaled_identity": 0.8 * np.eye(3),
    # n >> m, with a repeated singular value too.
    "tall_40x3": with_singular_values(40, 3, [1.0, 1.0, 0.5], seed=5),
}


# --------------------------------------------------------------------------
# Compiled derivative routes (one compilation per shape and dtype).

# Most functions below run a handful of times per shape, so XLA's compile time,
# not the run time, dominates this file; the LLVM optimisation passes are
# turned off for them (no effect on what is computed, only on how fast).
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def fast_jit(fn):
    """jax.jit, compiled without LLVM optimisations; cached per argument shapes/dtypes."""
    jitted = jax.jit(fn)
    cache = {}

    def call(*args):
        args = tuple(jnp.asarray(a) for a in args)
        key = (
            jax.dtypes.canonicalize_dtype(jnp.float64),
            tuple((a.shape, a.dtype) for a in args),
        )
        if key not in cache:
            lowered = jitted.lower(*args)
            try:
                cache[key] = lowered.compile(_FAST_COMPILE)
            except Exception:  # compiler options unknown to this XLA: plain compile
                cache[key] = lowered.compile()
        return cache[key](*args)

    return call


def _call(op: str):
    fn = OPS[op]
    return lambda x, s: fn(x, scale=s)


def _hvp(op: str):
    def hvp(x, s, v):
        return jax.jvp(lambda y: jax.grad(_call(op))(y, s), (x,), (v,))[1]

    return hvp


JOINT_HESSIAN = {op: fast_jit(jax.hessian(_call(op), argnums=(0, 1))) for op in OPS}
GRAD_X = {op: fast_jit(jax.grad(_call(op), argnums=0)) for op in OPS}
GRAD_S = {op: fast_jit(jax.grad(_call(op), argnums=1)) for op in OPS}
HVP = {op: fast_jit(_hvp(op)) for op in OPS}
# d/ds of grad_x, directly: forward mode over the scale of the reverse-mode gradient.
MIXED = {op: fast_jit(jax.jacfwd(jax.grad(_call(op), argnums=0), argnums=1)) for op in OPS}


@fast_jit
def _peer_joint_hessians(x, s):
    # Both peers in one compilation: compiling the peer's Hessian (the expm
    # Pade branches and squaring loop, differentiated twice) is the slowest
    # step of this file.
    return {op: jax.hessian(fn, argnums=(0, 1))(x, s) for op, fn in PEERS.items()}


class Blocks(NamedTuple):
    """The joint Hessian of f(x, s), as float64 numpy arrays."""

    xx: np.ndarray  # d2f/dx2, (n, m, n, m)
    xs: np.ndarray  # d/ds grad_x f, (n, m)
    sx: np.ndarray  # d/dx (df/ds), (n, m): equal to xs, but a separate JVP output
    ss: np.ndarray  # d2f/ds2, ()


def _blocks(joint) -> Blocks:
    (hxx, hxs), (hsx, hss) = joint
    return Blocks(*(np.asarray(a, dtype=np.float64) for a in (hxx, hxs, hsx, hss)))


def _joint(fn, x, s):
    return _blocks(fn(x, s))


@functools.cache
def _peer_hessians(point: str, scale: float):
    with jax.enable_x64(True):
        x = jnp.asarray(POINTS[point], dtype=jnp.float64)
        out = _peer_joint_hessians(x, jnp.asarray(scale, jnp.float64))
        return {op: _blocks(joint) for op, joint in out.items()}


def peer_hessian(point: str, op: str, scale: float):
    """The peer's joint Hessian blocks at a named point, in float64, checked finite."""
    blocks = _peer_hessians(point, scale)[op]
    for block in blocks:
        assert np.isfinite(block).all(), f"peer Hessian not finite at {point}, scale={scale}"
    return blocks


def _assert_close(got, want, tol, what, floor=0.0):
    """max|got - want| <= tol * max(max|want|, floor): relative, with an optional floor
    for quantities that vanish exactly (e.g. d2L/ds2 = Var_w(mu) = 0 at X = c I)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.isfinite(got).all(), f"{what}: not finite"
    err = np.max(np.abs(got - want), initial=0.0)
    size = max(np.max(np.abs(want), initial=0.0), floor)
    assert err <= tol * size, f"{what}: error {err:.3e} > {tol:.1e} * {size:.3e}"


def _mu_max_squared(x) -> float:
    """(largest eigenvalue of X X^T)^2: the natural size of d2/ds2 (e.g. Var_w(mu))."""
    return float(np.linalg.norm(np.asarray(x, dtype=np.float64), 2) ** 4)


# --------------------------------------------------------------------------
# Hessian against the peer at degenerate points.


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("point", list(POINTS))
def test_joint_hessian_matches_peer_float64(x64, point, scale, op):
    x = jnp.asarray(POINTS[point], dtype=jnp.float64)
    got = _joint(JOINT_HESSIAN[op], x, jnp.asarray(scale, jnp.float64))
    want = peer_hessian(point, op, scale)
    _assert_close(got.xx, want.xx, TOL_F64, "d2/dx2")
    _assert_close(got.xs, want.xs, TOL_F64, "d/ds grad_x")
    _assert_close(got.sx, want.sx, TOL_F64, "d/dx df/ds")
    _assert_close(got.ss, want.ss, TOL_F64, "d2/ds2", floor=_mu_max_squared(x))
    # The Hessian of a real function is symmetric.
    n, m = x.shape
    flat = got.xx.reshape(n * m, n * m)
    assert rel_err(flat, flat.T) <= TOL_F64
    _assert_close(got.sx, got.xs, TOL_F64, "mixed blocks not symmetric")


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("scale", [1.0, -0.7, 0.0])
@pytest.mark.parametrize("point", list(POINTS))
def test_joint_hessian_matches_peer_float32(x32, point, scale, op):
    x = jnp.asarray(POINTS[point], dtype=jnp.float32)
    (hxx, hxs), (hsx, hss) = JOINT_HESSIAN[op](x, jnp.asarray(scale, jnp.float32))
    assert hxx.dtype == hxs.dtype == hsx.dtype == hss.dtype == jnp.float32
    # The float32 operator at the float32-rounded point against the float64
    # peer at the float64 point: the rounding of x (~eps32) is inside TOL_F32.
    want = peer_hessian(point, op, scale)
    _assert_close(hxx, want.xx, TOL_F32, "d2/dx2 (f32)")
    _assert_close(hxs, want.xs, TOL_F32, "d/ds grad_x (f32)")
    _assert_close(hsx, want.sx, TOL_F32, "d/dx df/ds (f32)")
    _assert_close(hss, want.ss, TOL_F32, "d2/ds2 (f32)", floor=_mu_max_squared(x))


def test_hessian_at_zero_is_known_in_closed_form(x64):
    # Near X = 0 (n x m): f = n + s |X|_F^2 + O(|X|^4), so H = 2 s I on the n*m
    # entries; L = log f gives H = 2 s I / n. d2f/ds2 = tr((X X^T)^2 e^{sXX^T}) = 0.
    n, m, s = 4, 3, 0.5
    x = jnp.zeros((n, m))
    got = _joint(JOINT_HESSIAN["trace"], x, jnp.asarray(s))
    np.testing.assert_allclose(got.xx.reshape(n * m, n * m), 2 * s * np.eye(n * m), atol=1e-15)
    assert got.ss == 0.0 and np.all(got.xs == 0.0) and np.all(got.sx == 0.0)
    log = _joint(JOINT_HESSIAN["log"], x, jnp.asarray(s))
    np.testing.assert_allclose(log.xx.reshape(n * m, n * m), 2 * s * np.eye(n * m) / n, atol=1e-15)


# --------------------------------------------------------------------------
# All second-order routes agree, under jit and eagerly.


def _routes(op: str):
    def routes(x, s):
        def f(y):
            return OPS[op](y, scale=s)

        n, m = x.shape
        basis = jnp.eye(n * m, dtype=x.dtype).reshape(n * m, n, m)
        # HVPs along every basis direction rebuild the Hessian.
        hvps = jax.vmap(lambda v: jax.jvp(jax.grad(f), (x,), (v,))[1])(basis)
        return {
            "hessian": jax.hessian(f)(x),
            "jacrev(grad)": jax.jacrev(jax.grad(f))(x),
            "jacfwd(grad)": jax.jacfwd(jax.grad(f))(x),
            "vmap(HVP)": jnp.transpose(hvps.reshape(n, m, n, m), (2, 3, 0, 1)),
        }

    return routes


ROUTES = {op: fast_jit(_routes(op)) for op in OPS}
ROUTE_POINTS = ["zero_wide", "orthonormal_tall", "repeated_sv_tall", "scaled_identity"]


@pytest.mark.parametrize("op", list(OPS))
def test_second_order_routes_agree_with_peer_under_jit(x64, op):
    s = 0.5
    for point in ROUTE_POINTS:
        want = peer_hessian(point, op, s).xx
        for route, got in ROUTES[op](POINTS[point], s).items():
            _assert_close(got, want, TOL_F64, f"jit({route}) at {point}")


@pytest.mark.parametrize("op", list(OPS))
def test_hessian_agrees_with_peer_eagerly(x64, op):
    # Outside jit (op by op); one point only, as eager tracing is slow to warm up.
    s = -0.7
    point = "repeated_sv_wide"
    got = jax.hessian(lambda y: OPS[op](y, scale=s))(jnp.asarray(POINTS[point]))
    _assert_close(got, peer_hessian(point, op, s).xx, TOL_F64, "eager hessian")


@pytest.mark.parametrize("op", list(OPS))
def test_hvp_matches_peer_with_random_directions(x64, op):
    rng = np.random.default_rng(11)
    for point in ["repeated_sv_wide", "rank_deficient_tall", "rank_deficient_wide", "tall_40x3"]:
        x = jnp.asarray(POINTS[point])
        v = rng.standard_normal(x.shape)
        got = HVP[op](x, -0.7, v)
        want = np.tensordot(peer_hessian(point, op, -0.7).xx, v, axes=2)
        _assert_close(got, want, TOL_F64, f"HVP at {point}")


@pytest.mark.parametrize("op", list(OPS))
def test_second_order_routes_in_float32_at_degenerate_points(x32, op):
    for point in ROUTE_POINTS:
        x = jnp.asarray(POINTS[point], dtype=jnp.float32)
        want = peer_hessian(point, op, 0.5).xx
        for route, got in ROUTES[op](x, np.float32(0.5)).items():
            assert got.dtype == jnp.float32, route
            _assert_close(got, want, TOL_F32, f"float32 {route} at {point}")


@pytest.mark.parametrize("op", list(OPS))
def test_forward_mode_of_the_operator_itself_raises(op):
    # The operator is a jax.custom_vjp: first-order forward mode is refused by
    # JAX (only forward-over-reverse, as in jax.hessian, is supported).
    x = jnp.ones((3, 2))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(OPS[op], (x,), (x,))
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jacfwd(OPS[op])(x)


# --------------------------------------------------------------------------
# Batched: vmap over a batch of x, and a batch dimension summed.

BATCH = ["zero_tall", "orthonormal_tall", "repeated_sv_tall", "rank_deficient_tall"]


@pytest.mark.parametrize("op", list(OPS))
def test_vmap_of_hessian_over_a_batch_of_degenerate_points(x64, op):
    s = 0.5
    fn = OPS[op]
    xb = jnp.stack([jnp.asarray(POINTS[p]) for p in BATCH])
    got = jax.jit(jax.vmap(jax.hessian(lambda y: fn(y, scale=s))))(xb)
    assert got.shape == (len(BATCH), 4, 3, 4, 3)
    for i, point in enumerate(BATCH):
        _assert_close(got[i], peer_hessian(point, op, s).xx, TOL_F64, point)
    # Batched HVPs, one direction per matrix.
    vb = jnp.asarray(np.random.default_rng(3).standard_normal(xb.shape))
    hv = jax.jit(jax.vmap(_hvp(op), in_axes=(0, None, 0)))(xb, jnp.asarray(s), vb)
    for i, point in enumerate(BATCH):
        want = np.tensordot(peer_hessian(point, op, s).xx, np.asarray(vb[i]), axes=2)
        _assert_close(hv[i], want, TOL_F64, f"batched HVP {point}")


@pytest.mark.parametrize("op", list(OPS))
def test_hessian_of_batch_sum_is_block_diagonal(x64, op):
    s = -0.7
    fn = OPS[op]
    xb = jnp.stack([jnp.asarray(POINTS[p]) for p in BATCH])
    b = len(BATCH)
    (hxx, hxs), (hsx, hss) = jax.jit(jax.hessian(lambda y, t: fn(y, scale=t).sum(), (0, 1)))(
        xb, jnp.asarray(s)
    )
    assert hxx.shape == (b, 4, 3, b, 4, 3)
    assert hxs.shape == hsx.shape == (b, 4, 3)
    for i, point in enumerate(BATCH):
        want = peer_hessian(point, op, s)
        _assert_close(hxx[i, :, :, i], want.xx, TOL_F64, f"diagonal block {point}")
        _assert_close(hxs[i], want.xs, TOL_F64, f"d/ds grad_x block {point}")
        _assert_close(hsx[i], want.sx, TOL_F64, f"d/dx df/ds block {point}")
        for j in range(b):
            if j != i:
                assert np.all(np.asarray(hxx[i, :, :, j]) == 0.0), (i, j)
    want_ss = sum(peer_hessian(p, op, s).ss for p in BATCH)
    _assert_close(hss, want_ss, TOL_F64, "d2/ds2 of the batch sum")


# --------------------------------------------------------------------------
# Derivatives through the scale: against finite differences of gradients.


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("scale", [0.5, -0.7, 0.0])
@pytest.mark.parametrize(
    "point", ["zero_wide", "orthonormal_tall", "repeated_sv_wide", "rank_deficient_tall"]
)
def test_scale_second_derivatives_match_finite_differences(x64, point, scale, op):
    log = op == "log"
    x = jnp.asarray(POINTS[point])
    xn = POINTS[point]
    h = FD_STEP
    sp, sm = jnp.asarray(scale + h), jnp.asarray(scale - h)

    got = _joint(JOINT_HESSIAN[op], x, jnp.asarray(scale))
    hxs, hss = got.xs, got.ss
    # d/ds of grad_x, directly by forward-over-reverse.
    mixed = MIXED[op](x, scale)
    _assert_close(mixed, hxs, 1e-13, "jacfwd_s(grad_x) vs hessian block")

    # Finite differences of jaxtrace's own gradients ...
    fd_ss = (float(GRAD_S[op](x, sp)) - float(GRAD_S[op](x, sm))) / (2 * h)
    fd_xs = (np.asarray(GRAD_X[op](x, sp)) - np.asarray(GRAD_X[op](x, sm))) / (2 * h)
    floor = _mu_max_squared(xn)
    _assert_close(hss, fd_ss, TOL_FD, "d2/ds2 vs FD of jaxtrace d/ds", floor)
    _assert_close(hxs, fd_xs, TOL_FD, "d2/dxds vs FD of jaxtrace grad_x")
    # ... and of the mpmath gradients, which share no code with jaxtrace.
    mp_ss = (mp_dscale(xn, scale + h, log=log) - mp_dscale(xn, scale - h, log=log)) / (2 * h)
    mp_xs = (
        mp_trace_expm_gram(xn, scale + h, log=log)[1]
        - mp_trace_expm_gram(xn, scale - h, log=log)[1]
    ) / (2 * h)
    _assert_close(hss, mp_ss, TOL_FD, "d2/ds2 vs FD of mpmath d/ds", floor)
    _assert_close(hxs, mp_xs, TOL_FD, "d2/dxds vs FD of mpmath grad_x")
    # d/dx (df/ds) by central differences in x of the mpmath d/ds, entry by entry.
    fd_sx = np.empty_like(xn)
    for idx in np.ndindex(xn.shape):
        e = np.zeros_like(xn)
        e[idx] = h
        fd_sx[idx] = (mp_dscale(xn + e, scale, log=log) - mp_dscale(xn - e, scale, log=log)) / (
            2 * h
        )
    _assert_close(got.sx, fd_sx, TOL_FD, "d/dx df/ds vs FD of mpmath d/ds")


@pytest.mark.parametrize("op", list(OPS))
def test_hessian_matches_finite_differences_of_mpmath_gradient(x64, op):
    """Full d2/dx2 column by column against the mpmath gradient (no peer involved)."""
    log = op == "log"
    for point, scale in [("repeated_sv_wide", 0.5), ("orthonormal_tall", -0.7)]:
        xn = POINTS[point]
        hxx = _joint(JOINT_HESSIAN[op], jnp.asarray(xn), jnp.asarray(scale)).xx
        n, m = xn.shape
        fd = np.empty((n, m, n, m))
        for i in range(n):
            for j in range(m):
                e = np.zeros_like(xn)
                e[i, j] = FD_STEP
                gp = mp_trace_expm_gram(xn + e, scale, log=log)[1]
                gm = mp_trace_expm_gram(xn - e, scale, log=log)[1]
                fd[:, :, i, j] = (gp - gm) / (2 * FD_STEP)
        _assert_close(hxx, fd, TOL_FD, f"hessian vs mpmath FD at {point}")


# --------------------------------------------------------------------------
# Property-based: random shapes, scales and rank-deficient constructions.

_elements = st.floats(-1.0, 1.0, allow_nan=False, allow_subnormal=False, width=64)
# |scale| >= 1e-100 (or 0): below that, H v ~ 2 s v falls into the subnormals,
# which XLA:CPU flushes to zero, and the comparison would test the FPU instead.
_scales = st.floats(-1.0, 1.0, allow_nan=False).filter(lambda s: s == 0 or abs(s) >= 1e-100)
_dims = st.integers(1, 5)


@st.composite
def _full_matrices(draw):
    n, m = draw(_dims), draw(_dims)
    return draw(hnp.arrays(np.float64, (n, m), elements=_elements))


@st.composite
def _rank_deficient_matrices(draw):
    n, m = draw(_dims), draw(_dims)
    r = draw(st.integers(0, min(n, m) - 1))
    a = draw(hnp.arrays(np.float64, (n, r), elements=_elements))
    b = draw(hnp.arrays(np.float64, (m, r), elements=_elements))
    return a @ b.T


@fast_jit
def _second_order_and_fd(x, s, v):
    """For both operators: Hessian, HVP along v and grad(x +- h v), in one compilation."""
    out = {}
    for op in OPS:
        grad = jax.grad(_call(op))
        hvp = jax.jvp(lambda y, grad=grad: grad(y, s), (x,), (v,))[1]
        out[op] = (
            jax.hessian(_call(op))(x, s),
            hvp,
            grad(x + FD_STEP * v, s),
            grad(x - FD_STEP * v, s),
        )
    return out


def _check_against_finite_differences(x: np.ndarray, scale: float, seed: int) -> None:
    v = np.random.default_rng(seed).standard_normal(x.shape)
    n, m = x.shape
    with jax.enable_x64(True):
        results = _second_order_and_fd(x, scale, v)
    for op, (hess, hv, gp, gm) in results.items():
        hess, hv = np.asarray(hess), np.asarray(hv)
        assert np.isfinite(hess).all() and np.isfinite(hv).all(), op
        flat = hess.reshape(n * m, n * m)
        assert rel_err(flat, flat.T) <= 1e-12, f"{op}: Hessian not symmetric"
        # Errors are measured against |H| |v|_1, the size of any H v, so that a
        # direction in which H v happens to be small does not inflate them.
        size = np.max(np.abs(hess)) * np.sum(np.abs(v))
        assert np.max(np.abs(hv - np.tensordot(hess, v, axes=2))) <= 1e-12 * size, op
        # Central differences of jaxtrace's gradient and of the mpmath gradient.
        fd_own = (np.asarray(gp) - np.asarray(gm)) / (2 * FD_STEP)
        log = op == "log"
        mp_p = mp_trace_expm_gram(x + FD_STEP * v, scale, log=log)[1]
        mp_m = mp_trace_expm_gram(x - FD_STEP * v, scale, log=log)[1]
        fd_mp = (mp_p - mp_m) / (2 * FD_STEP)
        for name, fd in [("own gradient", fd_own), ("mpmath gradient", fd_mp)]:
            err = np.max(np.abs(hv - fd))
            assert err <= TOL_FD * size, f"{op}: HVP vs FD of {name}: {err:.2e}"


_SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(x=_full_matrices(), scale=_scales, seed=st.integers(0, 2**32 - 1))
def test_property_hessian_and_hvp_match_finite_differences(x, scale, seed):
    _check_against_finite_differences(x, scale, seed)


@_SETTINGS
@given(x=_rank_deficient_matrices(), scale=_scales, seed=st.integers(0, 2**32 - 1))
def test_property_rank_deficient_hessian_matches_finite_differences(x, scale, seed):
    _check_against_finite_differences(x, scale, seed)
