r"""Evaluation methods behind one small interface, and the automatic choice.

A method turns the k x k Gram ``g`` and the scale ``s`` into the log-trace
:math:`\ell = \log\operatorname{tr}\exp(sG)`, as the pair ``(top, total)``
with :math:`\ell = top + \log(total)` (``log_trace``) and, for derivatives,
into ``(top, total, W, M)`` (``weights``): :math:`W = total\,\hat E` with
:math:`\hat E = \exp(sG)/e^\ell` and :math:`M = total\,\partial\ell/\partial s`,
unnormalised so that the trace's gradients :math:`e^{top}W` round no more
than their terms. ``weights`` is differentiable once more, in forward and
reverse mode (the second derivatives of the public functions). Adding a method is one module
and one entry of ``METHODS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np

from jaxtrace._src.methods import eigh, expm


class Method(NamedTuple):
    name: str
    log_trace: Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
    weights: Callable[[jax.Array, jax.Array], tuple[jax.Array, ...]]


METHODS = {
    "eigh": Method("eigh", eigh.log_trace, eigh.weights),
    "expm": Method("expm", expm.log_trace, expm.weights),
}


def auto(*, platform: str, k: int, batch: int, dtype) -> str:
    """The method ``method="auto"`` picks, from static facts alone.

    The expm method, whose matrix products run near peak on every backend,
    except for single float64 matrices with k >= 1024 on CPU, where LAPACK's
    eigensolver costs about as much (measured: eigh/expm 1.05x at k = 1024)
    and, unlike the squarings, does not grow with the norm of sG. The README
    gives the measurements and the reasoning for GPUs and TPUs.

    Args:
        platform: the default backend's platform (``"cpu"``, ``"gpu"``, ``"tpu"``).
        k: the size of the Gram, ``min(n, m)``.
        batch: the number of matrices (the product of the batch dimensions).
        dtype: the compute dtype.
    """
    if platform == "cpu" and np.dtype(dtype) == np.float64 and k >= 1024 and batch == 1:
        return "eigh"
    return "expm"


def choose(name: str, *, k: int, batch: int, dtype) -> Method:
    """The method for ``name``; "auto" is decided by :func:`auto` at trace time."""
    if name == "auto":
        name = auto(platform=jax.default_backend(), k=k, batch=batch, dtype=dtype)
    return METHODS[name]
