"""Jaxpr structure and export for accelerators, checked on a CPU-only machine."""

from __future__ import annotations

import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export
from jax.extend import core as jcore

from jaxtrace import log_trace_expm_gram, trace_expm_gram
from tests.reference import peer

FUNCS = [trace_expm_gram, log_trace_expm_gram]
FUNC_IDS = [f.__name__ for f in FUNCS]

BIG, SMALL = 512, 8

ACCELERATORS = ["cuda", "rocm", "tpu"]

# Custom-call targets of jax.pure_callback / io_callback / debug.callback.
_CALLBACK_TARGETS = [
    "xla_python_cpu_callback",
    "xla_python_gpu_callback",
    "xla_ffi_python_cpu_callback",
    "xla_ffi_python_gpu_callback",
    "xla_ffi_python",
]


def _sub_jaxprs(value):
    """Jaxprs held by a parameter value (pjit, custom_vjp/jvp, cond branches, ...)."""
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _sub_jaxprs(item)


def _all_jaxprs(jaxpr):
    """``jaxpr`` and every jaxpr nested in its equations' parameters, recursively."""
    if isinstance(jaxpr, jcore.ClosedJaxpr):
        jaxpr = jaxpr.jaxpr
    yield jaxpr
    for eqn in jaxpr.eqns:
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                yield from _all_jaxprs(sub)


def _all_eqns(jaxpr):
    for j in _all_jaxprs(jaxpr):
        yield from j.eqns


def _all_shapes(jaxpr):
    """Shapes of every variable and literal anywhere in ``jaxpr``."""
    for j in _all_jaxprs(jaxpr):
        atoms = [*j.constvars, *j.invars, *j.outvars]
        for eqn in j.eqns:
            atoms += [*eqn.invars, *eqn.outvars]
        for atom in atoms:
            shape = getattr(getattr(atom, "aval", None), "shape", None)
            if shape is not None:
                yield tuple(shape)


def _big_square_shapes(jaxpr, big):
    """Shapes with at least two axes of the large size: an n x n (or m x m) object."""
    return {s for s in _all_shapes(jaxpr) if sum(d == big for d in s) >= 2}


def _primitive_counts(jaxpr):
    return collections.Counter(eqn.primitive.name for eqn in _all_eqns(jaxpr))


# --- jaxpr structure -------------------------------------------------------------


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    "shape", [(BIG, SMALL), (SMALL, BIG), (3, BIG, SMALL)], ids=["tall", "wide", "batched"]
)
def test_differentiated_jaxpr_never_builds_the_large_gram(fn, shape, auto_method):
    x = jnp.ones(shape, jnp.float32)
    s = jnp.asarray(0.5, jnp.float32)

    def f(x, s):
        return jnp.sum(fn(x, scale=s))

    # Differentiation replaces the custom_vjp by the fwd/bwd rules actually
    # used, so this jaxpr shows what runs under grad.
    for jaxpr in [
        jax.make_jaxpr(jax.value_and_grad(f, argnums=(0, 1)))(x, s),
        jax.make_jaxpr(jax.jit(jax.value_and_grad(f)))(x, s),
        jax.make_jaxpr(jax.jit(f))(x, s),
    ]:
        assert _big_square_shapes(jaxpr, BIG) == set()
        # The small Gram and its eigendecomposition (or squaring loop) are there.
        counts = _primitive_counts(jaxpr)
        assert counts["eigh"] == (auto_method == "eigh"), counts
        assert (counts["while"] >= 1) == (auto_method == "expm"), counts
        assert (*shape[:-2], SMALL, SMALL) in set(_all_shapes(jaxpr))


