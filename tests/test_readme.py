"""The README's Python snippets run as written."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# Multi-host set-up needs a cluster; everything else must run here.
RUNNABLE = [b for b in BLOCKS if "jax.distributed" not in b]


def test_readme_has_snippets():
    assert len(RUNNABLE) >= 4


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_readme_snippet_runs(index):
    namespace: dict = {}
    exec(compile(RUNNABLE[index], f"README.md[python block {index}]", "exec"), namespace)
    # Every array the snippet leaves behind is finite: no NaN from degenerate points.
    arrays = [v for v in namespace.values() if isinstance(v, jax.Array)]
    assert arrays
    for a in arrays:
        assert bool(jnp.all(jnp.isfinite(a))), a


def test_readme_hessian_snippet_matches_closed_form():
    """At X = 0 the Hessian of tr(expm(X X^T)) is 2 I."""
    block = next(b for b in RUNNABLE if "jax.hessian" in b)
    namespace: dict = {}
    exec(block, namespace)
    h = np.asarray(namespace["h"]).reshape(18, 18)
    np.testing.assert_allclose(h, 2 * np.eye(18), atol=1e-6)
    np.testing.assert_allclose(np.asarray(namespace["hvp"]), 2 * np.ones((6, 3)), atol=1e-6)
