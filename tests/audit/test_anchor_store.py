"""Anchor stores: one conformance suite for every backend, then each backend's own promises."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import stat
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from corral.audit.anchor_store import (
    MAX_NOTE_BYTES,
    AnchorError,
    AnchorExists,
    AnchorRecord,
    AnchorStore,
    AnchorStoreUnavailable,
    DynamoDBAnchorStore,
    LocalAnchorStore,
    open_anchor_store,
)
from corral.core import errors
from corral.core.settings import AnchorSettings
from tests import dynalite
from tests._serving import free_port

T0 = datetime(2026, 3, 3, 17, 0, 0, 123456, tzinfo=UTC)


def make(deployment: str = "corral.local", size: int = 1, **fields: Any) -> AnchorRecord:
    """A valid record whose content depends on its key (and on ``fields``)."""
    key = f"{deployment}/{size}".encode()
    values: dict[str, Any] = {
        "deployment": deployment,
        "size": size,
        "root": hashlib.sha256(key).digest(),
        "time": T0 + timedelta(seconds=size % 10**6),
        "note": b"corral.local/anchors\n" + key + b"\n\n\xe2\x80\x94 sig\n",
    }
    values.update(fields)
    return AnchorRecord(**values)


def new_table() -> str:
    return f"anchors-{uuid.uuid4().hex}"


@pytest.fixture(
    params=[
        pytest.param("local", id="local"),
        pytest.param("dynamodb", id="dynamodb", marks=pytest.mark.dynalite),
    ]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> AnchorStore:
    """Each backend, empty: a fresh SQLite file, or a fresh table in the session's dynalite."""
    if request.param == "local":
        return LocalAnchorStore(tmp_path / "anchors.db")
    endpoint: str = request.getfixturevalue("dynalite_endpoint")
    dynamo = DynamoDBAnchorStore(new_table(), client=dynalite.client(endpoint))
    dynamo.create_table()
    return dynamo


# ---------------------------------------------------------------------------------------------
# Conformance: every AnchorStore


def test_store_satisfies_the_protocol(store: AnchorStore) -> None:
    assert isinstance(store, AnchorStore)


def test_empty_store_has_nothing(store: AnchorStore) -> None:
    assert store.get("corral.local", 1) is None
    assert store.latest("corral.local") is None
    assert store.list("corral.local") == []


def test_put_then_get_and_latest(store: AnchorStore) -> None:
    records = {n: make(size=n) for n in (3, 1, 2)}
    for record in records.values():
        store.put(record)
    for n, record in records.items():
        assert store.get("corral.local", n) == record
    assert store.get("corral.local", 4) is None
    assert store.latest("corral.local") == records[3]


def test_sizes_order_as_numbers_not_text(store: AnchorStore) -> None:
    sizes = [1, 2, 9, 10, 11, 100, 2**53 + 1, 2**63 - 1]
    for n in reversed(sizes):
        store.put(make(size=n))
    assert [r.size for r in store.list("corral.local")] == sizes
    latest = store.latest("corral.local")
    assert latest is not None and latest.size == 2**63 - 1
    assert store.get("corral.local", 2**53 + 1) == make(size=2**53 + 1)
    assert store.get("corral.local", 2**53) is None


def test_list_pages_by_after_size_and_limit(store: AnchorStore) -> None:
    for n in range(1, 26):
        store.put(make(size=n))
    assert store.list("corral.local", limit=10) == [make(size=n) for n in range(1, 11)]
    assert [r.size for r in store.list("corral.local", after_size=10, limit=10)] == list(
        range(11, 21)
    )
    assert [r.size for r in store.list("corral.local", after_size=20, limit=10)] == list(
        range(21, 26)
    )
    assert store.list("corral.local", after_size=25) == []
    assert [r.size for r in store.list("corral.local", after_size=7, limit=3)] == [8, 9, 10]
    assert [r.size for r in store.list("corral.local", after_size=24, limit=1)] == [25]
    # Walking the pages yields every record once, in order.
    seen: list[int] = []
    while page := store.list("corral.local", after_size=seen[-1] if seen else 0, limit=4):
        seen.extend(r.size for r in page)
    assert seen == list(range(1, 26))


