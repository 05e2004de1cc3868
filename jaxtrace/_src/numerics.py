"""Settings shared by every product of the library."""

from __future__ import annotations

from jax import lax

# Full-precision products: TPUs and recent GPUs would otherwise round float32
# operands to bfloat16/TF32, which an exact operator cannot afford.
PRECISION = lax.Precision.HIGHEST
