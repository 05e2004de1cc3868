"""Entry point of ``python -m benchmarks``."""

from benchmarks.cli import main

# Guarded so that importing this module (e.g. pytest --doctest-modules) runs nothing.
if __name__ == "__main__":
    raise SystemExit(main())
