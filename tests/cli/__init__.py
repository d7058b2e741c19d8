"""A package so that its conftest imports as ``cli.conftest``.

Without it, ``--doctest-modules`` meets ``tests/cli/conftest.py`` first under the bare
name ``conftest`` and then refuses ``tests/conftest.py`` as an import-file mismatch.
"""
