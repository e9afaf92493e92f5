"""The databases every broker store test runs against: an SQLite file and a fresh PostgreSQL
schema (dropped afterwards). Import the fixture with ``name=``::

    from tests.broker._backends import broker_store_fixture  # noqa: F401
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from corral.broker._store import BrokerStore
from tests.audit._backends import StoreUrl, _postgres_schema


@pytest.fixture(
    name="broker_url", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def broker_url_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreUrl]:
    if request.param == "sqlite":
        yield StoreUrl("sqlite", f"sqlite:///{tmp_path_factory.mktemp('broker') / 'broker.db'}")
    else:
        yield from _postgres_schema()


@pytest.fixture(name="broker_store")
def broker_store_fixture(broker_url: StoreUrl) -> Iterator[BrokerStore]:
    store = BrokerStore.from_url(broker_url.url, schema=broker_url.schema)
    store.create_schema()
    try:
        yield store
    finally:
        store.close()
