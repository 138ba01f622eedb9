"""Helpers shared by the tests (importable by subprocesses as ``tests.helpers.*`` with the repository on PYTHONPATH)."""
