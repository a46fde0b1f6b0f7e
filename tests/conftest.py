"""Keep every cache the tests make (tokens, targets) in a temporary folder, not ~/.cache."""

from __future__ import annotations

import os

import pytest


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
