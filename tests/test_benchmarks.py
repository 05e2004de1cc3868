"""Tests of the benchmark suite: the CLI end to end on tiny shapes, and the peers' arithmetic.

The CLI runs in a subprocess (it would enable 64-bit types process-wide with
float64) and must write the JSON, Markdown and PNG with every program, ratio,
target and flop row; the peers are checked against jaxtrace and the float64
reference in float64, elementwise.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import pytest

# The bench extras; the CLI test is skipped where only the test extras are installed.
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

from benchmarks import checks, cli, programs, runner, targets
from benchmarks.cases import make_input

ROOT = Path(__file__).resolve().parents[1]
JAXTRACE = ("jaxtrace", "jaxtrace_eigh", "jaxtrace_expm")
SHAPES = ([2, 4, 3],)
NOTEARS_SHAPES = ("2x4x4",)  # batched: the peer's vmap too; each row costs ~2 s (compiling)


# The CLI runs once: `--dist loadfile` keeps this module on one xdist worker.
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench")
    # One batched shape, one function, both modes: the CLI's every path in ~15 s (compiling
    # dominates); the peers' other paths are unit-tested below.
    args = ["--platform", "cpu", "--shapes", "2x4x3", "--functions", "trace"]
    args += ["--repeats", "1", "--core-shape", "8x6", "--hvp-shape", "6x4", "--out", str(out)]
    args += ["--notears-shapes", ",".join(NOTEARS_SHAPES)]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc, out


@pytest.fixture(scope="module")
def results(run: tuple[subprocess.CompletedProcess, Path]) -> dict[str, Any]:
    proc, out = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((out / "benchmark.json").read_text())


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_cli_writes_every_output(run: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, out = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "benchmark.md").read_text()
    titles = ("jaxtrace against the peers", "Targets", "Flop model", "Core and Hessian", "NOTEARS")
    for title in titles:
        assert f"## {title}" in markdown and f"## {title}" in proc.stdout, title
    assert "## Failures\n\nNone: every check passed." in markdown
    assert re.search(r"\| trace +\| batched +\| 2x4x3 +\| float32 +\| value_and_grad +\|", markdown)
    assert re.search(r"\| batched +\| 2x4x4 +\| float32 +\| value_and_grad +\|", markdown)


def test_json_peer_records(results: dict[str, Any]) -> None:
    assert results["environment"]["platform"] == "cpu" and results["environment"]["jax_version"]
    assert results["failures"] == []
    peer = [r for r in results["records"] if r["kind"] == "peer"]
    assert sorted((r["shape"], r["mode"]) for r in peer) == sorted(
        (s, m) for s in SHAPES for m in ("value", "value_and_grad")
    )
    for rec in peer:
        assert rec["status"] == "ok" and rec["repeats"] == 1, rec["label"]
        assert rec["method"] in programs.METHODS
        # auto is compiled to the program of the method it picked, and reported as it.
        assert rec["programs"][f"jaxtrace_{rec['method']}"]["same_program_as"] == "jaxtrace"
        assert list(rec["programs"]) == [*JAXTRACE, *programs.PEERS]
        for name, prog in rec["programs"].items():
            assert prog["valid"] and prog["check"]["passed"], (rec["label"], name)
            assert _positive(prog["median_s"]) and len(prog["times_s"]) == 1
            assert isinstance(prog["temp_bytes"], int)
        assert set(rec["ratios"]) == {*programs.PEERS, "best_peer"}
        best = rec["ratios"]["best_peer"]
        assert best["peer"] in programs.PEERS and _positive(best["median"])
        fastest = min(programs.PEERS, key=lambda p: rec["programs"][p]["median_s"])
        assert best == {**rec["ratios"][fastest], "peer": fastest}


def test_json_core_hvp_targets_and_flops(results: dict[str, Any]) -> None:
    other = {(r["kind"], r["method"]) for r in results["records"] if r["kind"] in ("core", "hvp")}
    assert other == {("core", "eigh"), ("hvp", "eigh"), ("hvp", "expm")}
    for rec in results["records"]:
        assert all(_positive(r["median"]) for r in rec["ratios"].values()), rec["label"]
    names = [t["name"] for t in results["targets"]]
    assert len(names) == len(set(names)) == len(targets.evaluate([]))
    met = {t["name"]: t["met"] for t in results["targets"]}
    for name in ("memory, every case", "core ratio", "trace HVP, method expm"):
        assert isinstance(met[name], bool), name
    assert met["log_trace HVP, method eigh"] is None  # not run: --functions trace
    assert met["trace value_and_grad 2048x64 vs card's peer"] is None
    assert [f["shape"] for f in results["flops"]] == list(SHAPES)
    for row in results["flops"]:
        assert set(row["flops"]) == {"jaxtrace_eigh", "jaxtrace_expm", *programs.PEERS}
        assert all(_positive(v) for v in row["flops"].values())
        assert row["q"] == 0  # the benchmark's inputs have ||x x^T|| <= 1


def test_json_notears_records(results: dict[str, Any]) -> None:
    notears = [r for r in results["records"] if r["kind"] == "notears"]
    assert ["x".join(map(str, r["shape"])) for r in notears] == list(NOTEARS_SHAPES)
    for rec in notears:
        assert rec["status"] == "ok" and rec["mode"] == "value_and_grad", rec["label"]
        assert list(rec["programs"]) == ["trace_expm", "peer_expm"]
        for name, prog in rec["programs"].items():
            assert prog["valid"] and prog["check"]["passed"], (rec["label"], name)
            assert _positive(prog["median_s"]) and isinstance(prog["temp_bytes"], int)
        assert _positive(rec["ratios"]["peer_expm"]["median"])
        assert rec["memory_ratio"] is None or rec["memory_ratio"] >= 0
    met = {t["name"]: t["met"] for t in results["targets"]}
    assert met["notears memory 100x100"] is None  # not run: other NOTEARS shapes
    assert cli.parse_args(["--notears-shapes", "none"]).notears_shapes == ()
    with pytest.raises(SystemExit):
        cli.parse_args(["--notears-shapes", "4x5"])


def _assert_close(actual: Any, desired: Any, what: str) -> None:
    """Elementwise rtol 1e-10; entries that cancel to ~1e-6 of the largest get an atol of 1e-14
    of the largest, the float64 rounding of the terms they cancel from."""
    atol = 1e-14 * float(np.max(np.abs(desired)))
    np.testing.assert_allclose(actual, desired, rtol=1e-10, atol=atol, err_msg=what)


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 5)], ids=["tall", "wide-batch"])
def test_peers_match_jaxtrace_in_float64(shape: tuple[int, ...]) -> None:
    fns = {
        (function, name): fn
        for function in programs.JAXTRACE
        for name, fn in [
            ("jaxtrace", programs.jaxtrace_fn(function, "eigh")),
            *((p, programs.peer_fn(p, function)) for p in programs.PEERS),
        ]
    }

    def everything(x: jax.Array) -> dict[tuple[str, str], tuple[jax.Array, jax.Array]]:
        # One program for all: compiling each alone would take twice as long.
        return {key: (f(x), jax.grad(lambda x, f=f: f(x).sum())(x)) for key, f in fns.items()}

    with jax.enable_x64(True):
        # Eigenvalues up to ~3, not all near 0, and ||x x^T||_1 below 5.37: beyond it
        # jax.scipy.linalg.expm's float64 Padé is used unscaled (it rounds the squaring
        # count down) and its error grows to ~1e-10.
        x = make_input(shape, "float64", seed=3) * 2
        outs = jax.jit(everything)(x)
    for function in programs.JAXTRACE:
        value, grad = checks.reference(x, function)
        want = outs[function, "jaxtrace"]
        _assert_close(want[0], value, f"{function} jaxtrace value")
        _assert_close(want[1], grad, f"{function} jaxtrace grad")
        for peer in programs.PEERS:
            _assert_close(outs[function, peer][0], want[0], f"{function} {peer} value")
            _assert_close(outs[function, peer][1], want[1], f"{function} {peer} grad")


def test_reference_log_trace_is_log_of_trace() -> None:
    x = make_input((3, 6, 4), "float64", seed=1) * 4
    (value, grad), (log_value, log_grad) = (checks.reference(x, f) for f in programs.JAXTRACE)
    np.testing.assert_allclose(log_value, np.log(value), rtol=1e-13)
    np.testing.assert_allclose(log_grad, grad / value[:, None, None], rtol=1e-12)


def test_measure_aliases_invalid_peers_mismatches_and_slow_programs() -> None:
    x = jax.numpy.arange(3.0)
    ok = {"passed": True, "message": "", "max_error": 0.0}
    bad = {"passed": False, "message": "value rel. error 1 > 1e-4", "max_error": 1.0}
    specs = [
        runner.Spec("a", lambda x: x.sum(), (x,), lambda out: ok),
        runner.Spec("a_again", lambda x: x.sum(), (x,), lambda out: ok),  # identical program
        runner.Spec("wrong", lambda x: x.prod(), (x,), lambda out: bad),  # jaxtrace: MISMATCH
        runner.Spec("peer", lambda x: x.max(), (x,), lambda out: bad, required=False),
    ]
    record = {"status": "ok", "failures": [], "programs": {}}
    times = runner.measure(record, specs, runner.Settings(2, 60.0, 60.0, "highest", 0))
    progs = record["programs"]
    assert progs["a_again"]["same_program_as"] == "a" and times["a_again"] == times["a"]
    assert len(times["a"]) == 2 and record["repeats"] == 2
    assert record["status"] == "MISMATCH" and record["failures"][0].startswith("wrong:")
    assert "wrong" in times  # a failed jaxtrace program is still timed, and reported
    assert not progs["peer"]["valid"] and "peer" not in times and "median_s" not in progs["peer"]
    # Over --peer-limit: the checking call is the only time.
    record = {"status": "ok", "failures": [], "programs": {}}
    times = runner.measure(record, specs[:1], runner.Settings(5, 60.0, 0.0, "highest", 0))
    assert times["a"] == [record["programs"]["a"]["first_call_s"]]
    assert "checking call alone" in record["programs"]["a"]["note"] and record["repeats"] == 0
