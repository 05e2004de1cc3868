"""The benchmark device and the description of the machine a run took place on."""

from __future__ import annotations

import os
import platform as host_platform
from typing import Any

import jax
import numpy as np

import jaxtrace

_ENV_VARS = (
    "JAX_PLATFORMS",
    "XLA_FLAGS",
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)


def load_average() -> list[float] | None:
    """The host's 1, 5 and 15 minute load averages (other processes skew timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # Not available on every OS.
        return None


def configure(dtypes: tuple[str, ...]) -> None:
    """Process-wide JAX settings; call once, before any array is created.

    Args:
      dtypes: the dtypes of the run; float64 needs 64-bit types enabled
        (float32 programs compile to the same HLO either way).
    """
    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)


def select_device(platform: str | None) -> jax.Device:
    """The first device of ``platform`` (``"cpu"``, ``"gpu"``, ``"tpu"``), or JAX's default.

    Raises:
      RuntimeError: if JAX has no such platform here (JAX's own message).
    """
    if platform is None:
        return jax.devices()[0]
    return jax.devices(platform)[0]


def describe(device: jax.Device, argv: list[str]) -> dict[str, Any]:
    """Device, platform, versions and host of the run, for the JSON and Markdown.

    Args:
      device: the benchmark device.
      argv: the command-line arguments of the run (without the program name).
    """
    try:
        import jaxlib

        jaxlib_version = jaxlib.__version__
    except (ImportError, AttributeError):
        jaxlib_version = None
    client = getattr(device, "client", None)
    try:
        import scipy  # On CPU, jaxlib's eigh calls LAPACK through SciPy's OpenBLAS.

        scipy_version = scipy.__version__
    except ImportError:
        scipy_version = None
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device": str(device),
        "device_count": len(jax.devices(device.platform)),
        "platform_version": getattr(client, "platform_version", None),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib_version,
        "jaxtrace_version": jaxtrace.__version__,
        "numpy_version": np.__version__,
        "scipy_version": scipy_version,
        "python_version": host_platform.python_version(),
        "os": host_platform.platform(),
        "cpu_count": os.cpu_count(),
        "load_average": load_average(),
        # Thread settings change CPU timings (LAPACK and XLA keep separate thread pools).
        "env": {k: os.environ.get(k) for k in _ENV_VARS},
        "x64_enabled": bool(jax.config.jax_enable_x64),
        "command": " ".join(["python", "-m", "benchmarks", *argv]),
    }
