"""The examples run, and do what they claim, with few steps."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import jax
import pytest

from tests import conftest

# Every test runs once per method (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("auto_method")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    path = EXAMPLES / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"jaxtrace_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spectral_penalty_results(auto_method):
    module = _load("spectral_penalty")
    # The example is written for JAX's default float32.
    with conftest.resolving_auto(auto_method), jax.enable_x64(False):
        return module.main(steps=40, verbose=False)


def test_spectral_penalty_lowers_the_top_singular_value(spectral_penalty_results):
    base = spectral_penalty_results["baseline"]
    pen = spectral_penalty_results["penalized"]
    assert pen["sigma_max"] < base["sigma_max"] - 0.1, (pen, base)


def test_spectral_penalty_losses_are_finite_and_training_helps(spectral_penalty_results):
    for run in ("baseline", "penalized"):
        r = spectral_penalty_results[run]
        for key in ("sigma_max", "train_loss", "test_loss"):
            assert math.isfinite(r[key]), (run, key, r[key])
        # 40 Adam steps bring the mean squared error well below the target variance.
        assert r["train_loss"] < 0.1, (run, r)


def test_spectral_penalty_batched_surrogate_brackets_sigma_max(spectral_penalty_results):
    s = spectral_penalty_results["surrogate"]
    assert len(s["log_trace"]) == len(s["beta_sigma_max_sq"]) == len(s["trace"]) > 1
    for lo, mid, tr in zip(s["beta_sigma_max_sq"], s["log_trace"], s["trace"], strict=True):
        # beta sigma_max^2 <= log tr expm(beta W W^T) <= beta sigma_max^2 + log n
        assert lo - 1e-3 * abs(lo) <= mid <= lo + s["log_n"] + 1e-3 * abs(lo), (lo, mid)
        assert math.isclose(math.log(tr), mid, rel_tol=1e-4), (tr, mid)
