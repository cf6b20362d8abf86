"""The runtime: what generated modules call (needs torch). It imports no part of the compiler, so
that a generated module loads with torch and this package alone (`tests/test_runtime_imports.py`)."""
