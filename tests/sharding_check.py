"""Runs jaxtrace on a mesh of 8 virtual CPU devices and prints one JSON report.

Run by ``tests/test_sharding.py`` in a subprocess, so that the device count
(fixed when JAX starts) does not leak into the rest of the test suite; it can
also be run by hand: ``python tests/sharding_check.py``. Importing it (as
pytest's ``--doctest-modules`` does) changes no setting.

For every case (a layout of ``x`` on a mesh with explicit or auto axes) it
compiles, under ``jax.jit``, the value and ``jax.value_and_grad`` with respect
to ``x`` and ``scale``, compares them with a float64 NumPy reference (the
unsharded math, computed without jaxtrace or another compile), records
the shardings of the results and lists the collectives of the compiled HLO
(kind, shapes, elements), so that the test can assert on all of them.
"""

from __future__ import annotations

import os
import sys

N_DEVICES = 8

if __name__ == "__main__" and "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={N_DEVICES}".strip()
        )
    os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import math  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxtrace  # noqa: E402
from tests.reference import eigh_reference  # noqa: E402

_COLLECTIVE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(?P<shape>.*?)\s+"
    r"(?P<kind>all-reduce|all-gather|reduce-scatter|collective-permute|all-to-all)"
    r"(?P<start>-start)?\("
)
_ARRAY_SHAPE = re.compile(r"\b[a-z]+\d*\[([\d,]*)\]")

FUNCTIONS = {"log": jaxtrace.log_trace_expm_gram, "trace": jaxtrace.trace_expm_gram}
SCALE = 0.05
TOL = {"float32": 2e-5, "float64": 1e-11}


def collectives(hlo: str) -> list[dict]:
    """The collectives of a compiled HLO module: kind, shapes and element count."""
    found = []
    for line in hlo.splitlines():
        match = _COLLECTIVE.match(line)
        if match is None:
            continue
        dims = [
            tuple(int(d) for d in s.split(",") if d) for s in _ARRAY_SHAPE.findall(match["shape"])
        ]
        found.append(
            {
                "kind": match["kind"],
                "shapes": [list(d) for d in dims],
                "elements": sum(math.prod(d) for d in dims),
            }
        )
    return found


def _spec(spec, ndim: int) -> list:
    """A PartitionSpec as a JSON list, one entry per dimension."""
    entries = list(spec) + [None] * (ndim - len(tuple(spec)))
    return [list(e) if isinstance(e, tuple) else e for e in entries]


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def _programs(fn_name: str):
    fn = FUNCTIONS[fn_name]

    def value(x, s):
        return fn(x, scale=s)

    def loss(x, s):
        return jnp.sum(fn(x, scale=s))

    return jax.jit(value), jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


PROGRAMS = {name: _programs(name) for name in FUNCTIONS}


def make_mesh(shape: tuple, names: tuple, axis_type):
    return jax.make_mesh(shape, names, axis_types=(axis_type,) * len(names))


