"""jaxtrace across two JAX processes (multi-host), on this one machine.

``tests/multihost_check.py`` runs as two processes that join one cluster
through ``jax.distributed.initialize`` (4 CPU devices each, gloo for the
cross-process collectives) and evaluate value and gradient on a global array
built from each process's own block; the tests below assert on both reports.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests import conftest, multihost_check

SCRIPT = Path(__file__).with_name("multihost_check.py")
N_PROCESSES = 2
TOL = 2e-5  # float32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


# Per method, run once: `--dist loadfile` keeps this module on one xdist worker.
@pytest.fixture(scope="module", params=conftest.METHOD_NAMES)
def reports(request) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_ENABLE_X64"}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(i), port, "--method", request.param],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(N_PROCESSES)
    ]
    outputs = []
    try:
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-4000:]
            outputs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            proc.kill()
    assert all(out["method"] == request.param for out in outputs)
    return outputs


def _label(report, case) -> str:
    return f"process {report['process_id']}: {case['name']}[{case['axis_type']}]"


def _axis_type(axis_type) -> str:
    return "explicit" if axis_type == multihost_check.AxisType.Explicit else "auto"


def test_two_processes_form_one_cluster(reports):
    assert sorted(r["process_id"] for r in reports) == list(range(N_PROCESSES))
    planned = [(name, _axis_type(axis_type)) for name, axis_type, _, _ in multihost_check.CASES]
    for r in reports:
        assert r["process_count"] == N_PROCESSES
        assert (r["devices"], r["local_devices"]) == (8, 4)
        # Every case of the script reported, none dropped.
        assert [(c["name"], c["axis_type"]) for c in r["cases"]] == planned


def test_values_and_gradients_match_one_process(reports):
    for r in reports:
        for case in r["cases"]:
            assert case["value_err"] <= TOL, (_label(r, case), case["value_err"])
            assert case["grad_err"] <= TOL, (_label(r, case), case["grad_err"])
            assert case["grad_spec"] == case["x_spec"], _label(r, case)


def _signature(collective) -> tuple:
    """An all-reduce by its shapes, an all-to-all by the elements it moves."""
    if collective["kind"] == "all-reduce":
        return ("all-reduce", tuple(tuple(s) for s in collective["shapes"]))
    return (collective["kind"], collective["elements"])


def _expected_collectives(case) -> Counter:
    """What the program of value_and_grad must communicate, and nothing else."""
    k = case["k"]
    gram = ("all-reduce", ((k, k),))
    if case["name"] == "rows":  # the k x k partial Grams, summed once
        return Counter([gram])
    if case["name"] == "cols":  # one shard of x moved in and the gradient back
        shard = ("all-to-all", case["x_elements"] // 8)
        return Counter([shard, gram, shard])
    if case["name"] == "batch":  # the loss: a sum of per-device values
        return Counter([("all-reduce", ((),))])
    raise AssertionError(f"no expectation for case {case['name']}")


def test_only_grams_and_shards_cross_processes(reports):
    # Rows sharded: one k x k all-reduce. Columns (the k dimension) sharded:
    # all-to-alls of one shard in and out besides. A batch: the loss's scalar
    # sum only. Never a gather; an empty list fails too.
    for r in reports:
        for case in r["cases"]:
            got = Counter(_signature(c) for c in case["collectives"])
            assert got == _expected_collectives(case), (_label(r, case), case["collectives"])