def test_after_size_between_stored_sizes(store: AnchorStore) -> None:
    for n in (2, 4, 6):
        store.put(make(size=n))
    assert [r.size for r in store.list("corral.local", after_size=3)] == [4, 6]
    assert [r.size for r in store.list("corral.local", after_size=1)] == [2, 4, 6]


def test_default_limit_is_1000(store: AnchorStore) -> None:
    for n in range(1, 1003):
        store.put(make(size=n, note=b"n"))
    listed = store.list("corral.local")
    assert [r.size for r in listed] == list(range(1, 1001))
    assert [r.size for r in store.list("corral.local", after_size=1000)] == [1001, 1002]


def test_list_spans_more_than_one_megabyte(store: AnchorStore) -> None:
    # DynamoDB answers a query with at most 1 MB; list() must follow LastEvaluatedKey.
    big = [make(size=n, note=bytes([n]) * MAX_NOTE_BYTES) for n in range(1, 25)]
    for record in big:
        store.put(record)
    assert store.list("corral.local") == big
    assert store.list("corral.local", after_size=3, limit=19) == big[3:22]


def test_second_put_of_identical_record_is_refused(store: AnchorStore) -> None:
    record = make(size=7)
    store.put(record)
    with pytest.raises(AnchorExists) as caught:
        store.put(record)
    assert (caught.value.deployment, caught.value.size) == ("corral.local", 7)
    assert "corral.local/7" in str(caught.value)
    assert store.get("corral.local", 7) == record


def test_second_put_with_other_content_leaves_the_original(store: AnchorStore) -> None:
    original = make(size=7)
    store.put(original)
    forged = make(size=7, root=bytes(32), time=T0 + timedelta(days=1), note=b"forged")
    with pytest.raises(AnchorExists):
        store.put(forged)
    assert store.get("corral.local", 7) == original
    assert store.list("corral.local") == [original]
    assert store.latest("corral.local") == original


def test_anchor_exists_is_an_anchor_error() -> None:
    exc = AnchorExists("corral.local", 7)
    assert isinstance(exc, errors.AnchorError)
    assert isinstance(exc, errors.AuditError)
    assert AnchorError is errors.AnchorError
    assert issubclass(AnchorStoreUnavailable, errors.AnchorError)


def test_deployments_are_isolated(store: AnchorStore) -> None:
    a1 = make("corral.local", 1)
    b1, b2 = make("corral", 1), make("corral", 2)
    c5 = make("corral.local.eu", 5)
    for record in (a1, b1, b2, c5):
        store.put(record)
    assert store.get("corral.local", 1) == a1
    assert store.get("corral", 1) == b1
    assert store.get("corral.local", 2) is None
    assert store.latest("corral.local") == a1
    assert store.latest("corral") == b2
    assert store.list("corral.local") == [a1]
    assert store.list("corral") == [b1, b2]
    assert store.list("corral.local.eu") == [c5]
    assert store.latest("other") is None


def test_records_round_trip_exactly(store: AnchorStore) -> None:
    odd_time = datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-8)))
    record = make(
        size=1,
        root=bytes(range(32)),
        time=odd_time,
        note=bytes(range(256)) + b"\x00\xff\r\n not utf-8: \xc3\x28",
    )
    big = make(size=2, time=datetime(1970, 1, 1, tzinfo=UTC), note=b"\xff" * MAX_NOTE_BYTES)
    store.put(record)
    store.put(big)
    for original in (record, big):
        back = store.get("corral.local", original.size)
        assert back == original
        assert back is not None
        assert (back.root, back.note) == (original.root, original.note)
        assert back.time == original.time
        assert back.time.utcoffset() == timedelta(0)
        assert back.time.isoformat() == original.time.astimezone(UTC).isoformat()
    assert store.list("corral.local") == [record, big]


