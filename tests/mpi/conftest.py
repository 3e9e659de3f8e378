"""Fixtures for the MPI tests (helpers in mpifixtures.py)."""

import os

import pytest

from mpifixtures import Cluster, can_make_namespaces

_counter = [0]


@pytest.fixture
def cluster(tmp_path):
    why = can_make_namespaces()
    if why:
        pytest.skip(why)
    made = []

    def make(workers: int = 3, dns_delay: float = 0.0) -> Cluster:
        _counter[0] += 1
        c = Cluster(tmp_path, f"{os.getpid() % 1000}{_counter[0]}", workers, dns_delay)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """pytest-mpi takes every test under a folder named `mpi` for an MPI test (the folder
    name is one of its keywords) and skips it without --with-mpi; only tests that carry
    the real `mpi` marker are MPI tests here."""
    for item in items:
        if item.get_closest_marker("mpi") is None:
            item.own_markers[:] = [m for m in item.own_markers
                                   if not (m.name == "skip" and "--with-mpi" in str(m.kwargs.get("reason", "")))]