def test_big_square_detector_sees_the_peer():
    """The detector does flag the n x n route (expm of X X^T), nested jaxprs included."""
    x = jnp.ones((BIG, SMALL), jnp.float32)
    jaxpr = jax.make_jaxpr(jax.jit(jax.value_and_grad(peer)))(x)
    assert (BIG, BIG) in _big_square_shapes(jaxpr, BIG)
    # The top level holds only the pjit: the finding came from a nested jaxpr.
    top = {tuple(v.aval.shape) for e in jaxpr.jaxpr.eqns for v in e.outvars}
    assert (BIG, BIG) not in top


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    "shape", [(BIG, SMALL), (SMALL, BIG), (3, 6, 4)], ids=["tall", "wide", "batched"]
)
def test_plain_jaxpr_is_gram_and_eigenvalues_only(fn, shape):
    jaxpr = jax.make_jaxpr(jax.jit(lambda x: fn(x, method="eigh")))(jnp.ones(shape, jnp.float32))
    counts = _primitive_counts(jaxpr)
    # One product (the small Gram) and one eigh: no expm, no gradient matrix.
    assert counts["dot_general"] == 1, counts
    assert counts["eigh"] == 1, counts
    assert not {"expm", "while", "cond"} & set(counts), counts


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize("shape", [(BIG, SMALL), (SMALL, BIG)], ids=["tall", "wide"])
def test_plain_jaxpr_of_expm_is_gram_and_k_by_k_products(fn, shape):
    jaxpr = jax.make_jaxpr(jax.jit(lambda x: fn(x, method="expm")))(jnp.ones(shape, jnp.float32))
    shapes = [
        tuple(eqn.outvars[0].aval.shape)
        for eqn in _all_eqns(jaxpr)
        if eqn.primitive.name == "dot_general"
    ]
    # The Gram, then products of k x k matrices only: no eigensolver, no gradient.
    assert shapes[0] == (SMALL, SMALL) and len(shapes) > 1
    assert set(shapes) == {(SMALL, SMALL)}, shapes
    assert "eigh" not in _primitive_counts(jaxpr)


def test_grad_jaxpr_builds_the_gradient():
    """Sanity check of the counter: the differentiated jaxpr has more products."""
    x = jnp.ones((6, 4), jnp.float32)
    counts = _primitive_counts(jax.make_jaxpr(jax.grad(trace_expm_gram))(x))
    assert counts["dot_general"] > 1


# --- abstract tracing: no NumPy on the traced path -------------------------------


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
def test_lowers_from_abstract_inputs(fn, auto_method):
    # ShapeDtypeStructs have no data: any NumPy conversion of a tracer fails here.
    x = jax.ShapeDtypeStruct((2, 7, 3), jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)

    def f(x, s):
        return jnp.sum(fn(x, scale=s))

    assert bool(re.search(r"syevd|Eigh", jax.jit(fn).lower(x).as_text())) == (auto_method == "eigh")
    jax.jit(jax.value_and_grad(f, argnums=(0, 1))).lower(x, s)
    jax.jit(jax.hessian(f)).lower(jax.ShapeDtypeStruct((5, 3), jnp.float32), s)
    out = jax.eval_shape(jax.value_and_grad(f), x, s)
    assert out[0].shape == ()
    assert out[1].shape == (2, 7, 3)


# --- export for accelerators ------------------------------------------------------


def _assert_no_host_callback(text):
    assert "callback" not in text.lower()
    for target in _CALLBACK_TARGETS:
        assert target not in text


def test_callback_detector_sees_a_callback():
    """Sanity check of the detector on a function that does call back to Python."""

    def with_callback(x):
        out = jax.ShapeDtypeStruct(x.shape, x.dtype)
        return jax.pure_callback(lambda a: np.asarray(a) * 2, out, x).sum()

    text = jax.jit(with_callback).lower(jnp.ones(3, jnp.float32)).as_text()
    with pytest.raises(AssertionError):
        _assert_no_host_callback(text)


def _export(fn, platform, *args):
    exported = export.export(jax.jit(fn), platforms=[platform])(*args)
    assert exported.platforms == (platform,)
    text = exported.mlir_module()
    _assert_no_host_callback(text)
    return exported, text