BAD_FIELDS: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("deployment", {"deployment": ""}, ValueError),
    ("deployment", {"deployment": "has space"}, ValueError),
    ("deployment", {"deployment": "a+b"}, ValueError),
    ("deployment", {"deployment": "x" * 256}, ValueError),
    ("deployment", {"deployment": b"corral.local"}, TypeError),
    ("size", {"size": 0}, ValueError),
    ("size", {"size": -1}, ValueError),
    ("size", {"size": 2**63}, ValueError),
    ("size", {"size": True}, TypeError),
    ("size", {"size": 1.0}, TypeError),
    ("root", {"root": bytes(31)}, ValueError),
    ("root", {"root": bytes(33)}, ValueError),
    ("root", {"root": b""}, ValueError),
    ("root", {"root": "00" * 32}, TypeError),
    ("time", {"time": datetime(2026, 3, 3, 17, 0)}, ValueError),
    ("time", {"time": "2026-03-03T17:00:00Z"}, TypeError),
    ("note", {"note": b""}, ValueError),
    ("note", {"note": b"x" * (MAX_NOTE_BYTES + 1)}, ValueError),
    ("note", {"note": "text"}, TypeError),
]


@pytest.mark.parametrize(
    ("field", "bad", "kind"),
    [pytest.param(f, b, k, id=f"{f}-{i}") for i, (f, b, k) in enumerate(BAD_FIELDS)],
)
def test_bad_records_are_rejected_naming_the_field(
    store: AnchorStore, field: str, bad: dict[str, Any], kind: type[Exception]
) -> None:
    with pytest.raises(kind, match=rf"^{field} "):
        store.put(make(**bad))
    assert store.list("corral.local") == []


def test_bad_arguments_are_rejected_naming_them(store: AnchorStore) -> None:
    with pytest.raises(ValueError, match=r"^size "):
        store.get("corral.local", 0)
    with pytest.raises(ValueError, match=r"^deployment "):
        store.get("", 1)
    with pytest.raises(ValueError, match=r"^deployment "):
        store.latest("with space")
    with pytest.raises(ValueError, match=r"^after_size "):
        store.list("corral.local", after_size=-1)
    with pytest.raises(ValueError, match=r"^limit "):
        store.list("corral.local", limit=0)
    with pytest.raises(TypeError, match=r"^record "):
        store.put({"deployment": "corral.local", "size": 1})  # type: ignore[arg-type]


def _race(store: AnchorStore, contenders: list[AnchorRecord]) -> list[object]:
    """Put each record from its own thread, all released at once; "ok" or the error."""
    barrier = threading.Barrier(len(contenders))
    outcomes: list[object] = [None] * len(contenders)

    def run(i: int) -> None:
        barrier.wait()
        try:
            store.put(contenders[i])
            outcomes[i] = "ok"
        except AnchorExists as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return outcomes


def test_racing_puts_of_one_key_have_exactly_one_winner(store: AnchorStore) -> None:
    for size in range(1, 9):
        contenders = [make(size=size, note=f"writer {i}".encode()) for i in range(2)]
        outcomes = _race(store, contenders)
        assert outcomes.count("ok") == 1, outcomes
        assert any(isinstance(o, AnchorExists) for o in outcomes), outcomes
        assert store.get("corral.local", size) == contenders[outcomes.index("ok")]


# ---------------------------------------------------------------------------------------------
# AnchorRecord


def test_record_time_is_kept_in_utc() -> None:
    local = datetime(2026, 3, 3, 9, 0, tzinfo=timezone(timedelta(hours=-8)))
    record = make(time=local)
    assert record.time == local
    assert record.time.tzinfo is UTC
    assert record.time.hour == 17


def test_record_is_frozen() -> None:
    record = make()
    with pytest.raises(AttributeError):
        record.size = 2  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# LocalAnchorStore


