import jax
import pytest


@pytest.fixture
def x64():
    """Runs a test with 64-bit types enabled (exactness tests)."""
    with jax.enable_x64(True):
        yield


@pytest.fixture
def x32():
    """Runs a test with JAX's default 32-bit types (where users live)."""
    with jax.enable_x64(False):
        yield
