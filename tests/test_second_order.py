"""Exact, finite second derivatives of trace_expm_gram (and log_trace_expm_gram) everywhere.

The references are the peer (autodiff through ``jax.scipy.linalg.expm`` of the
full n x n matrix, float64) and finite differences of gradients, both of
jaxtrace's own gradient and of the mpmath gradient from tests/reference.py.
The peer is checked to be finite before any comparison; at every point below it
is (measured), so no point needs the finite-difference fallback.

Every compiled function is defined once at module level and takes ``scale`` as
a traced argument, so each (shape, dtype) compiles once for the whole file;
Hessians are of tiny matrices only.

Every entry is compared, as |got - want| <= rtol |want| + atol, with atol a
floor at the natural size of that entry (tests/reference.py).
"""

from __future__ import annotations

import contextlib
import contextvars
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
    assert_close,
    expm_condition,
    gram_eigenvalues,
    hessian_scale,
    log_peer,
    mixed_scale,
    mp_dscale,
    mp_trace_expm_gram,
    orthonormal,
    peer,
    with_singular_values,
)

# Every test runs once per method (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("auto_method")

# --------------------------------------------------------------------------
# Tolerances.
F64, F32 = np.dtype(np.float64), np.dtype(np.float32)
# Relative, per dtype. float64: the brief asks for ~1e-9 relative against the
# peer; measured errors are <= 2e-14 at every point below, so 1e-9 leaves room
# for other BLAS/LAPACK builds without hiding an O(1) formula error. float32
# against the float64 peer: measured <= ~1e-6 (a few ulps of float32 through
# one eigh and a handful of k x k products); 2e-5 = ~170 eps32.
RTOL = {F64: 1e-9, F32: 2e-5}
# Absolute floor per dtype, in units of an entry's natural size times
# expm_condition (tests/reference.py): the rounding of X, G, eigh and the
# k x k products. Measured <= 7.3 eps (float64 against the peer) and <= 2.3
# eps32 (float32 against the float64 peer, the rounding of x included).
ATOL = {F64: 16 * 2.0**-52, F32: 16 * 2.0**-23}
# XLA:CPU flushes subnormal results to zero: where a product of tiny entries
# underflows, the error is absolute, up to a few smallest normal numbers.
TINY = {F64: 16 * np.finfo(np.float64).tiny, F32: 16 * np.finfo(np.float32).tiny}
# Central differences of a float64 gradient with step h: truncation O(h^2 f''')
# plus rounding O(eps |grad| / h). With h = 1e-5 and the O(1) matrices here both
# are ~1e-10 relative (measured <= 3e-9 with an adversarial scale); 1e-6 still
# catches any wrong term of the Hessian. Both errors are absolute, at the
# natural size of an entry (measured <= 8e-10 of it): TOL_FD of it is the floor.
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
# Users run the optimised program (fusions, contracted multiply-adds, other
# rounding): one case of every check also runs under default_compile().
_DEFAULT_COMPILE = contextvars.ContextVar("default_compile", default=False)
_DEFAULT_CALLS = [0]  # calls of fast_jit functions under default_compile()


@contextlib.contextmanager
def default_compile():
    """fast_jit functions compile with XLA's default options inside this block."""
    token = _DEFAULT_COMPILE.set(True)
    try:
        yield
    finally:
        _DEFAULT_COMPILE.reset(token)


def fast_jit(fn):
    """jax.jit, compiled without LLVM optimisations unless under default_compile();
    cached per argument shapes/dtypes."""
    jitted = jax.jit(fn)
    cache = {}

    def call(*args):
        args = tuple(jnp.asarray(a) for a in args)
        default = _DEFAULT_COMPILE.get()
        _DEFAULT_CALLS[0] += default
        key = (
            default,
            jax.dtypes.canonicalize_dtype(jnp.float64),
            tuple((a.shape, a.dtype) for a in args),
        )
        if key not in cache:
            lowered = jitted.lower(*args)
            try:
                cache[key] = lowered.compile() if default else lowered.compile(_FAST_COMPILE)
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