@pytest.fixture
def local(tmp_path: Path) -> LocalAnchorStore:
    store = LocalAnchorStore(tmp_path / "data" / "anchors.db")
    store.put(make(size=1))
    store.put(make(size=2))
    return store


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("UPDATE anchors SET note = x'00' WHERE size = 1", id="update"),
        pytest.param("UPDATE anchors SET size = 3 WHERE size = 2", id="update-key"),
        pytest.param("DELETE FROM anchors WHERE size = 1", id="delete"),
        pytest.param("DELETE FROM anchors", id="delete-all"),
        pytest.param(
            "INSERT OR REPLACE INTO anchors VALUES ('corral.local', 1, zeroblob(32), 't', x'00')",
            id="insert-or-replace",
        ),
        pytest.param(
            "REPLACE INTO anchors VALUES ('corral.local', 2, zeroblob(32), 't', x'00')",
            id="replace",
        ),
        pytest.param(
            "INSERT INTO anchors VALUES ('corral.local', 1, zeroblob(32), 't', x'00') "
            "ON CONFLICT (deployment, size) DO UPDATE SET note = excluded.note",
            id="upsert",
        ),
    ],
)
def test_database_refuses_to_change_anchors(local: LocalAnchorStore, statement: str) -> None:
    db = sqlite3.connect(local.path, isolation_level=None)
    try:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(statement)
    finally:
        db.close()
    assert local.list("corral.local") == [make(size=1), make(size=2)]


def test_schema_refuses_malformed_rows(local: LocalAnchorStore) -> None:
    db = sqlite3.connect(local.path, isolation_level=None)
    try:
        for values in (
            "('corral.local', 0, zeroblob(32), 't', x'00')",
            "('corral.local', 5, zeroblob(31), 't', x'00')",
            "('corral.local', 5, zeroblob(32), 't', x'')",
            "('corral.local', '5', zeroblob(32), 't', 'text')",
        ):
            with pytest.raises(sqlite3.IntegrityError):
                db.execute(f"INSERT INTO anchors VALUES {values}")
    finally:
        db.close()
    assert [r.size for r in local.list("corral.local")] == [1, 2]


def test_a_malformed_stored_row_is_an_error(local: LocalAnchorStore) -> None:
    db = sqlite3.connect(local.path, isolation_level=None)
    try:
        db.execute("INSERT INTO anchors VALUES ('corral.local', 3, zeroblob(32), 'noon', x'00')")
    finally:
        db.close()
    with pytest.raises(AnchorError, match="malformed record"):
        local.get("corral.local", 3)


def test_file_is_private_and_its_directory_created(local: LocalAnchorStore) -> None:
    assert local.path.parent.is_dir()
    assert stat.S_IMODE(local.path.stat().st_mode) == 0o600
    # SQLite gives the -wal and -shm files (alive while a connection is) the database's mode.
    db = sqlite3.connect(local.path)
    try:
        db.execute("SELECT count(*) FROM anchors").fetchone()
        for suffix in ("-wal", "-shm"):
            path = local.path.with_name(local.path.name + suffix)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    finally:
        db.close()


