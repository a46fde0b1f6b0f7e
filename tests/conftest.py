"""Keep every cache the tests make (tokens, targets) in a temporary folder, not ~/.cache; mark
the modules that start real federations as slow (`pytest -m "not slow"` runs the unit tests)."""

from __future__ import annotations

import os

import pytest

# Every test in these modules starts Flower for real (SuperLink, SuperNodes, Ray, flwr run).
SLOW_MODULES = {"test_deployment", "test_flwr_run", "test_simulation", "test_install"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.module is not None and item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("feda2v-cache")
    previous = os.environ.get("FEDA2V_CACHE_DIR")
    os.environ["FEDA2V_CACHE_DIR"] = str(path)  # subprocesses (flwr, Ray) inherit it
    yield path
    if previous is None:
        os.environ.pop("FEDA2V_CACHE_DIR", None)
    else:
        os.environ["FEDA2V_CACHE_DIR"] = previous


@pytest.fixture
def task_identity():
    """Flower Messages need a run identity, as inside a ServerApp."""
    from drills import server_identity

    with server_identity():
        yield