def _assert_close(got, want, what, *, rtol, atol):
    """Entry by entry, |got - want| <= rtol |want| + atol (atol a floor per entry)."""
    got = np.asarray(got, dtype=np.float64)
    assert np.isfinite(got).all(), f"{what}: not finite"
    assert_close(got, want, rtol=rtol, atol=atol, what=what)


def _ss_scale(x, scale, op) -> float:
    """The natural size of d2f/ds2: sum_i mu_i^2 w_i <= mu_max^2 sum_i w_i, with w_i =
    e^(s mu_i) (the trace) or the softmax weights (the log, where it is Var_w(mu))."""
    mu = gram_eigenvalues(x)
    lam = scale * mu
    if op == "trace":
        total = np.sum(np.exp(lam))
    else:
        n, m = np.shape(x)
        top = max(lam.max(), 0.0) if n > m else lam.max()
        weights = np.exp(lam - top)
        total = weights.sum() / (weights.sum() + max(n - m, 0) * np.exp(-top))
    return float(mu.max(initial=0.0) ** 2 * total)


def sizes(x, scale, op) -> Blocks:
    """The natural size of every entry of the joint Hessian at (x, scale), float64."""
    x = np.asarray(x, dtype=np.float64)
    log = op == "log"
    mixed = mixed_scale(x, scale, log=log)
    return Blocks(hessian_scale(x, scale, log=log), mixed, mixed, _ss_scale(x, scale, op))


def floors(x, scale, op, dtype) -> Blocks:
    """The rounding floors (ATOL) of the joint Hessian's entries at (x, scale)."""
    dtype = np.dtype(dtype)
    c = ATOL[dtype] * float(expm_condition(np.asarray(x, np.float64), scale))
    return Blocks(*(c * np.asarray(size) + TINY[dtype] for size in sizes(x, scale, op)))


def _assert_blocks_close(got: Blocks, want: Blocks, floor: Blocks, rtol: float, what: str):
    for name, g, w, a in zip(Blocks._fields, got, want, floor, strict=True):
        _assert_close(g, w, f"{what} {name}", rtol=rtol, atol=a)


def _assert_symmetric(hxx, floor_xx, rtol, what):
    """The Hessian of a real function is symmetric (floors are, too)."""
    n, m = hxx.shape[:2]
    flat = np.asarray(hxx, dtype=np.float64).reshape(n * m, n * m)
    _assert_close(flat, flat.T, what, rtol=rtol, atol=floor_xx.reshape(n * m, n * m))


# --------------------------------------------------------------------------
# Hessian against the peer at degenerate points.


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("point", list(POINTS))
def test_joint_hessian_matches_peer_float64(x64, point, scale, op):
    x = jnp.asarray(POINTS[point], dtype=jnp.float64)
    got = _joint(JOINT_HESSIAN[op], x, jnp.asarray(scale, jnp.float64))
    floor = floors(POINTS[point], scale, op, F64)
    _assert_blocks_close(got, peer_hessian(point, op, scale), floor, RTOL[F64], "vs peer")
    _assert_symmetric(got.xx, floor.xx, RTOL[F64], "d2/dx2 not symmetric")
    _assert_close(got.sx, got.xs, "mixed blocks not symmetric", rtol=RTOL[F64], atol=floor.xs)


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("scale", [1.0, -0.7, 0.0])
@pytest.mark.parametrize("point", list(POINTS))
def test_joint_hessian_matches_peer_float32(x32, point, scale, op):
    x = jnp.asarray(POINTS[point], dtype=jnp.float32)
    joint = JOINT_HESSIAN[op](x, jnp.asarray(scale, jnp.float32))
    (hxx, hxs), (hsx, hss) = joint
    assert hxx.dtype == hxs.dtype == hsx.dtype == hss.dtype == jnp.float32
    # The float32 operator at the float32-rounded point against the float64
    # peer at the float64 point: the rounding of x (~eps32) is inside the floors.
    floor = floors(POINTS[point], scale, op, F32)
    want = peer_hessian(point, op, scale)
    _assert_blocks_close(_blocks(joint), want, floor, RTOL[F32], "float32 vs peer")


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
def test_second_order_routes_agree_with_peer_under_jit(x64, op, points=ROUTE_POINTS):
    s = 0.5
    for point in points:
        want = peer_hessian(point, op, s).xx
        atol = floors(POINTS[point], s, op, F64).xx
        for route, got in ROUTES[op](POINTS[point], s).items():
            _assert_close(got, want, f"jit({route}) at {point}", rtol=RTOL[F64], atol=atol)


