"""Registers the shared fixtures once for every folder under tests/.

- ``tests/fixtures.py``: tiny models, Parquet writers/readers, shared fixtures;
- ``tests/mine_data.py``: the mine/train collection and its helpers;
- ``tests/unit/``: transforms/ tested directly (DoFns, functions, TestPipelines);
- ``tests/jobs/``: whole jobs (encode, rerank, mine, train, loop) run end to end;
- top level: the repository's own checks (CLI, layering, setup.py, sdist).
"""
import pytest

# Helper modules that the tests import: their asserts are rewritten too.
pytest.register_assert_rewrite('tests.mine_data')

pytest_plugins = ['tests.fixtures']
