"""One process of a two-process JAX cluster on this machine, each with 4 CPU devices.

Run by ``tests/test_multihost.py``: two copies start with process ids 0 and 1
and the same coordinator port, join through ``jax.distributed.initialize``
(cross-process collectives on CPU go through gloo) and build a global array
on an 8-device mesh from each process's own block of ``x``, as a multi-host
user would. For every layout each prints, as one JSON line, its errors
against the single-process computation on the whole of ``x``, the sharding of
the gradient and the collectives of the compiled program. By hand::

    python tests/multihost_check.py 0 12355 & python tests/multihost_check.py 1 12355
"""

from __future__ import annotations

import os
import sys

LOCAL_DEVICES = 4
N_PROCESSES = 2

if __name__ == "__main__" and "jax" not in sys.modules:
    flags = os.environ.get("XLA_FLAGS", "")  # (the test suite's compile flags, if any)
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={LOCAL_DEVICES}"
    os.environ["JAX_PLATFORMS"] = "cpu"

import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import jaxtrace  # noqa: E402

SCALE = 0.05

# (name, mesh axis type, shape, spec): rows / columns of a tall x, a batch.
CASES = [
    ("rows", AxisType.Explicit, (64, 16), P("d", None)),
    ("rows", AxisType.Auto, (64, 16), P("d", None)),
    ("cols", AxisType.Explicit, (64, 16), P(None, "d")),
    ("cols", AxisType.Auto, (64, 16), P(None, "d")),
    ("batch", AxisType.Explicit, (8, 32, 16), P("d", None, None)),
]


def _loss(x):
    return jnp.sum(jaxtrace.log_trace_expm_gram(x, scale=SCALE))


def _process_block(x: np.ndarray, sharding: NamedSharding) -> np.ndarray:
    """The part of ``x`` that this process's devices hold (one contiguous block here)."""
    index = sharding.addressable_devices_indices_map(x.shape)
    starts = [min(idx[d].start or 0 for idx in index.values()) for d in range(x.ndim)]
    stops = [
        max(x.shape[d] if idx[d].stop is None else idx[d].stop for idx in index.values())
        for d in range(x.ndim)
    ]
    return x[tuple(slice(a, b) for a, b in zip(starts, stops, strict=True))]


def run_case(name, axis_type, shape, spec) -> dict:
    from sharding_check import collectives

    rng = np.random.default_rng(0)
    x_all = rng.standard_normal(shape).astype(np.float32)
    ref_value, ref_grad = jax.value_and_grad(_loss)(jnp.asarray(x_all))
    ref_grad = np.asarray(ref_grad)

    mesh = jax.make_mesh((jax.device_count(),), ("d",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, spec)
    program = jax.jit(jax.value_and_grad(_loss))
    with jax.set_mesh(mesh):
        x = jax.make_array_from_process_local_data(sharding, _process_block(x_all, sharding))
        exe = program.lower(x).compile()
        value, grad = exe(x)
    grad_err = max(
        float(np.max(np.abs(np.asarray(s.data) - ref_grad[s.index])))
        for s in grad.addressable_shards
    ) / float(np.max(np.abs(ref_grad)))
    return {
        "name": name,
        "axis_type": "explicit" if axis_type == AxisType.Explicit else "auto",
        "x_elements": x_all.size,
        "k": min(shape[-2:]),
        "value_err": abs(float(value) - float(ref_value)) / abs(float(ref_value)),
        "grad_err": grad_err,
        "grad_spec": [e for e in grad.sharding.spec]
        + [None] * (len(shape) - len(grad.sharding.spec)),
        "x_spec": [e for e in spec] + [None] * (len(shape) - len(spec)),
        "collectives": collectives(exe.as_text()),
    }


def main() -> None:
    process_id, port = int(sys.argv[1]), int(sys.argv[2])
    from sharding_check import resolve_auto

    method = resolve_auto(sys.argv[3:])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=N_PROCESSES,
        process_id=process_id,
    )
    cases = [run_case(*case) for case in CASES]
    report = {
        "process_id": jax.process_index(),
        "method": method,
        "process_count": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "cases": cases,
    }
    print(json.dumps(report), flush=True)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
