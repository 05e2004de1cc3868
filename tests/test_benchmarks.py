"""Smoke test of the benchmark suite: ``python -m benchmarks`` on tiny shapes.

Runs the CLI in a subprocess (it enables 64-bit types process-wide, which must
not leak into the other tests) and checks that the JSON, Markdown and PNG were
written, that the JSON has the expected layout and finite figures, and that a
skipped peer is reported with its reason rather than dropped.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

# The bench extras; the test is skipped where only the test extras are installed.
pytest.importorskip("matplotlib")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parents[1]


_ITEMSIZE = {"float32": 4, "float64": 8}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("bench")
    args = [
        sys.executable,
        "-m",
        "benchmarks",
        "--platform",
        "cpu",
        # 2x6x4: a batch whose peer forms 6x6 matrices, above --peer-max-n 5, so the
        # peer is skipped (and its slow vmapped compilation too); 3x5 runs both.
        "--shapes",
        "2x6x4,3x5",
        # float64 exercises the x64 switch; the core and HVP rows run in float32.
        "--dtypes",
        "float64",
        "--mode",
        "value_and_grad",
        "--peer-max-n",
        "5",
        "--repeats",
        "3",
        "--core-shape",
        "12x8",
        "--hvp-shape",
        "10x6",
        "--out",
        str(out),
    ]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    return proc, out


def test_cli_succeeds_and_writes_files(run: tuple[subprocess.CompletedProcess, Path]) -> None:
    proc, out = run
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("benchmark.json", "benchmark.md", "benchmark.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The terminal table and the progress bar (on stderr).
    assert "jaxtrace against the peer" in proc.stdout
    assert "benchmarks" in proc.stderr


def test_json_layout_and_figures(run: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, out = run
    results = json.loads((out / "benchmark.json").read_text())
    env = results["environment"]
    for key in (
        "platform",
        "device_kind",
        "jax_version",
        "jaxlib_version",
        "python_version",
        "cpu_count",
    ):
        assert env[key], key
    assert env["platform"] == "cpu"
    assert env["x64_enabled"] is True
    assert results["failures"] == []

    records = results["records"]
    kinds = [r["kind"] for r in records]
    assert kinds.count("peer") == 2  # 2 shapes x 1 dtype x 1 mode
    assert kinds.count("core") == 1 and kinds.count("hvp") == 1
    assert {r["dtype"] for r in records} == {"float32", "float64"}

    for rec in records:
        assert rec["status"] in ("ok", "peer skipped"), rec
        assert rec["check"]["passed"] is True
        assert all(_finite(e) for e in rec["check"]["errors"].values())
        assert rec["repeats"] == 3
        # XLA:CPU reports compiled temporary memory, and every program keeps at
        # least one k x k Gram per matrix there (eigh's input, not an output).
        *batch, n, m = rec["shape"]
        gram_bytes = math.prod(batch) * min(n, m) ** 2 * _ITEMSIZE[rec["dtype"]]
        for name, stats in rec["programs"].items():
            assert _finite(stats["median_s"]) and stats["median_s"] > 0
            assert len(stats["times_s"]) == 3
            temp = stats["temp_bytes"]
            assert isinstance(temp, int) and not isinstance(temp, bool), (name, temp)
            assert temp >= gram_bytes, (rec["kind"], rec["shape"], name, temp, gram_bytes)
        if rec["status"] == "ok":
            assert len(rec["programs"]) == 2
            assert _finite(rec["ratio"]["median"]) and rec["ratio"]["median"] > 0
        if rec["kind"] in ("core", "hvp"):
            assert isinstance(rec["target"]["met"], bool)


def test_skipped_peer_is_reported(run: tuple[subprocess.CompletedProcess, Path]) -> None:
    _, out = run
    results = json.loads((out / "benchmark.json").read_text())
    skipped = [r for r in results["records"] if r["status"] == "peer skipped"]
    assert [r["shape"] for r in skipped] == [[2, 6, 4]]
    for rec in skipped:
        assert "--peer-max-n" in rec["skip_reason"]
        assert list(rec["programs"]) == ["jaxtrace"] and rec["ratio"] is None
        # Still checked, against the float64 reference.
        assert rec["check"]["reference"] == "float64 reference"
    markdown = (out / "benchmark.md").read_text()
    assert "peer skipped" in markdown and "--peer-max-n" in markdown
    assert "jaxtrace against its core" in markdown and "Hessian-vector product" in markdown
