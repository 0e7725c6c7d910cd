"""Fixtures of the cluster tests: three node processes on a fresh database and key prefix.

`cluster`: the nodes reach PostgreSQL and Redis directly. `proxied_cluster`: each node
through FaultProxies of its own, for the fault tests. Both need the machine's services
(skipped without them, failed under CHAT_REQUIRE_SERVICES=1, by tests/services.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services import postgres_url, redis_prefix  # noqa: F401  (fixtures)

from .harness import Cluster, open_cluster


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str, redis_prefix: tuple[str, str]) -> AsyncIterator[Cluster]:  # noqa: F811
    async with open_cluster(tmp_path, postgres_url, redis_prefix) as running:
        yield running


@pytest.fixture
async def proxied_cluster(
    tmp_path: Path, postgres_url: str, redis_prefix: tuple[str, str]  # noqa: F811
) -> AsyncIterator[Cluster]:
    async with open_cluster(tmp_path, postgres_url, redis_prefix, proxied=True) as running:
        yield running
