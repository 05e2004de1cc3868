"""What is measured: the sweeps' shapes, dtypes, modes and functions, and their inputs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

FUNCTIONS = ("trace", "log_trace")  # trace_expm_gram, log_trace_expm_gram
MODES = ("value", "value_and_grad")
DTYPES = ("float32", "float64")
NOTEARS = "notears"  # h(W) = tr exp(W o W) - d by jaxtrace.trace_expm, float32 value and gradient
NOTEARS_SHAPES: tuple[tuple[int, ...], ...] = ((100, 100), (64, 20, 20), (500, 500))

# Square, tall, wide and batched (batch dimensions first).
QUICK_SHAPES: tuple[tuple[int, ...], ...] = (
    (1024, 1024),
    (2048, 64),
    (64, 2048),
    (1024, 32, 16),
    (4096, 8, 8),
)
FULL_SHAPES: tuple[tuple[int, ...], ...] = (
    (256, 256),
    (512, 512),
    *QUICK_SHAPES[:2],
    (4096, 32),
    *QUICK_SHAPES[2:],
)


@dataclass(frozen=True)
class Case:
    """One point of a sweep.

    Attributes:
      shape: shape of ``x``, ``(..., n, m)``.
      dtype: ``"float32"`` or ``"float64"``.
      mode: ``"value"`` or ``"value_and_grad"``.
      function: ``"trace"``, ``"log_trace"`` or :data:`NOTEARS`.
    """

    shape: tuple[int, ...]
    dtype: str
    mode: str
    function: str = "trace"

    @property
    def batch(self) -> int:
        """Number of matrices (1 for a single matrix)."""
        return math.prod(self.shape[:-2])

    @property
    def n(self) -> int:
        """Rows of each matrix: the card's peer forms an n x n matrix."""
        return self.shape[-2]

    @property
    def m(self) -> int:
        """Columns of each matrix."""
        return self.shape[-1]

    @property
    def k(self) -> int:
        """Size of the smaller Gram."""
        return min(self.n, self.m)

    @property
    def family(self) -> str:
        """``"batched"``, ``"square"``, ``"tall"`` or ``"wide"``."""
        if len(self.shape) > 2:
            return "batched"
        if self.n == self.m:
            return "square"
        return "tall" if self.n > self.m else "wide"

    @property
    def label(self) -> str:
        """E.g. ``"trace tall 2048x64 float32 value_and_grad"``."""
        return f"{self.function} {self.family} {format_shape(self.shape)} {self.dtype} {self.mode}"


def format_shape(shape: Sequence[int]) -> str:
    """``(8, 32, 16)`` -> ``"8x32x16"``."""
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses ``"2048x64"`` or ``"8x1024x32x16"`` (batch dimensions first).

    Raises:
      ValueError: unless the text is at least two positive integers joined by ``x``.
    """
    try:
        shape = tuple(int(part) for part in text.strip().lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"bad shape {text!r}: expected e.g. 2048x64 or 8x1024x32x16")
    return shape


def parse_choices(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """A comma-separated subset of ``allowed``, in the given order.

    Raises:
      ValueError: on a name outside ``allowed`` or an empty list.
    """
    chosen = tuple(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not chosen or any(c not in allowed for c in chosen):
        raise ValueError(f"bad {what} {text!r}: choose from {', '.join(allowed)}")
    return chosen


def make_input(shape: Sequence[int], dtype: str, seed: int) -> np.ndarray:
    """A Gaussian ``x`` with entries ``N(0, 1) * 0.5 / sqrt(max(n, m))``.

    The Gram's eigenvalues then lie below ``0.25 * (1 + sqrt(k / max(n, m)))**2 <= 1``:
    far from overflow and from expm's squaring limit, so every program takes its
    ordinary path.
    """
    n, m = shape[-2:]
    x = np.random.default_rng(seed).standard_normal(tuple(shape)) * (0.5 / math.sqrt(max(n, m)))
    return x.astype(dtype)


def make_notears_input(shape: Sequence[int], dtype: str, seed: int) -> np.ndarray:
    """A sparse ``W`` as NOTEARS meets it: ``N(0, 1)`` entries kept with probability ``2 / d``,
    times 0.5 (about two edges per node), so ``W o W`` has a modest spectrum."""
    rng = np.random.default_rng(seed)
    keep = rng.random(tuple(shape)) < 2.0 / shape[-1]
    return (rng.standard_normal(tuple(shape)) * keep * 0.5).astype(dtype)
