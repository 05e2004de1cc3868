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
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("multihost_check.py")
N_PROCESSES = 2
TOL = 2e-5  # float32


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def reports() -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(i), port],
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
    return outputs


def _label(report, case) -> str:
    return f"process {report['process_id']}: {case['name']}[{case['axis_type']}]"


def test_two_processes_form_one_cluster(reports):
    assert sorted(r["process_id"] for r in reports) == list(range(N_PROCESSES))
    for r in reports:
        assert r["process_count"] == N_PROCESSES
        assert (r["devices"], r["local_devices"]) == (8, 4)
        assert {c["axis_type"] for c in r["cases"]} == {"explicit", "auto"}


def test_values_and_gradients_match_one_process(reports):
    for r in reports:
        for case in r["cases"]:
            assert case["value_err"] <= TOL, (_label(r, case), case["value_err"])
            assert case["grad_err"] <= TOL, (_label(r, case), case["grad_err"])
            assert case["grad_spec"] == case["x_spec"], _label(r, case)


def test_only_grams_and_shards_cross_processes(reports):
    # Rows or a batch sharded: k x k (or scalar) all-reduces only. Columns (the
    # k dimension) sharded: all-to-alls of one shard besides. Never a gather.
    for r in reports:
        for case in r["cases"]:
            k = case["k"]
            for c in case["collectives"]:
                if c["kind"] == "all-to-all":
                    assert case["name"] == "cols", _label(r, case)
                    assert c["elements"] == case["x_elements"] // 8, (_label(r, case), c)
                    continue
                assert c["kind"] == "all-reduce", (_label(r, case), c)
                for shape in c["shapes"]:
                    assert shape == [] or shape[-2:] == [k, k], (_label(r, case), c)
