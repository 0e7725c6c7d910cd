"""Every integration test that takes `server` or `server_factory` runs twice: `[node]` on one
in-process server (SQLite in tmp_path), `[cluster]` on three nodes sharing PostgreSQL and
Redis with the clients spread over them (deployments.py). PROTOCOL section 9: a client must
not be able to tell the two apart.

A test that is about one process only says so, with the reason, and runs on `[node]` alone:

    @pytest.mark.single_node("an SQLite lock is this process's own outage")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

from .databases import DatabasePool
from .deployments import ClusterHandle, cluster_factory

DEPLOYMENTS = ("node", "cluster")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "single_node(reason): the test concerns one server process; not run on the cluster",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "deployment" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("single_node")
    if marker is not None and not (marker.args and isinstance(marker.args[0], str) and marker.args[0]):
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: single_node needs the reason as its argument")
    modes = ["node"] if marker is not None else list(DEPLOYMENTS)
    metafunc.parametrize("deployment", modes, indirect=True)


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> str:
    """"node" or "cluster" (parametrised by pytest_generate_tests above)."""
    return request.param


@pytest.fixture(scope="session")
def database_pool() -> Iterator[DatabasePool]:
    """Fresh PostgreSQL databases for the clusters, made ahead on a thread (databases.py);
    nothing is started until a cluster test asks for its first database."""
    pool = DatabasePool()
    yield pool
    pool.close()


@pytest.fixture
async def server_factory(
    deployment: str, server_factory: Callable[..., Awaitable[Any]], server_config: Any, tmp_path: Path,
    database_pool: DatabasePool,
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """The suite-wide `server_factory` on `[node]`; on `[cluster]`, each call starts a cluster
    (the same database and prefix every time: a second call after `stop()` is a restart)."""
    if deployment == "node":
        yield server_factory
        return
    from conftest import ServerHandle

    async with cluster_factory(server_config, tmp_path, ServerHandle, database_pool) as start:
        yield start


__all__ = ["ClusterHandle"]