@pytest.mark.parametrize("op", list(OPS))
def test_hessian_agrees_with_peer_eagerly(x64, op):
    # Outside jit (op by op); one point only, as eager tracing is slow to warm up.
    s = -0.7
    point = "repeated_sv_wide"
    got = jax.hessian(lambda y: OPS[op](y, scale=s))(jnp.asarray(POINTS[point]))
    atol = floors(POINTS[point], s, op, F64).xx
    _assert_close(got, peer_hessian(point, op, s).xx, "eager hessian", rtol=RTOL[F64], atol=atol)


def _hvp_floor(floor_xx, v):
    """The floor of each entry of H v: the floors of H weighted by |v|."""
    return np.tensordot(floor_xx, np.abs(np.asarray(v, np.float64)), axes=2)


HVP_POINTS = ["repeated_sv_wide", "rank_deficient_tall", "rank_deficient_wide", "tall_40x3"]


@pytest.mark.parametrize("op", list(OPS))
def test_hvp_matches_peer_with_random_directions(x64, op, points=HVP_POINTS):
    rng = np.random.default_rng(11)
    for point in points:
        x = jnp.asarray(POINTS[point])
        v = rng.standard_normal(x.shape)
        got = HVP[op](x, -0.7, v)
        want = np.tensordot(peer_hessian(point, op, -0.7).xx, v, axes=2)
        atol = _hvp_floor(floors(POINTS[point], -0.7, op, F64).xx, v)
        _assert_close(got, want, f"HVP at {point}", rtol=RTOL[F64], atol=atol)


@pytest.mark.parametrize("op", list(OPS))
def test_second_order_routes_in_float32_at_degenerate_points(x32, op, points=ROUTE_POINTS):
    for point in points:
        x = jnp.asarray(POINTS[point], dtype=jnp.float32)
        want = peer_hessian(point, op, 0.5).xx
        atol = floors(POINTS[point], 0.5, op, F32).xx
        for route, got in ROUTES[op](x, np.float32(0.5)).items():
            assert got.dtype == jnp.float32, route
            _assert_close(got, want, f"float32 {route} at {point}", rtol=RTOL[F32], atol=atol)


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
    floor = {point: floors(POINTS[point], s, op, F64).xx for point in BATCH}
    for i, point in enumerate(BATCH):
        want = peer_hessian(point, op, s).xx
        _assert_close(got[i], want, point, rtol=RTOL[F64], atol=floor[point])
    # Batched HVPs, one direction per matrix.
    vb = jnp.asarray(np.random.default_rng(3).standard_normal(xb.shape))
    hv = jax.jit(jax.vmap(_hvp(op), in_axes=(0, None, 0)))(xb, jnp.asarray(s), vb)
    for i, point in enumerate(BATCH):
        want = np.tensordot(peer_hessian(point, op, s).xx, np.asarray(vb[i]), axes=2)
        atol = _hvp_floor(floor[point], vb[i])
        _assert_close(hv[i], want, f"batched HVP {point}", rtol=RTOL[F64], atol=atol)


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
    floor = {point: floors(POINTS[point], s, op, F64) for point in BATCH}
    for i, point in enumerate(BATCH):
        want, atol = peer_hessian(point, op, s), floor[point]
        for name, got in (("xx", hxx[i, :, :, i]), ("xs", hxs[i]), ("sx", hsx[i])):
            w, a = getattr(want, name), getattr(atol, name)
            _assert_close(got, w, f"{name} block {point}", rtol=RTOL[F64], atol=a)
        for j in range(b):
            if j != i:
                assert np.all(np.asarray(hxx[i, :, :, j]) == 0.0), (i, j)
    want_ss = sum(peer_hessian(p, op, s).ss for p in BATCH)
    atol_ss = sum(floor[p].ss for p in BATCH)
    _assert_close(hss, want_ss, "d2/ds2 of the batch sum", rtol=RTOL[F64], atol=atol_ss)


