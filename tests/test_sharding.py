"""jaxtrace on a mesh of 8 devices: values, gradient shardings, communication.

The device count is fixed when JAX starts, so the checks run in a subprocess
(``tests/sharding_check.py``) with ``--xla_force_host_platform_device_count=8``;
this process keeps its single device. The subprocess prints a JSON report per
case (a layout of ``x`` on an explicit- or auto-axis mesh) with errors against
the unsharded math (a float64 NumPy reference), result shardings and the collectives of the compiled
programs; the tests below assert on it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import conftest, sharding_check

SCRIPT = Path(__file__).with_name("sharding_check.py")
N_DEVICES = 8

# Every entry of the report's extras and its keys: a figure that is renamed or
# dropped fails the test instead of going unchecked.
_VMAP_KEYS = {"value_err", "grad_err", "value_spec", "grad_spec"}
_VMAP_KEYS |= {"value_collectives", "grad_collectives"}
_VMAP_COLS_KEYS = {"value_err", "grad_err", "grad_spec", "collectives"}
_VMAP_COLS_KEYS |= {"x_elements", "local_elements"}
EXTRAS_KEYS = {
    "eager_explicit": {"value_err", "grad_err", "grad_spec"},
    "shard_map_explicit": {"value_err", "value_collectives", "grad_err", "scale_grad_err"},
    "vmap_explicit": _VMAP_KEYS,
    "vmap_auto": _VMAP_KEYS,
    "hessian_auto": {"err"},
    "jacrev_grad_auto": {"err"},
    "hessian_explicit_indivisible": {"err"},
    "jacrev_grad_explicit_indivisible": {"err"},
    "vmap_cols_explicit": _VMAP_COLS_KEYS,
    "vmap_cols_auto": _VMAP_COLS_KEYS,
    "scan_remat_auto_cols": {"w_err", "loss_err", "w_spec"},
    "export_explicit": {"cuda", "rocm", "tpu"},
    "handover": {"P('a', 'b')", "P(('b', 'a'),)", "P(None, 'b')", "permuted"},
}
_SCALES_KEYS = {"local_grad_bytes"} | {
    f"{key}_{count}"
    for key in ("temp_bytes", "value_temp_bytes", "grad_scale_temp_bytes", "x_operands", "err")
    for count in (4, 64)
}
EXTRAS_KEYS |= {"vmap_scales_rows": _SCALES_KEYS, "vmap_scales_cols": _SCALES_KEYS}
EXTRAS_KEYS["vmap_expm_explicit"] = {"value_err", "grad_err", "grad_spec"}


# One subprocess (about a minute) per method, each run once: pytest's
# `--dist loadfile` keeps this module on one xdist worker.
@pytest.fixture(scope="module", params=conftest.METHOD_NAMES)
def report(request) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (
        env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEVICES}"
    ).strip()
    env["JAX_PLATFORMS"] = "cpu"
    env.pop("JAX_ENABLE_X64", None)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--method", request.param],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["method"] == request.param
    return out


def _cases(report, **match):
    """The cases that ran (failures are reported by test_every_case_runs) matching ``match``."""
    cases = [
        c for c in report["cases"] if "error" not in c and all(c[k] == v for k, v in match.items())
    ]
    assert cases, f"no case matches {match}"
    return cases


def _label(case) -> str:
    return f"{case['name']}[{case['axis_type']}, {case['fn']}, {case['dtype']}]"


def _matrix_dims_sharded(case) -> bool:
    return any(e is not None for e in case["x_spec"][-2:])


def _local_batch(case) -> int:
    """Matrices per device: the batch size over the shards of the batch dimensions."""
    sizes = case["mesh"]
    shards = 1
    for entry in case["x_spec"][:-2]:
        for axis in [entry] if isinstance(entry, str) else entry or []:
            shards *= sizes[axis]
    return case["batch"] // shards


def _is_gram(case, shape) -> bool:
    """A (local batch of) k x k Gram matrices."""
    k = case["k"]
    return list(shape[-2:]) == [k, k] and math.prod(shape[:-2]) == _local_batch(case)


def test_runs_on_eight_devices(report):
    assert report["devices"] == N_DEVICES
    # Explicit and auto meshes, 1-D and 2-D, every layout kind, both functions, both dtypes.
    cases = _cases(report)
    assert {c["axis_type"] for c in cases} == {"explicit", "auto"}
    assert {c["kind"] for c in cases} == {"contract", "move"}
    assert {c["fn"] for c in cases} == {"log", "trace"}
    assert {c["dtype"] for c in cases} == {"float32", "float64"}
    assert {len(c["mesh"]) for c in cases} == {1, 2}
    assert sum(math.prod(c["mesh"].values()) == N_DEVICES for c in cases) == len(cases)


def test_every_case_runs(report):
    errors = [f"{_label(c)}: {c['error']}" for c in report["cases"] if "error" in c]
    assert not errors, "\n".join(errors)
    # Each run of the script's plan is reported once, none dropped.
    default = (sharding_check.AxisType.Explicit, sharding_check.AxisType.Auto)
    planned = [
        (case["name"], "explicit" if axis_type == sharding_check.AxisType.Explicit else "auto")
        for case in sharding_check.CASES
        for axis_type in case.get("axis_types", default)
    ]
    planned += [
        (name, "explicit" if axis_type == sharding_check.AxisType.Explicit else "auto")
        for name, axis_type, _, _ in sharding_check.MORE_RUNS
    ]
    reported = [(c["name"], c["axis_type"]) for c in report["cases"]]
    assert sorted(reported) == sorted(planned)


def test_extras_report_every_entry(report):
    extras = report["extras"]
    assert set(extras) == set(EXTRAS_KEYS)
    for name, keys in EXTRAS_KEYS.items():
        assert set(extras[name]) == keys, name


def test_values_and_gradients_match_the_unsharded_math(report):
    failures = []
    for case in _cases(report):
        tol = report["tolerance"][case["dtype"]]
        for key in ("value_err", "loss_err", "grad_err", "scale_grad_err"):
            if not case[key] <= tol:
                failures.append(f"{_label(case)}: {key} = {case[key]:.3g} > {tol:.0e}")
        if not case["finite"]:
            failures.append(f"{_label(case)}: non-finite loss or gradient")
    assert not failures, "\n".join(failures)


def test_gradient_keeps_the_sharding_of_x(report):
    failures = []
    for case in _cases(report):
        if case["grad_spec"] != case["x_spec"]:
            failures.append(f"{_label(case)}: grad {case['grad_spec']} != x {case['x_spec']}")
        if case["axis_type"] == "explicit" and case["grad_type_spec"] != case["x_spec"]:
            failures.append(f"{_label(case)}: typeof(grad) {case['grad_type_spec']}")
        if case["grad_dtype"] != case["dtype"]:
            failures.append(f"{_label(case)}: grad dtype {case['grad_dtype']}")
        # The values keep the sharding of the batch dimensions (replicated scalars otherwise).
        if case["value_spec"] != case["x_spec"][:-2]:
            failures.append(f"{_label(case)}: value {case['value_spec']}")
    assert not failures, "\n".join(failures)


def _check_gram_all_reduces(case, colls, program, allow_scalars) -> list[str]:
    """Only all-reduces, of k x k Grams (one, if a matrix dimension is sharded) or scalars."""
    errors = []
    grams = 0
    for c in colls:
        if c["kind"] != "all-reduce":
            errors.append(f"{_label(case)} {program}: unexpected {c['kind']} {c['shapes']}")
            continue
        for shape in c["shapes"]:
            if _is_gram(case, shape):
                grams += 1
            elif not (allow_scalars and shape == []):
                errors.append(f"{_label(case)} {program}: all-reduce of {shape}")
    expected = 1 if _matrix_dims_sharded(case) else 0
    if grams != expected:
        errors.append(f"{_label(case)} {program}: {grams} Gram all-reduces, expected {expected}")
    return errors


def test_contracted_dimension_sharded_all_reduces_the_gram_only(report):
    """Rows of tall / columns of wide x, or batch dims: no gather, one k x k all-reduce."""
    failures = []
    for case in _cases(report, kind="contract"):
        failures += _check_gram_all_reduces(case, case["value_collectives"], "value", False)
        # Scalars: the sum over a sharded batch in the loss, never an n x m array.
        failures += _check_gram_all_reduces(case, case["vg_collectives"], "value_and_grad", True)
    assert not failures, "\n".join(failures)


def test_batch_sharded_value_needs_no_communication(report):
    for case in _cases(report, name="batch"):
        assert case["value_collectives"] == [], _label(case)
        assert all(
            c["kind"] == "all-reduce" and all(s == [] for s in c["shapes"])
            for c in case["vg_collectives"]
        ), _label(case)


# All-to-alls per program for a sharded k dimension: x moves onto the contracted
# dimension once and the gradient moves back. Where that dimension does not
# divide evenly on an auto mesh, the Gram and the gradient's product pad and
# move x each on their own: one all-to-all more.
def _n_moves(case, program) -> int:
    if program == "value":
        return 1
    padded = case["axis_type"] == "auto" and case["moved_elements"] > case["local_elements"]
    return 3 if padded else 2


def test_k_dimension_sharded_moves_shards_with_all_to_all(report):
    """Columns of tall / rows of wide x: all-to-alls of each device's (padded) shard
    onto the contracted dimension and back, one k x k all-reduce, no gather."""
    failures = []
    for case in _cases(report, kind="move"):
        for program, colls in (
            ("value", case["value_collectives"]),
            ("value_and_grad", case["vg_collectives"]),
        ):
            moves = [c for c in colls if c["kind"] == "all-to-all"]
            n_moves = _n_moves(case, program)
            if len(moves) != n_moves:
                failures.append(f"{_label(case)} {program}: {len(moves)} all-to-alls")
            for c in moves:
                if c["elements"] != case["moved_elements"]:
                    failures.append(
                        f"{_label(case)} {program}: all-to-all of {c['elements']} elements, "
                        f"a padded shard has {case['moved_elements']}"
                    )
            rest = [c for c in colls if c["kind"] != "all-to-all"]
            failures += _check_gram_all_reduces(case, rest, program, program != "value")
    assert not failures, "\n".join(failures)


def test_indivisible_layouts_are_padded_not_gathered(report):
    cases = [c for c in _cases(report, kind="move") if c["name"].endswith("_indivisible")]
    assert {c["axis_type"] for c in cases} == {"explicit", "auto"}
    assert {len(c["mesh"]) for c in cases} == {1, 2}
    for case in cases:
        # The padding is real: a moved block is larger than an even share of x.
        assert case["moved_elements"] > case["local_elements"], _label(case)


def test_no_program_gathers_x(report):
    # Every layout, explicit and auto axes: the only collectives are all-reduces
    # of k x k Grams or scalars and all-to-alls of one (padded) shard of x.
    for case in _cases(report):
        for c in case["value_collectives"] + case["vg_collectives"]:
            assert c["kind"] in ("all-reduce", "all-to-all"), (_label(case), c)
            if c["kind"] == "all-to-all":
                assert c["elements"] == case["moved_elements"], (_label(case), c)
            else:
                assert all(s == [] or _is_gram(case, s) for s in c["shapes"]), (_label(case), c)


def test_other_entry_points(report):
    extras = report["extras"]
    tol = report["tolerance"]["float32"]
    for key in ("eager_explicit", "vmap_explicit", "vmap_auto", "shard_map_explicit"):
        for err in ("value_err", "grad_err"):
            assert extras[key][err] <= tol, (key, err, extras[key][err])
    assert extras["eager_explicit"]["grad_spec"] == ["d", None]
    for key in ("vmap_explicit", "vmap_auto"):
        # A batch-sharded stack under jit(vmap): sharded results, no communication.
        assert extras[key]["value_spec"] == ["d"]
        assert extras[key]["grad_spec"] == ["d", None, None]
        assert extras[key]["value_collectives"] == []
        assert extras[key]["grad_collectives"] == []
    assert extras["shard_map_explicit"]["value_collectives"] == []
    # k dimension sharded: second derivatives on auto axes and on an explicit
    # mesh whose contracted dimension does not divide.
    for name in ("hessian", "jacrev_grad"):
        for tag in ("auto", "explicit_indivisible"):
            assert extras[f"{name}_{tag}"]["err"] <= report["tolerance"]["float64"], (name, tag)
    # jit(vmap(value_and_grad)) of a stack with its k dimension sharded: moved, not gathered.
    for tag in ("explicit", "auto"):
        entry = extras[f"vmap_cols_{tag}"]
        assert entry["value_err"] <= tol and entry["grad_err"] <= tol, tag
        assert entry["grad_spec"] == [None, None, "d"], tag
        kinds = [c["kind"] for c in entry["collectives"]]
        # Moved in once for the Gram and the gradient's product, and back.
        assert sorted(kinds) == ["all-reduce", "all-to-all", "all-to-all"], (tag, kinds)
        assert all(
            c["elements"] == entry["local_elements"]
            for c in entry["collectives"]
            if c["kind"] == "all-to-all"
        ), tag
    scan = extras["scan_remat_auto_cols"]
    assert scan["w_err"] <= tol and scan["loss_err"] <= tol, scan
    assert scan["w_spec"] == [None, "d"], scan
    # Sharded programs on explicit meshes export for GPUs and TPUs, free of callbacks.
    assert set(extras["export_explicit"]) == {"cuda", "rocm", "tpu"}
    for platform, entry in extras["export_explicit"].items():
        assert entry == {"custom_partitioning": False, "callback": False, "nr_devices": 8}, platform
    # Gradients inside shard_map: in x, and in a replicated scale (psummed).
    assert extras["shard_map_explicit"]["grad_err"] <= tol
    assert extras["shard_map_explicit"]["scale_grad_err"] <= tol


def test_vmap_over_scales_keeps_x_unbatched_on_auto_meshes(report):
    tol = report["tolerance"]["float32"]
    k, itemsize = 8, 4  # x is 1024 x 8, float32
    expm = report["method"] == "expm"
    for tag, moves in (("rows", 0), ("cols", 1)):
        entry = report["extras"][f"vmap_scales_{tag}"]
        for count in (4, 64):
            assert entry[f"err_{count}"] <= tol, (tag, count)
            # The Gram and the gradient's product, each taking x as it is: 1024 x 8.
            # The expm method's kernel is custom-partitioned too, on one k x k
            # matrix per scale.
            kernel = [f"tensor<{count}x{k}x{k}xf32>"] * expm
            want = sorted(["tensor<1024x8xf32>"] * 2 + kernel)
            assert sorted(entry[f"x_operands_{count}"]) == want, (tag, count)
        for name in ("value", "grad_scale"):
            grown = entry[f"{name}_temp_bytes_64"] - entry[f"{name}_temp_bytes_4"]
            if expm:
                # exp(s G) per scale: at most the kernel's k x k working set (Y..Y^s,
                # the polynomial's two parts and T, E_j and its square, E_hat: 10
                # matrices), under the 16 of a device's shard of x.
                assert grown / 60 <= 10 * k * k * itemsize, (tag, name, grown)
            else:
                # One eigendecomposition of G serves every scale: nothing grows.
                assert grown <= 0, (tag, name, grown)
        # With gradients in x, whose output holds B arrays of x's size: per extra
        # scale, the product's result before XLA lays it out as the (B, n, m)
        # output (the unsharded program holds the same), and its all-to-all back
        # where k is sharded. A copy of x per scale would come on top.
        per_scale = (entry["temp_bytes_64"] - entry["temp_bytes_4"]) / 60
        assert per_scale <= (1 + moves) * entry["local_grad_bytes"], (tag, per_scale)


def test_layouts_handed_over_without_a_mesh_are_read_back(report):
    handover = report["extras"]["handover"]
    assert handover["P('a', 'b')"] == {"spec": ["a", "b"], "warnings": []}
    assert handover["P(('b', 'a'),)"] == {"spec": [["b", "a"], None], "warnings": []}
    assert handover["P(None, 'b')"] == {"spec": [None, "b"], "warnings": []}
    permuted = handover["permuted"]
    assert permuted["spec"] == [None, None]
    assert len(permuted["warnings"]) == 1 and "gathered" in permuted["warnings"][0]


def test_expm_method_under_vmap_on_an_explicit_mesh(report):
    entry = report["extras"]["vmap_expm_explicit"]
    tol = report["tolerance"]["float32"]
    assert entry["value_err"] <= tol and entry["grad_err"] <= tol, entry
    assert entry["grad_spec"] == ["d", None, None]
