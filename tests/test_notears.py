"""The NOTEARS example recovers a known DAG, and its pieces do what they claim."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.test_examples import _load


@pytest.fixture(scope="module")
def notears():
    return _load("notears")


@pytest.fixture(scope="module")
def notears_results(notears):
    # d = 10, n = 1000: an ER2 graph with 12 edges at seed 1, with a quarter of the
    # example's inner steps. main runs in float64 by itself (jax.enable_x64 inside);
    # calling it with x64 off, as JAX's default is, checks that it does.
    with jax.enable_x64(False):
        return notears.main(d=10, n=1000, seed=1, inner_steps=100, verbose=False)


def test_notears_recovers_the_graph(notears_results):
    r = notears_results
    assert r["n_edges_true"] == 12, r["n_edges_true"]
    # This run finds the graph exactly (SHD 0, as the float64 SciPy reference
    # does on this seed); one edge of slack, for rounding on another CPU.
    assert r["shd"] <= 1, {k: r[k] for k in ("shd", "extra", "missing", "reversed")}
    assert r["tpr"] >= 11 / 12, r["tpr"]
    assert r["fpr"] <= 1 / 33, r["fpr"]  # 45 - 12 = 33 non-edges in the true skeleton
    assert abs(r["n_edges_pred"] - r["n_edges_true"]) <= 1, r["n_edges_pred"]


def test_notears_result_is_a_dag(notears_results):
    r = notears_results
    assert r["acyclic"] is True
    # Exactly 0: for a DAG every closed walk in W o W is a structural zero.
    assert r["h_thresholded"] == 0.0, r["h_thresholded"]


def test_notears_converges(notears_results):
    r = notears_results
    # Stopped by h <= 1e-8 (the tolerance), not by rho reaching 1e16; the run
    # reaches 3.4e-9 at rho = 1e13. h > 0: the raw W keeps faint cycles, which
    # float64 resolves (in float32 trace_expm(W * W) - d rounds to 0 here, at
    # rho = 1e9).
    assert 0.0 < r["h"] <= 1e-8, r["h"]
    assert r["rho"] < 1e16, r["rho"]
    assert r["seconds"] > 0
    # In float64 although x64 is off outside main.
    assert r["w_est"].dtype == np.float64, r["w_est"].dtype


def test_notears_metrics_on_a_small_graph(notears):
    b_true = np.zeros((4, 4), bool)
    b_true[0, 1] = b_true[1, 2] = True  # 0 -> 1 -> 2, node 3 alone
    b_est = np.zeros((4, 4), bool)
    b_est[1, 0] = True  # reversed
    b_est[1, 2] = True  # true
    b_est[0, 3] = True  # false (extra)
    acc = notears.count_accuracy(b_true, b_est)
    # missing 0 (both true pairs are joined), extra 1 (0-3), reversed 1.
    assert acc["shd"] == 2, acc
    assert (acc["extra"], acc["missing"], acc["reversed"]) == (1, 0, 1), acc
    assert acc["tpr"] == 0.5, acc
    assert acc["fpr"] == 2 / (6 - 2), acc  # (reversed + false) / non-edges of the skeleton
    assert acc["fdr"] == 2 / 3, acc
    assert notears.is_acyclic(b_true) and notears.is_acyclic(b_est)
    cycle = b_true.copy()
    cycle[2, 0] = True  # 0 -> 1 -> 2 -> 0
    assert not notears.is_acyclic(cycle)
    assert notears.count_accuracy(b_true, b_true)["shd"] == 0