# --------------------------------------------------------------------------
# Derivatives through the scale: against finite differences of gradients.


def _fd_close(got, want, size, what):
    """Central differences err absolutely, at the natural size of each entry."""
    _assert_close(got, want, what, rtol=0.0, atol=TOL_FD * np.asarray(size))


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
    size = sizes(xn, scale, op)
    # d/ds of grad_x, directly by forward-over-reverse.
    mixed = MIXED[op](x, scale)
    atol = floors(xn, scale, op, F64).xs
    _assert_close(mixed, hxs, "jacfwd_s(grad_x) vs hessian block", rtol=1e-13, atol=atol)

    # Finite differences of jaxtrace's own gradients ...
    fd_ss = (float(GRAD_S[op](x, sp)) - float(GRAD_S[op](x, sm))) / (2 * h)
    fd_xs = (np.asarray(GRAD_X[op](x, sp)) - np.asarray(GRAD_X[op](x, sm))) / (2 * h)
    _fd_close(hss, fd_ss, size.ss, "d2/ds2 vs FD of jaxtrace d/ds")
    _fd_close(hxs, fd_xs, size.xs, "d2/dxds vs FD of jaxtrace grad_x")
    # ... and of the mpmath gradients, which share no code with jaxtrace.
    mp_ss = (mp_dscale(xn, scale + h, log=log) - mp_dscale(xn, scale - h, log=log)) / (2 * h)
    mp_xs = (
        mp_trace_expm_gram(xn, scale + h, log=log)[1]
        - mp_trace_expm_gram(xn, scale - h, log=log)[1]
    ) / (2 * h)
    _fd_close(hss, mp_ss, size.ss, "d2/ds2 vs FD of mpmath d/ds")
    _fd_close(hxs, mp_xs, size.xs, "d2/dxds vs FD of mpmath grad_x")
    # d/dx (df/ds) by central differences in x of the mpmath d/ds, entry by entry.
    fd_sx = np.empty_like(xn)
    for idx in np.ndindex(xn.shape):
        e = np.zeros_like(xn)
        e[idx] = h
        fd_sx[idx] = (mp_dscale(xn + e, scale, log=log) - mp_dscale(xn - e, scale, log=log)) / (
            2 * h
        )
    _fd_close(got.sx, fd_sx, size.sx, "d/dx df/ds vs FD of mpmath d/ds")


FD_HESSIAN_POINTS = [("repeated_sv_wide", 0.5), ("orthonormal_tall", -0.7)]