def _moved_elements(case: dict, mesh, n_shards: int) -> int:
    """Elements of a device's block of x once its contracted dimension is padded to a
    multiple of the devices along the k dimension (what an all-to-all may move)."""
    shape, spec = list(case["shape"]), list(case["spec"]) + [None] * len(case["shape"])
    wide = shape[-2] < shape[-1]
    k_dim, c_dim = (len(shape) - 2, len(shape) - 1) if wide else (len(shape) - 1, len(shape) - 2)
    k_entry = spec[k_dim]
    k_axes = () if k_entry is None else (k_entry,) if isinstance(k_entry, str) else k_entry
    n_k = math.prod(mesh.shape[a] for a in k_axes)
    c_entry = spec[c_dim]
    c_axes = () if c_entry is None else (c_entry,) if isinstance(c_entry, str) else c_entry
    n_c = math.prod(mesh.shape[a] for a in c_axes)
    local_c = shape[c_dim] // n_c
    shape[c_dim] = -(-local_c // n_k) * n_k * n_c
    return math.prod(shape) // n_shards


def run_case(case: dict, axis_type, fn_name: str, dtype) -> dict:
    mesh = make_mesh(case["mesh"], case["axes"], axis_type)
    spec = P(*case["spec"])
    rng = np.random.default_rng(zlib.crc32(case["name"].encode()))
    x_host = rng.standard_normal(case["shape"]).astype(dtype)
    x = jax.device_put(x_host, NamedSharding(mesh, spec))
    s = jnp.asarray(SCALE, dtype)
    value_fn, vg_fn = PROGRAMS[fn_name]
    # The unsharded math in float64 (NumPy's eigh), with no compile of its own.
    ref_value, ref_gx, ref_ds = eigh_reference(x_host, SCALE, log=fn_name == "log")
    ref_loss, ref_gs = ref_value.sum(), ref_ds.sum()

    explicit = axis_type == AxisType.Explicit
    # Explicit axes are used as JAX recommends, under `jax.set_mesh` (one case
    # without it); auto ones as usual, with committed inputs and no context.
    with jax.set_mesh(mesh) if explicit and case.get("set_mesh", True) else _null():
        # Run the very executables whose HLO is inspected.
        value_exe = value_fn.lower(x, s).compile()
        vg_exe = vg_fn.lower(x, s).compile()
        val = value_exe(x, s)
        loss, (gx, gs) = vg_exe(x, s)

    ndim = len(case["shape"])
    n_shards = math.prod(
        math.prod(mesh.shape[a] for a in ((e,) if isinstance(e, str) else e))
        for e in case["spec"]
        if e is not None
    )
    return {
        "name": case["name"],
        "kind": case["kind"],
        "axis_type": "explicit" if explicit else "auto",
        "fn": fn_name,
        "dtype": np.dtype(dtype).name,
        "mesh": dict(mesh.shape),
        "shape": list(case["shape"]),
        "k": min(case["shape"][-2:]),
        "batch": math.prod(case["shape"][:-2]),
        "x_spec": _spec(spec, ndim),
        "x_elements": math.prod(case["shape"]),
        "local_elements": math.prod(case["shape"]) // n_shards,
        "moved_elements": _moved_elements(case, mesh, n_shards),
        "value_err": _rel_err(val, ref_value),
        "loss_err": _rel_err(loss, ref_loss),
        "grad_err": _rel_err(gx, ref_gx),
        "scale_grad_err": _rel_err(gs, ref_gs),
        "finite": bool(np.all(np.isfinite(np.asarray(gx))) and np.isfinite(float(loss))),
        "value_spec": _spec(val.sharding.spec, val.ndim),
        "grad_spec": _spec(gx.sharding.spec, ndim),
        "grad_type_spec": _spec(jax.typeof(gx).sharding.spec, ndim) if explicit else None,
        "grad_dtype": np.dtype(gx.dtype).name,
        "value_collectives": collectives(value_exe.as_text()),
        "vg_collectives": collectives(vg_exe.as_text()),
    }


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


# kind: what the compiled programs may communicate.
#   "contract": the contracted dimension (or a batch one) is sharded: all-reduces
#               of k x k Grams (and scalars) only.
#   "move":     the k dimension is sharded: all-to-alls of x's shards to the
#               contracted dimension (and back for the gradient), padded where
#               it does not divide evenly, then as "contract".
_1D = {"mesh": (8,), "axes": ("d",)}
_2D = {"mesh": (2, 4), "axes": ("b", "d")}
CASES = [
    {"name": "tall_rows", **_1D, "shape": (64, 16), "spec": ("d", None), "kind": "contract"},
    {"name": "tall_cols", **_1D, "shape": (64, 16), "spec": (None, "d"), "kind": "move"},
    {"name": "wide_cols", **_1D, "shape": (16, 64), "spec": (None, "d"), "kind": "contract"},
    {"name": "wide_rows", **_1D, "shape": (16, 64), "spec": ("d", None), "kind": "move"},
    {"name": "square_rows", **_1D, "shape": (32, 32), "spec": ("d", None), "kind": "contract"},
    {"name": "batch", **_1D, "shape": (8, 32, 16), "spec": ("d", None, None), "kind": "contract"},
    {
        "name": "batched_rows",
        **_1D,
        "shape": (3, 64, 16),
        "spec": (None, "d", None),
        "kind": "contract",
    },
    {
        "name": "tall_cols_indivisible",
        **_1D,
        "shape": (36, 16),
        "spec": (None, "d"),
        "kind": "move",
    },
    {
        "name": "wide_rows_indivisible",
        **_1D,
        "shape": (16, 30),
        "spec": ("d", None),
        "kind": "move",
    },
    {
        "name": "2d_rows_cols_indivisible",
        **_2D,
        "shape": (36, 16),
        "spec": ("b", "d"),
        "kind": "move",
    },
    {
        "name": "2d_batch_rows",
        **_2D,
        "shape": (4, 64, 16),
        "spec": ("b", "d", None),
        "kind": "contract",
    },
    {
        "name": "2d_rows_both",
        **_2D,
        "shape": (64, 16),
        "spec": (("b", "d"), None),
        "kind": "contract",
    },
    {"name": "2d_rows_cols", **_2D, "shape": (64, 16), "spec": ("b", "d"), "kind": "move"},
    {
        "name": "2d_batch_cols",
        **_2D,
        "shape": (4, 64, 16),
        "spec": ("b", None, "d"),
        "kind": "move",
    },
    {
        "name": "tall_rows_no_mesh_context",
        **_1D,
        "shape": (64, 16),
        "spec": ("d", None),
        "kind": "contract",
        "set_mesh": False,
        "axis_types": (AxisType.Explicit,),
    },
]
# The layout logic is shared by both functions and dtypes: the log-trace in
# float32 runs on every case, the plain trace and float64 on a few.
MORE_RUNS = [
    ("tall_rows", AxisType.Explicit, "trace", np.float32),
    ("tall_cols", AxisType.Explicit, "trace", np.float32),
    ("wide_rows", AxisType.Auto, "trace", np.float32),
    ("tall_rows", AxisType.Auto, "log", np.float64),
    ("tall_cols", AxisType.Explicit, "log", np.float64),
    ("2d_rows_cols", AxisType.Explicit, "log", np.float64),
]


def extras() -> dict:
    """Other entry points on sharded input: an eager call, jit(vmap), shard_map."""
    out = {}
    rng = np.random.default_rng(0)
    xb_host = rng.standard_normal((8, 32, 16)).astype(np.float32)

    def log_trace(x):
        return jaxtrace.log_trace_expm_gram(x, scale=SCALE)

    ref = np.asarray(log_trace(jnp.asarray(xb_host)))
    ref_grad = np.asarray(jax.vmap(jax.grad(log_trace))(jnp.asarray(xb_host)))

    mesh = make_mesh((8,), ("d",), AxisType.Explicit)
    with jax.set_mesh(mesh):
        # Eager (op by op) value and gradient of a row-sharded matrix.
        x = jax.device_put(xb_host[0], NamedSharding(mesh, P("d", None)))
        out["eager_explicit"] = {
            "value_err": _rel_err(log_trace(x), ref[0]),
            "grad_err": _rel_err(jax.grad(log_trace)(x), ref_grad[0]),
            "grad_spec": _spec(jax.grad(log_trace)(x).sharding.spec, 2),
        }
        # Inside shard_map every device evaluates its own matrices.
        xb = jax.device_put(xb_host, NamedSharding(mesh, P("d", None, None)))
        sm = jax.jit(jax.shard_map(log_trace, mesh=mesh, in_specs=P("d"), out_specs=P("d")))
        sm_exe = sm.lower(xb).compile()

        # Gradients inside shard_map, in x and in a replicated scale (whose
        # cotangent is the psum of the devices' contributions).
        def local_loss(x, s):
            return jaxtrace.log_trace_expm_gram(x, scale=s).sum()

        smg = jax.jit(
            jax.shard_map(
                jax.grad(local_loss, argnums=(0, 1)),
                mesh=mesh,
                in_specs=(P("d"), P()),
                out_specs=(P("d"), P()),
            )
        )
        gx, gs = smg(xb, jnp.asarray(SCALE, jnp.float32))
        want_gs = jax.grad(local_loss, argnums=1)(jnp.asarray(xb_host), SCALE)
        out["shard_map_explicit"] = {
            "value_err": _rel_err(sm_exe(xb), ref),
            "value_collectives": collectives(sm_exe.as_text()),
            "grad_err": _rel_err(gx, ref_grad),
            "scale_grad_err": _rel_err(gs, want_gs),
        }

    out.update(_k_sharded_extras())
    out.update(_vmap_scales_extras())
    out.update(_expm_extras(xb_host))
    out.update(_handover_extras())

    # jit(vmap(...)) over a batch-sharded stack of matrices.
    for axis_type in (AxisType.Explicit, AxisType.Auto):
        tag = "explicit" if axis_type == AxisType.Explicit else "auto"
        mesh = make_mesh((8,), ("d",), axis_type)
        xb = jax.device_put(xb_host, NamedSharding(mesh, P("d", None, None)))
        with jax.set_mesh(mesh):
            f = jax.jit(jax.vmap(log_trace)).lower(xb).compile()
            g = jax.jit(jax.vmap(jax.grad(log_trace))).lower(xb).compile()
            val, grad = f(xb), g(xb)
        out[f"vmap_{tag}"] = {
            "value_err": _rel_err(val, ref),
            "grad_err": _rel_err(grad, ref_grad),
            "value_spec": _spec(val.sharding.spec, 1),
            "grad_spec": _spec(grad.sharding.spec, 3),
            "value_collectives": collectives(f.as_text()),
            "grad_collectives": collectives(g.as_text()),
        }
    return out


def _expm_extras(xb_host) -> dict:
    """method="expm" under jit(vmap) of a batch-sharded stack on an explicit mesh."""

    def log_trace(x):
        return jaxtrace.log_trace_expm_gram(x, scale=SCALE, method="expm")

    want = np.asarray(log_trace(jnp.asarray(xb_host)))
    want_grad = np.asarray(jax.vmap(jax.grad(log_trace))(jnp.asarray(xb_host)))
    mesh = make_mesh((8,), ("d",), AxisType.Explicit)
    xb = jax.device_put(xb_host, NamedSharding(mesh, P("d", None, None)))
    with jax.set_mesh(mesh):
        value = jax.jit(jax.vmap(log_trace))(xb)
        grad = jax.jit(jax.vmap(jax.grad(log_trace)))(xb)
    return {
        "vmap_expm_explicit": {
            "value_err": _rel_err(value, want),
            "grad_err": _rel_err(grad, want_grad),
            "grad_spec": _spec(grad.sharding.spec, 3),
        }
    }


def _vmap_scales_extras() -> dict:
    """vmap over scales, x fixed, on an auto mesh: x is never broadcast along the scales."""
    out = {}
    mesh = make_mesh((8,), ("d",), AxisType.Auto)
    x_host = np.random.default_rng(2).standard_normal((1024, 8)).astype(np.float32) * 0.02

    def vg(x, s):
        return jax.value_and_grad(lambda x: jaxtrace.trace_expm_gram(x, scale=s))(x)

    def value(x, s):
        return jaxtrace.trace_expm_gram(x, scale=s)

    program = jax.jit(jax.vmap(vg, in_axes=(None, 0)))
    # Programs whose outputs do not grow with the number of scales.
    small = {
        "value": jax.jit(jax.vmap(value, in_axes=(None, 0))),
        "grad_scale": jax.jit(jax.vmap(jax.grad(value, argnums=1), in_axes=(None, 0))),
    }
    for tag, spec in (("rows", P("d", None)), ("cols", P(None, "d"))):
        x = jax.device_put(x_host, NamedSharding(mesh, spec))
        entry = {"local_grad_bytes": x_host.nbytes // 8}
        for count in (4, 64):
            scales = jnp.linspace(0.1, 1.0, count, dtype=jnp.float32)
            with jax.set_mesh(mesh):
                lowered = program.lower(x, scales)
                exe = lowered.compile()
                value, grad = exe(x, scales)
            want_value, want_grad = program(x_host, scales)
            # The x operand of every custom-partitioned product, as lowered.
            operands = re.findall(
                r"@CustomSPMDPartitioning\(.*?:\s*\((tensor<[^,>]*>)", lowered.as_text()
            )
            entry[f"temp_bytes_{count}"] = exe.memory_analysis().temp_size_in_bytes
            for name, other in small.items():
                with jax.set_mesh(mesh):
                    memory = other.lower(x, scales).compile().memory_analysis()
                entry[f"{name}_temp_bytes_{count}"] = memory.temp_size_in_bytes
            entry[f"x_operands_{count}"] = operands
            entry[f"err_{count}"] = max(_rel_err(value, want_value), _rel_err(grad, want_grad))
        out[f"vmap_scales_{tag}"] = entry
    return out


def _handover_extras() -> dict:
    """Layouts handed to the partitioner without a mesh (GSPMDSharding), read back as specs."""
    import warnings

    from jax._src.sharding_impls import GSPMDSharding

    from jaxtrace._src.layouts import auto

    mesh = make_mesh((2, 4), ("a", "b"), AxisType.Auto)
    devices = tuple(mesh.devices.flat)

    def read(spec, order):
        hlo = NamedSharding(mesh, spec)._to_xla_hlo_sharding(2)
        arg = jax.ShapeDtypeStruct((64, 16), jnp.float32, sharding=GSPMDSharding(order, hlo))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = auto._chosen_spec(arg, mesh)
        return {
            "spec": [list(e) if isinstance(e, tuple) else e for e in got],
            "warnings": [str(w.message) for w in caught],
        }

    out = {str(spec): read(spec, devices) for spec in (P("a", "b"), P(("b", "a")), P(None, "b"))}
    # Devices in an order no layout of the mesh has: gathered, with a warning.
    out["permuted"] = read(P("a", "b"), devices[::-1])
    return {"handover": out}


def _k_sharded_extras() -> dict:
    """Short (k) dimension sharded: second derivatives, vmap, export."""
    out = {}
    rng = np.random.default_rng(1)

    def log_trace(x):
        return jaxtrace.log_trace_expm_gram(x, scale=SCALE)

    derivatives = {
        "hessian": jax.hessian(log_trace),
        "jacrev_grad": jax.jacrev(jax.grad(log_trace)),
    }
    for tag, axis_type, shape in (
        ("auto", AxisType.Auto, (12, 8)),
        ("explicit_indivisible", AxisType.Explicit, (10, 8)),
    ):
        mesh = make_mesh((8,), ("d",), axis_type)
        x_host = rng.standard_normal(shape)
        x = jax.device_put(x_host, NamedSharding(mesh, P(None, "d")))
        with jax.set_mesh(mesh):
            for name, fn in derivatives.items():
                got = jax.jit(fn)(x)
                out[f"{name}_{tag}"] = {"err": _rel_err(got, jax.jit(fn)(jnp.asarray(x_host)))}

    # jit(vmap(value_and_grad)) over a stack whose k dimension is sharded.
    x_host = rng.standard_normal((3, 64, 16)).astype(np.float32)
    vg = jax.jit(jax.vmap(jax.value_and_grad(log_trace)))
    ref_val, ref_grad = vg(jnp.asarray(x_host))
    for tag, axis_type in (("explicit", AxisType.Explicit), ("auto", AxisType.Auto)):
        mesh = make_mesh((8,), ("d",), axis_type)
        x = jax.device_put(x_host, NamedSharding(mesh, P(None, None, "d")))
        with jax.set_mesh(mesh):
            exe = vg.lower(x).compile()
            val, grad = exe(x)
        out[f"vmap_cols_{tag}"] = {
            "value_err": _rel_err(val, ref_val),
            "grad_err": _rel_err(grad, ref_grad),
            "grad_spec": _spec(grad.sharding.spec, 3),
            "collectives": collectives(exe.as_text()),
            "x_elements": x_host.size,
            "local_elements": x_host.size // 8,
        }

    # Training steps in lax.scan, with a rematerialised gradient, on auto axes.
    def train(w):
        def step(w, _):
            return w - 0.1 * jax.grad(jax.checkpoint(log_trace))(w), log_trace(w)

        return jax.lax.scan(step, w, None, length=3)

    w_host = 0.3 * x_host[0]
    ref_w, ref_losses = jax.jit(train)(jnp.asarray(w_host))
    mesh = make_mesh((8,), ("d",), AxisType.Auto)
    w = jax.device_put(w_host, NamedSharding(mesh, P(None, "d")))
    trained, losses = jax.jit(train)(w)
    out["scan_remat_auto_cols"] = {
        "w_err": _rel_err(trained, ref_w),
        "loss_err": _rel_err(losses, ref_losses),
        "w_spec": _spec(trained.sharding.spec, 2),
    }

    # A sharded program on an explicit mesh exports for GPUs and TPUs.
    mesh = make_mesh((8,), ("d",), AxisType.Explicit)
    x = jax.device_put(x_host[0], NamedSharding(mesh, P(None, "d")))
    exported = {}
    with jax.set_mesh(mesh):
        for platform in ("cuda", "rocm", "tpu"):
            exp = jax.export.export(jax.jit(jax.value_and_grad(log_trace)), platforms=[platform])(x)
            text = exp.mlir_module()
            exported[platform] = {
                "custom_partitioning": "CustomSPMDPartitioning" in text,
                "callback": "callback" in text.lower(),
                "nr_devices": exp.nr_devices,
            }
    out["export_explicit"] = exported
    return out


def resolve_auto(argv: list[str]) -> str:
    """``--method NAME`` makes method="auto" resolve to NAME (the tests run each method)."""
    from jaxtrace._src import methods

    if "--method" in argv:
        name = argv[argv.index("--method") + 1]
        if name not in methods.METHODS:
            raise SystemExit(f"--method: expected one of {sorted(methods.METHODS)}, got {name!r}")
        methods.auto = lambda **facts: name
        return name
    return "auto"


def main() -> None:
    jax.config.update("jax_enable_x64", True)  # for the float64 runs; float32 stays float32
    method = resolve_auto(sys.argv[1:])
    start = time.perf_counter()
    results = []
    runs = [
        (case, axis_type, "log", np.float32)
        for case in CASES
        for axis_type in case.get("axis_types", (AxisType.Explicit, AxisType.Auto))
    ]
    by_name = {case["name"]: case for case in CASES}
    runs += [(by_name[name], *rest) for name, *rest in MORE_RUNS]
    for case, axis_type, fn_name, dtype in runs:
        try:
            results.append(run_case(case, axis_type, fn_name, dtype))
        except Exception as exc:  # reported per case, so that one failure hides no other
            results.append(
                {
                    "name": case["name"],
                    "kind": case["kind"],
                    "axis_type": "explicit" if axis_type == AxisType.Explicit else "auto",
                    "fn": fn_name,
                    "dtype": np.dtype(dtype).name,
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                }
            )
    report = {
        "devices": jax.device_count(),
        "method": method,
        "jax": jax.__version__,
        "tolerance": TOL,
        "cases": results,
        "extras": extras(),
        "seconds": time.perf_counter() - start,
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
