"""Code that is type-checked, never run: see `tests/test_typecheck.py`."""
