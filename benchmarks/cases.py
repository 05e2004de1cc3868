"""What is measured: shapes, dtypes and modes of the sweeps, and their inputs."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MODES = ("value", "value_and_grad")
DTYPES = ("float32", "float64")
FAMILIES = ("square", "tall", "wide", "batched")

# The full sweep of the issue: square, tall, wide and batched (leading batch dimension).
FULL_SHAPES: tuple[tuple[int, ...], ...] = (
    (256, 256),
    (512, 512),
    (1024, 1024),
    (2048, 64),
    (4096, 32),
    (64, 2048),
    (1024, 32, 16),
    (4096, 8, 8),
)
# The quick default: one case per family, sized to finish in about a minute on 2 CPU cores.
QUICK_SHAPES: tuple[tuple[int, ...], ...] = (
    (1024, 1024),
    (2048, 64),
    (64, 2048),
    (1024, 32, 16),
)

CORE_SHAPE = (1024, 768)
HVP_SHAPE = (1024, 256)


@dataclass(frozen=True)
class Case:
    """One point of the sweep: a shape (batch dimensions first), a dtype and a mode.

    Attributes:
      shape: shape of ``x``, ``(..., n, m)``.
      dtype: ``"float32"`` or ``"float64"``.
      mode: ``"value"`` or ``"value_and_grad"``.
    """

    shape: tuple[int, ...]
    dtype: str
    mode: str

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """The leading (batch) dimensions."""
        return self.shape[:-2]

    @property
    def batch(self) -> int:
        """Number of matrices in the batch (1 for a single matrix)."""
        return math.prod(self.batch_shape)

    @property
    def n(self) -> int:
        """Rows of each matrix: the peer forms an n x n matrix."""
        return self.shape[-2]

    @property
    def m(self) -> int:
        """Columns of each matrix."""
        return self.shape[-1]

    @property
    def size(self) -> int:
        """Number of elements of ``x``: the problem size on the plot."""
        return math.prod(self.shape)

    @property
    def family(self) -> str:
        """``"batched"``, ``"square"``, ``"tall"`` or ``"wide"``."""
        if self.batch_shape:
            return "batched"
        if self.n == self.m:
            return "square"
        return "tall" if self.n > self.m else "wide"

    @property
    def label(self) -> str:
        """A readable identifier, e.g. ``"tall 2048x64 float32 value_and_grad"``."""
        return f"{self.family} {format_shape(self.shape)} {self.dtype} {self.mode}"


def format_shape(shape: Sequence[int]) -> str:
    """``(8, 32, 16)`` -> ``"8x32x16"``."""
    return "x".join(str(d) for d in shape)


def parse_shape(text: str) -> tuple[int, ...]:
    """Parses ``"2048x64"`` or ``"8x1024x32x16"`` (batch dimensions first).

    Raises:
      ValueError: if the text is not at least two positive integers joined by ``x``.
    """
    try:
        shape = tuple(int(part) for part in text.strip().lower().split("x"))
    except ValueError:
        raise ValueError(f"bad shape {text!r}: expected e.g. 2048x64 or 8x1024x32x16") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"bad shape {text!r}: need at least two positive dimensions (..., n, m)")
    return shape


def parse_shapes(text: str) -> tuple[tuple[int, ...], ...]:
    """Parses a comma-separated list of shapes, e.g. ``"2048x64,8x1024x32x16"``."""
    return tuple(parse_shape(part) for part in text.split(",") if part.strip())


def parse_choices(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    """Parses a comma-separated subset of ``allowed``, keeping the given order.

    Raises:
      ValueError: on a name outside ``allowed`` or an empty list.
    """
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise ValueError(f"bad {what} {text!r}: choose from {', '.join(allowed)}")
    return chosen


def build_cases(
    shapes: Iterable[tuple[int, ...]], dtypes: Iterable[str], modes: Iterable[str]
) -> list[Case]:
    """The cross product, ordered by dtype, then mode, then shape.

    Args:
      shapes: shapes of ``x``.
      dtypes: dtype names.
      modes: ``"value"`` and/or ``"value_and_grad"``.

    Returns:
      One :class:`Case` per combination.
    """
    shapes = tuple(shapes)
    modes = tuple(modes)
    return [Case(s, d, md) for d in dtypes for md in modes for s in shapes]


def make_input(shape: Sequence[int], dtype: str, seed: int) -> np.ndarray:
    """A Gaussian ``x`` with ``||x x^T||_2 <= ~1``.

    Entries are ``N(0, 1) * 0.5 / sqrt(max(n, m))``, so the eigenvalues of the Gram
    lie below ``0.25 * (1 + sqrt(k / max(n, m)))**2 <= 1``: far from float32
    overflow and from the peer's squaring limit (it returns NaN past it), so both
    programs are finite and take their ordinary paths.

    Args:
      shape: ``(..., n, m)``.
      dtype: ``"float32"`` or ``"float64"``.
      seed: seed of NumPy's generator.

    Returns:
      A host array of the given shape and dtype.
    """
    n, m = shape[-2:]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(shape)) * (0.5 / math.sqrt(max(n, m)))
    return x.astype(dtype)