@pytest.mark.parametrize("op", list(OPS))
def test_hessian_matches_finite_differences_of_mpmath_gradient(x64, op, points=FD_HESSIAN_POINTS):
    """Full d2/dx2 column by column against the mpmath gradient (no peer involved)."""
    log = op == "log"
    for point, scale in points:
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
        size = hessian_scale(xn, scale, log=log)
        _fd_close(hxx, fd, size, f"hessian vs mpmath FD at {point}")


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
    with jax.enable_x64(True):
        results = _second_order_and_fd(x, scale, v)
    for op, (hess, hv, gp, gm) in results.items():
        hess, hv = np.asarray(hess), np.asarray(hv)
        assert np.isfinite(hess).all() and np.isfinite(hv).all(), op
        floor = floors(x, scale, op, F64).xx
        _assert_symmetric(hess, floor, 1e-12, f"{op}: Hessian not symmetric")
        _assert_close(
            hv, np.tensordot(hess, v, axes=2), f"{op}: HVP", rtol=1e-12, atol=_hvp_floor(floor, v)
        )
        # Central differences of jaxtrace's gradient and of the mpmath gradient.
        size = np.tensordot(hessian_scale(x, scale, log=op == "log"), np.abs(v), axes=2)
        fd_own = (np.asarray(gp) - np.asarray(gm)) / (2 * FD_STEP)
        log = op == "log"
        mp_p = mp_trace_expm_gram(x + FD_STEP * v, scale, log=log)[1]
        mp_m = mp_trace_expm_gram(x - FD_STEP * v, scale, log=log)[1]
        fd_mp = (mp_p - mp_m) / (2 * FD_STEP)
        for name, fd in [("own gradient", fd_own), ("mpmath gradient", fd_mp)]:
            _fd_close(hv, fd, size, f"{op}: HVP vs FD of {name}")


_SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(x=_full_matrices(), scale=_scales, seed=st.integers(0, 2**32 - 1))
def test_property_hessian_and_hvp_match_finite_differences(x, scale, seed):
    _check_against_finite_differences(x, scale, seed)


@_SETTINGS
@given(x=_rank_deficient_matrices(), scale=_scales, seed=st.integers(0, 2**32 - 1))
def test_property_rank_deficient_hessian_matches_finite_differences(x, scale, seed):
    _check_against_finite_differences(x, scale, seed)


# --------------------------------------------------------------------------
# The same checks through XLA's default (optimising) compile, one case each:
# the fast compile above is not what users run (fusions, other rounding).

# name: (check, its dtype-mode fixture, the arguments after that fixture)
DEFAULT_COMPILE_CASES = {
    "joint-f64-trace": (
        test_joint_hessian_matches_peer_float64,
        "x64",
        ("rank_deficient_wide", 0.5, "trace"),
    ),
    "joint-f64-log": (
        test_joint_hessian_matches_peer_float64,
        "x64",
        ("repeated_sv_wide", -0.7, "log"),
    ),
    "joint-f32": (test_joint_hessian_matches_peer_float32, "x32", ("repeated_sv_tall", 1.0, "log")),
    "closed-form-zero": (test_hessian_at_zero_is_known_in_closed_form, "x64", ()),
    "routes": (
        test_second_order_routes_agree_with_peer_under_jit,
        "x64",
        ("trace", ["repeated_sv_tall"]),
    ),
    "hvp": (test_hvp_matches_peer_with_random_directions, "x64", ("log", ["tall_40x3"])),
    "routes-f32": (
        test_second_order_routes_in_float32_at_degenerate_points,
        "x32",
        ("log", ["orthonormal_tall"]),
    ),
    "scale-fd": (
        test_scale_second_derivatives_match_finite_differences,
        "x64",
        ("repeated_sv_wide", -0.7, "trace"),
    ),
    "hessian-fd": (
        test_hessian_matches_finite_differences_of_mpmath_gradient,
        "x64",
        ("log", FD_HESSIAN_POINTS[:1]),
    ),
    "property-fd": (
        _check_against_finite_differences,
        None,
        (np.random.default_rng(7).uniform(-1, 1, (3, 4)), 0.6, 0),
    ),
}


@pytest.mark.parametrize("case", list(DEFAULT_COMPILE_CASES))
def test_under_default_compile(request, case):
    check, mode, args = DEFAULT_COMPILE_CASES[case]
    if mode is not None:
        request.getfixturevalue(mode)
        args = (None, *args)
    before = _DEFAULT_CALLS[0]
    with default_compile():
        check(*args)
    # The check did run compiled programs the optimising way.
    assert _DEFAULT_CALLS[0] > before