@pytest.mark.parametrize("platform", ACCELERATORS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_export_value_and_grad(request, platform, dtype):
    if dtype == "float64":
        request.getfixturevalue("x64")
    x = jax.ShapeDtypeStruct((BIG, SMALL), dtype)
    exported, text = _export(jax.value_and_grad(trace_expm_gram), platform, x)
    assert [(a.shape, a.dtype) for a in exported.out_avals] == [
        ((), np.dtype(dtype)),
        ((BIG, SMALL), np.dtype(dtype)),
    ]
    # Nothing of size BIG x BIG in the module either.
    assert f"{BIG}x{BIG}x" not in text


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_export_hessian(platform):
    x = jax.ShapeDtypeStruct((5, 3), jnp.float32)
    exported, _ = _export(jax.hessian(trace_expm_gram), platform, x)
    assert exported.out_avals[0].shape == (5, 3, 5, 3)


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_export_vmap(platform):
    x = jax.ShapeDtypeStruct((4, 64, SMALL), jnp.float32)
    s = jax.ShapeDtypeStruct((), jnp.float32)
    vg = jax.vmap(
        jax.value_and_grad(lambda x, s: trace_expm_gram(x, scale=s), argnums=(0, 1)),
        in_axes=(0, None),
    )
    exported, _ = _export(vg, platform, x, s)
    assert [a.shape for a in exported.out_avals] == [(4,), (4, 64, SMALL), (4,)]


def test_export_multi_platform_includes_accelerators(auto_method):
    x = jax.ShapeDtypeStruct((BIG, SMALL), jnp.float32)
    fn = jax.jit(jax.value_and_grad(trace_expm_gram))
    exported = export.export(fn, platforms=[*ACCELERATORS, "cpu"])(x)
    assert exported.platforms == (*ACCELERATORS, "cpu")
    text = exported.mlir_module()
    _assert_no_host_callback(text)
    # The CPU lowering can run here: it gives the same as the function itself.
    xv = jnp.asarray(np.random.default_rng(0).standard_normal((BIG, SMALL)) * 0.05, jnp.float32)
    value, grad = exported.call(xv)
    want_value, want_grad = fn(xv)
    np.testing.assert_allclose(value, want_value, rtol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)
    assert bool(re.search(r"custom_call @\w*(syevd|Eigh)", text)) == (auto_method == "eigh")


# --- shape-polymorphic export ---------------------------------------------------

# (shape, constraints, the concrete shapes to run): the constraints decide the
# smaller Gram, equality (square) included.
POLY_CASES = [
    ("b, n, 16", ("n >= 16",), [(2, 16, 16), (3, 40, 16)]),
    ("b, 16, m", ("m >= 17",), [(2, 16, 17), (1, 16, 40)]),
    ("n, 8", ("n >= 8",), [(8, 8), (30, 8)]),
    ("8, m", ("m >= 9",), [(8, 9), (8, 33)]),
]


def _sum_of(fn, grad: bool):
    total = lambda a: fn(a).sum()  # noqa: E731
    return jax.value_and_grad(total) if grad else total


@pytest.mark.parametrize("grad", [False, True], ids=["value", "value_and_grad"])
@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(("spec", "constraints", "shapes"), POLY_CASES, ids=lambda c: str(c))
def test_export_with_symbolic_shapes(fn, grad, spec, constraints, shapes):
    shape = export.symbolic_shape(spec, constraints=constraints)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    program = jax.jit(_sum_of(fn, grad))
    exported = export.export(program, platforms=[*ACCELERATORS, "cpu"])(x)
    _assert_no_host_callback(exported.mlir_module())
    # The one exported program serves every concrete shape the constraints allow.
    for concrete in shapes:
        xv = jnp.asarray(np.random.default_rng(0).standard_normal(concrete) * 0.2, jnp.float32)
        got, want = exported.call(xv), program(xv)
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", FUNCS, ids=FUNC_IDS)
@pytest.mark.parametrize(
    ("spec", "constraints", "hint"),
    [
        ("n, m", (), "constraints=('n >= m',)"),
        ("b, 16, m", ("m >= 16",), "('m >= 17',)"),
        ("n, m", ("n >= m",), "keep the smaller of n and m fixed"),
        ("n, m", ("m >= n + 1",), "keep the smaller of n and m fixed"),
    ],
)
def test_export_with_undecided_shapes_names_the_constraint(fn, spec, constraints, hint):
    x = jax.ShapeDtypeStruct(export.symbolic_shape(spec, constraints=constraints), jnp.float32)
    with pytest.raises(ValueError, match=fn.__name__) as info:
        export.export(jax.jit(_sum_of(fn, True)), platforms=["cuda"])(x)
    assert hint in str(info.value)
