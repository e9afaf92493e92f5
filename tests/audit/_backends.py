"""The backends every audit store and sequencer test runs against, and what those tests share.

``store_url`` is parametrized: an SQLite file in the test's temporary directory, and a fresh
schema in the PostgreSQL server at 127.0.0.1:5432 (user postgres, database ``test``), dropped
at the end. Test modules import the fixtures (``name=`` keeps parameters from shadowing them)::

    from tests.audit._backends import store_fixture, store_url_fixture  # noqa: F401

An unreachable PostgreSQL fails in CI and skips elsewhere (:func:`tests.conftest.need_service`).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from corral.audit import entries, merkle, note
from corral.audit.store import LogStore
from tests.conftest import need_service

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
DEPLOYMENT = "corral.test"
TENANT = "brightsmile"
START = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)


@dataclass(frozen=True)
class StoreUrl:
    """Where a test's store lives: a URL, and for PostgreSQL the test's own schema."""

    backend: str
    url: str
    schema: str | None = None

    def open(self) -> LogStore:
        store = LogStore.from_url(self.url, schema=self.schema)
        store.create_schema()
        return store


def _postgres_schema() -> Generator[StoreUrl, None, None]:
    engine = sa.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.OperationalError as exc:
        engine.dispose()
        need_service("PostgreSQL", f"cannot connect to {POSTGRES_URL}: {exc.orig}")
    schema = f"audit_test_{uuid.uuid4().hex[:16]}"
    try:
        yield StoreUrl("postgres", POSTGRES_URL, schema)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        engine.dispose()


@pytest.fixture(
    name="store_url", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def store_url_fixture(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StoreUrl]:
    if request.param == "sqlite":
        yield StoreUrl("sqlite", f"sqlite:///{tmp_path_factory.mktemp('audit') / 'audit.db'}")
    else:
        yield from _postgres_schema()


@pytest.fixture(name="store")
def store_fixture(store_url: StoreUrl) -> Iterator[LogStore]:
    """An open store with its tables created; closed after the test."""
    opened = store_url.open()
    try:
        yield opened
    finally:
        opened.close()


# ------------------------------------------------------------------------------- helpers


def origin(tenant: str = TENANT) -> str:
    return f"{DEPLOYMENT}/tenants/{tenant}"


def signer_for(origin: str) -> note.Signer:
    """A fixed checkpoint key per origin, so that a test (or another process) can verify."""
    seed = hashlib.sha256(b"corral test key " + origin.encode()).digest()
    skey, _ = note.generate_key(origin, entropy=lambda n: seed[:n])
    return note.Signer.from_key(skey)


def entry(
    n: int, *, tenant: str = TENANT, personal: bool = False, tag: str = ""
) -> tuple[entries.ActionRequested, entries.PersonalPayload | None]:
    """The ``n``-th test entry (an ``action.requested``), sealed with a payload if asked."""
    unsealed = entries.ActionRequested(
        id=f"ent_{tag}{n}",
        tenant=tenant,
        at=START + timedelta(seconds=n),
        actor=entries.Actor(kind="agent", id="receptionist-1", role="receptionist"),
        data=entries.ActionRequestedData(call_id=f"call_{tag}{n}", tool="twilio.send_sms"),
    )
    body = {"args": {"to": "+15550101234", "body": f"reminder {n}"}} if personal else None
    return entries.seal(unsealed, body, salt=hashlib.sha256(f"salt {tag}{n}".encode()).digest())


def all_nodes(leaves: list[bytes]) -> dict[merkle.NodeId, bytes]:
    """Every complete subtree of the tree of ``leaves``, recomputed from scratch."""
    tree = merkle.CompactRange()
    nodes: dict[merkle.NodeId, bytes] = {}
    for leaf in leaves:
        nodes.update(tree.append(merkle.leaf_hash(leaf)))
    return nodes


def stored_node_count(store: LogStore, tenant: str = TENANT) -> int:
    """Rows in ``audit_nodes`` for ``tenant`` (to catch nodes that should not be there)."""
    nodes = sa.Table("audit_nodes", sa.MetaData(), sa.Column("tenant", sa.String))
    with store.engine.connect() as conn:
        query = sa.select(sa.func.count()).select_from(nodes).where(nodes.c.tenant == tenant)
        count = conn.scalar(query)
    return int(count or 0)
