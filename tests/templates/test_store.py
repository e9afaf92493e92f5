"""The activation store on SQLite and PostgreSQL: round trips, an append-only history,
conflicts, and corrupted rows named and refused."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from corral.templates import (
    Activation,
    ActivationConflict,
    ActivationStore,
    Catalog,
    CorruptActivation,
    Notice,
    NoticeKind,
    NoticeRecord,
    activation_entry,
    notice_entry,
)
from tests.audit._backends import (
    StoreUrl,
    store_url_fixture,  # noqa: F401
)
from tests.templates._catalogs import NAME, T0, write_version


@pytest.fixture(name="store")
def store_fixture(store_url: StoreUrl) -> Iterator[ActivationStore]:
    store = ActivationStore.from_url(store_url.url, schema=store_url.schema)
    store.create_schema()
    store.create_schema()  # idempotent: tables and triggers exist already
    try:
        yield store
    finally:
        store.close()


@pytest.fixture(name="catalog", scope="module")
def catalog_fixture(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    root = tmp_path_factory.mktemp("catalog")
    for version in ("1.0.0", "1.0.1", "1.1.0"):
        write_version(root, version)
    return Catalog.load(root)


def make(catalog: Catalog, version: str, *, tenant: str = "brightsmile", n: int = 1,
         revision: int = 1, automatic: bool = False) -> Activation:  # fmt: skip
    at = T0 + timedelta(minutes=revision)
    template = catalog.get(NAME, version)
    entry = activation_entry(template, entry_id=f"ent_{n}_{revision}", tenant=tenant,
                             activation_id=f"act_{n}", at=at, automatic=automatic)  # fmt: skip
    return Activation(activation_id=f"act_{n}", tenant=tenant, template=NAME, version=version,
                      content_hash=template.content_hash, automatic=automatic, activated_at=T0,
                      updated_at=at, revision=revision, entry=entry)  # fmt: skip


def test_activations_and_history_round_trip(store: ActivationStore, catalog: Catalog) -> None:
    first = make(catalog, "1.0.0")
    with store.change() as change:
        assert change.find("brightsmile", NAME) is None
        change.insert(first)
        change.insert(make(catalog, "1.1.0", tenant="other", n=2))
    moved = make(catalog, "1.0.1", revision=2, automatic=True)
    with store.change() as change:
        current = change.get("act_1")
        assert current == first
        change.replace(first, moved)
    assert store.get("act_1") == moved and store.get("act_9") is None
    assert [a.tenant for a in store.activations()] == ["brightsmile", "other"]
    assert store.activations("brightsmile") == [moved]
    assert moved.activated_at.tzinfo is not None and store.activations()[0].updated_at == (
        T0 + timedelta(minutes=2)
    )
    history = store.history("brightsmile")
    assert [(h.from_version, h.version, h.automatic, h.at) for h in history] == [
        (None, "1.0.0", False, T0 + timedelta(minutes=1)),
        ("1.0.0", "1.0.1", True, T0 + timedelta(minutes=2)),
    ]
    assert history[1].entry == moved.entry and history[0].seq < history[1].seq
    assert store.history("brightsmile", "act_2") == [] and len(store.history("other")) == 1


def test_one_activation_per_tenant_and_template(store: ActivationStore, catalog: Catalog) -> None:
    with store.change() as change:
        change.insert(make(catalog, "1.0.0"))
    with (
        pytest.raises(ActivationConflict, match="already has an activation of 'clinic'"),
        store.change() as change,
    ):
        change.insert(make(catalog, "1.1.0", n=2))
    assert [a.activation_id for a in store.activations()] == ["act_1"]
    assert len(store.history("brightsmile")) == 1


def test_a_stale_revision_is_a_conflict_and_writes_nothing(
    store: ActivationStore, catalog: Catalog
) -> None:
    first = make(catalog, "1.0.0")
    with store.change() as change:
        change.insert(first)
        change.replace(first, make(catalog, "1.0.1", revision=2))
    with (
        pytest.raises(ActivationConflict, match="changed while this change was decided"),
        store.change() as change,
    ):
        change.replace(first, make(catalog, "1.1.0", revision=2))
    current = store.get("act_1")
    assert current is not None and current.version == "1.0.1"
    assert [h.version for h in store.history("brightsmile")] == ["1.0.0", "1.0.1"]


@pytest.mark.parametrize(
    "statement",
    ["UPDATE template_activation_history SET version = '9.9.9'",
     "DELETE FROM template_activation_history",
     "TRUNCATE template_activation_history"],
    ids=["update", "delete", "truncate"],
)  # fmt: skip
def test_the_history_is_append_only(
    store: ActivationStore, catalog: Catalog, store_url: StoreUrl, statement: str
) -> None:
    with store.change() as change:
        change.insert(make(catalog, "1.0.0"))
    if statement.startswith("TRUNCATE") and store_url.backend == "sqlite":
        statement = "DELETE FROM template_activation_history"  # SQLite's TRUNCATE is DELETE
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), store.engine.begin() as conn:
        conn.exec_driver_sql(statement.replace("template_", _prefix(store_url) + "template_"))
    assert [h.version for h in store.history("brightsmile")] == ["1.0.0"]


def _prefix(store_url: StoreUrl) -> str:
    return f'"{store_url.schema}".' if store_url.schema else ""


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("entry", "{", "entry is not a valid audit entry: entry is not JSON"),
        ("content_hash", "sha256:00", "content_hash is 'sha256:00' but its audit entry ent_1_1"),
        ("automatic", True, "automatic is True but its audit entry ent_1_1 says False"),
        ("tenant", "someone-else", "tenant is 'someone-else' but its audit entry"),
    ],
)
def test_a_corrupted_row_is_named(
    store: ActivationStore, catalog: Catalog, store_url: StoreUrl, column: str, value: object,
    problem: str,
) -> None:  # fmt: skip
    with store.change() as change:
        change.insert(make(catalog, "1.0.0"))
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {_prefix(store_url)}template_activations SET {column} = :v"),
            {"v": value},
        )
    with pytest.raises(CorruptActivation) as caught:
        store.activations()
    tenant = value if column == "tenant" else "brightsmile"
    assert str(caught.value).startswith(
        f"template_activations row 'act_1' (tenant '{tenant}'): {problem}"
    ), str(caught.value)
    assert caught.value.row == f"'act_1' (tenant '{tenant}')"
    # A write transaction that meets the row changes nothing.
    with pytest.raises(CorruptActivation), store.change() as change:
        current = change.get("act_1")
        assert current is not None
        change.replace(current, replace(current, revision=current.revision + 1))
    assert len(store.history("brightsmile")) == 1


def test_a_corrupted_history_row_is_named(
    store: ActivationStore, catalog: Catalog, store_url: StoreUrl
) -> None:
    with store.change() as change:
        change.insert(make(catalog, "1.0.0"))
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                f"INSERT INTO {_prefix(store_url)}template_activation_history (activation_id, "
                "tenant, template, from_version, version, content_hash, automatic, at, entry) "
                "VALUES ('act_1', 'brightsmile', 'clinic', '1.0.0', '1.0.1', 'sha256:00', "
                ":automatic, :at, 'garbage')"
            ),
            {"automatic": False, "at": T0.astimezone(UTC)},
        )
    with pytest.raises(CorruptActivation, match=(
        r"template_activation_history row seq \d+ \(activation 'act_1'\): entry is not a valid"
    )):  # fmt: skip
        store.history("brightsmile")


def test_sqlite_in_memory_is_refused(tmp_path: Path) -> None:
    from corral.core.errors import ConfigError

    with pytest.raises(ConfigError, match="needs an SQLite file"):
        ActivationStore.from_url("sqlite://")


def _notice(tenant: str = "brightsmile", n: int = 1, version: str = "1.0.0") -> NoticeRecord:
    sunset = datetime(2026, 11, 12, tzinfo=UTC)
    notice = Notice(activation_id=f"act_{n}", tenant=tenant, template=NAME, version=version,
                    kind=NoticeKind.SUNSETTING, deprecated_at=None, sunset_at=sunset,
                    replacement="1.1.0")  # fmt: skip
    entry = notice_entry(notice, entry_id=f"ent_n{n}", at=T0)
    return NoticeRecord(activation_id=notice.activation_id, tenant=tenant, template=NAME,
                        version=version, notice="sunsetting", sunset_at=sunset, at=T0,
                        entry=entry)  # fmt: skip


def test_notices_round_trip_once_per_activation_and_date(
    store: ActivationStore, store_url: StoreUrl
) -> None:
    given = _notice()
    with store.change() as change:
        assert change.notice("act_1", given.sunset_at) is None
        change.insert_notice(given)
        change.insert_notice(_notice("other", n=2))
    with store.change() as change:
        assert change.notice("act_1", given.sunset_at) == given
        assert change.notice("act_1", given.sunset_at + timedelta(days=1)) is None
    assert store.notices() == [given, _notice("other", n=2)]
    assert store.notices("brightsmile") == [given]
    with pytest.raises(ActivationConflict, match="already given"), store.change() as change:
        change.insert_notice(given)
    assert len(store.notices()) == 2
    with store.engine.begin() as conn:  # a notice row edited behind corral's back
        conn.execute(
            sa.text(f"UPDATE {_prefix(store_url)}template_notices SET version = '0.9.0' "
                    "WHERE tenant = 'other'")
        )  # fmt: skip
    with pytest.raises(CorruptActivation, match=(
        r"template_notices row 'act_2' \(tenant 'other', sunset_at 2026-11-12 00:00:00\+00:00\): "
        r"version is '0.9.0' but its audit entry ent_n2 says '1.0.0'"
    )):  # fmt: skip
        store.notices()