def test_an_existing_file_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "anchors.db"
    path.touch(mode=0o644)
    path.chmod(0o644)
    LocalAnchorStore(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_database_is_wal_with_full_sync(
    local: LocalAnchorStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = sqlite3.connect(local.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        db.close()
    connections: list[tuple[list[str], list[int]]] = []

    class Spy(sqlite3.Connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.seen: tuple[list[str], list[int]] = ([], [])
            connections.append(self.seen)
            self.set_trace_callback(self.seen[0].append)

        def close(self) -> None:
            self.set_trace_callback(None)
            self.seen[1].append(self.execute("PRAGMA synchronous").fetchone()[0])
            super().close()

    connect: Callable[..., sqlite3.Connection] = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *a, **k: connect(*a, factory=Spy, **k))
    local.put(make(size=3))
    local.latest("corral.local")
    assert len(connections) == 2
    for statements, synchronous in connections:
        # Asked for explicitly (FULL is only SQLite's compiled-in default), and in force.
        assert statements[0].upper().replace(" ", "") == "PRAGMASYNCHRONOUS=FULL"
        assert synchronous == [2]  # 2 is FULL


def test_reopening_keeps_the_anchors(local: LocalAnchorStore) -> None:
    again = LocalAnchorStore(local.path)
    assert again.list("corral.local") == [make(size=1), make(size=2)]
    with pytest.raises(AnchorExists):
        again.put(make(size=2, note=b"again"))
    again.put(make(size=3))
    assert local.latest("corral.local") == make(size=3)


def test_unusable_path_is_unavailable_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(AnchorStoreUnavailable, match=r"file/anchors\.db"):
        LocalAnchorStore(blocker / "anchors.db")


# ---------------------------------------------------------------------------------------------
# DynamoDBAnchorStore


@pytest.fixture
def dynamo(dynalite_endpoint: str) -> DynamoDBAnchorStore:
    store = DynamoDBAnchorStore(new_table(), client=dynalite.client(dynalite_endpoint))
    store.create_table()
    return store


@pytest.mark.dynalite
def test_item_layout(dynamo: DynamoDBAnchorStore) -> None:
    record = make(size=12)
    dynamo.put(record)
    raw = dynamo._client.get_item(
        TableName=dynamo.table,
        Key={"deployment": {"S": "corral.local"}, "size": {"N": "12"}},
        ConsistentRead=True,
    )["Item"]
    assert raw == {
        "deployment": {"S": "corral.local"},
        "size": {"N": "12"},
        "root": {"B": record.root},
        "time": {"S": "2026-03-03T17:00:12.123456Z"},
        "note": {"B": record.note},
    }


@pytest.mark.dynalite
def test_reads_are_strongly_consistent(dynamo: DynamoDBAnchorStore) -> None:
    requests: list[tuple[str, dict[str, Any]]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        requests.append((model.name, params))

    dynamo._client.meta.events.register("provide-client-params.dynamodb.*", record)
    dynamo.put(make(size=1))
    dynamo.get("corral.local", 1)
    dynamo.latest("corral.local")
    dynamo.list("corral.local")
    reads = [(name, params) for name, params in requests if name != "PutItem"]
    assert [name for name, _ in reads] == ["GetItem", "Query", "Query"]
    assert all(params.get("ConsistentRead") is True for _, params in reads)


@pytest.mark.dynalite
def test_create_table_waits_until_active(dynalite_endpoint: str) -> None:
    client = dynalite.client(dynalite_endpoint)
    store = DynamoDBAnchorStore(new_table(), client=client)
    store.create_table()
    table = client.describe_table(TableName=store.table)["Table"]
    assert table["TableStatus"] == "ACTIVE"
    assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert {(k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]} == {
        ("deployment", "HASH"),
        ("size", "RANGE"),
    }


@pytest.mark.dynalite
def test_create_table_asks_for_on_demand_billing_and_deletion_protection(
    dynalite_endpoint: str,
) -> None:
    # dynalite ignores DeletionProtectionEnabled (DescribeTable omits it, DeleteTable still
    # works), so check the request itself.
    store = DynamoDBAnchorStore(new_table(), client=dynalite.client(dynalite_endpoint))
    requests: list[dict[str, Any]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        if model.name == "CreateTable":
            requests.append(params)

    store._client.meta.events.register("provide-client-params.dynamodb.*", record)
    store.create_table()
    assert len(requests) == 1
    assert requests[0]["BillingMode"] == "PAY_PER_REQUEST"
    assert requests[0]["DeletionProtectionEnabled"] is True


@pytest.mark.dynalite
def test_create_table_is_idempotent(dynamo: DynamoDBAnchorStore) -> None:
    dynamo.put(make(size=1))
    dynamo.create_table()
    dynamo.create_table()
    assert dynamo.list("corral.local") == [make(size=1)]


@pytest.mark.dynalite
def test_create_table_refuses_a_table_with_another_schema(dynalite_endpoint: str) -> None:
    client = dynalite.client(dynalite_endpoint)
    name = new_table()
    client.create_table(
        TableName=name,
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        BillingMode="PAY_PER_REQUEST",
    )
    with pytest.raises(AnchorError, match="another key schema"):
        DynamoDBAnchorStore(name, client=client).create_table()


@pytest.mark.dynalite
def test_missing_table_is_unavailable(dynalite_endpoint: str) -> None:
    store = DynamoDBAnchorStore("no-such-table", client=dynalite.client(dynalite_endpoint))
    with pytest.raises(AnchorStoreUnavailable, match="does not exist") as caught:
        store.get("corral.local", 1)
    assert "no-such-table" in str(caught.value)
    assert dynalite_endpoint in str(caught.value)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda s: s.put(make()), id="put"),
        pytest.param(lambda s: s.get("corral.local", 1), id="get"),
        pytest.param(lambda s: s.latest("corral.local"), id="latest"),
        pytest.param(lambda s: s.list("corral.local"), id="list"),
        pytest.param(lambda s: s.create_table(), id="create_table"),
    ],
)
def test_unreachable_endpoint_is_unavailable_naming_it(
    call: Callable[[DynamoDBAnchorStore], object],
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    client = dynalite.client(
        endpoint,
        connect_timeout=0.5,
        read_timeout=0.5,
        retries={"total_max_attempts": 1, "mode": "standard"},
    )
    store = DynamoDBAnchorStore("corral-anchors", client=client)
    with pytest.raises(AnchorStoreUnavailable) as caught:
        call(store)
    message = str(caught.value)
    assert endpoint in message
    assert "'corral-anchors'" in message
    assert "Traceback" not in caught.value.diagnostics()


def test_default_client_uses_region_and_endpoint() -> None:
    aws = DynamoDBAnchorStore("corral-anchors")
    assert aws.endpoint_url == "https://dynamodb.us-west-2.amazonaws.com"
    other = DynamoDBAnchorStore("corral-anchors", region="eu-west-1")
    assert other.endpoint_url == "https://dynamodb.eu-west-1.amazonaws.com"
    local = DynamoDBAnchorStore("corral-anchors", endpoint_url="http://127.0.0.1:4567")
    assert local.endpoint_url == "http://127.0.0.1:4567"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        pytest.param({"endpoint_url": "not a url"}, "not a url", id="endpoint"),
        pytest.param({"region": "bad region!"}, "bad region!", id="region"),
    ],
)
def test_malformed_client_settings_are_unavailable(options: dict[str, Any], named: str) -> None:
    with pytest.raises(AnchorStoreUnavailable, match="'corral-anchors'") as caught:
        DynamoDBAnchorStore("corral-anchors", **options)
    assert named in str(caught.value)


# ---------------------------------------------------------------------------------------------
# open_anchor_store


def test_open_local_store_in_the_data_dir(tmp_path: Path) -> None:
    store = open_anchor_store(AnchorSettings(), tmp_path / "data")
    assert isinstance(store, LocalAnchorStore)
    assert store.path == tmp_path / "data" / "anchors.db"
    assert store.path.is_file()


def test_open_dynamodb_store_from_settings(tmp_path: Path) -> None:
    settings = AnchorSettings(
        backend="dynamodb",
        dynamodb_table="anchors-test",
        region="us-east-2",
        endpoint_url="http://127.0.0.1:4567",
    )
    store = open_anchor_store(settings, tmp_path)
    assert isinstance(store, DynamoDBAnchorStore)
    assert (store.table, store.endpoint_url) == ("anchors-test", "http://127.0.0.1:4567")
    assert store._client.meta.region_name == "us-east-2"
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# docs/anchors-iam-policy.json


def test_iam_policy_denies_every_way_to_change_an_anchor() -> None:
    policy = json.loads((dynalite.ROOT / "docs" / "anchors-iam-policy.json").read_text())
    statements = policy["Statement"]
    denied = {
        action
        for s in statements
        if s["Effect"] == "Deny" and s["Principal"] == "*" and "Condition" not in s
        for action in s["Action"]
    }
    assert {
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
        "dynamodb:BatchWriteItem",
        "dynamodb:PartiQLUpdate",
        "dynamodb:PartiQLDelete",
        "dynamodb:DeleteTable",
        "dynamodb:UpdateTable",
        "dynamodb:UpdateTimeToLive",
    } <= denied
    allowed = {
        action
        for s in statements
        if s["Effect"] == "Allow"
        for action in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert allowed == {
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:DescribeTable",
    }
    (put,) = [s for s in statements if s["Effect"] == "Allow" and s["Action"] == "dynamodb:PutItem"]
    # The attributes the policy lets through are exactly those DynamoDBAnchorStore writes.
    assert set(put["Condition"]["ForAllValues:StringEquals"]["dynamodb:Attributes"]) == {
        "deployment",
        "size",
        "root",
        "time",
        "note",
    }
