"""Write-once anchor stores: where the anchor log's signed checkpoints are kept, immutably.

>>> import tempfile
>>> from datetime import datetime, timezone
>>> from pathlib import Path
>>> tmp = tempfile.TemporaryDirectory()
>>> store = LocalAnchorStore(Path(tmp.name) / "anchors.db")
>>> record = AnchorRecord(deployment="corral.local", size=1, root=bytes(32),
...     time=datetime(2026, 3, 3, 17, 0, tzinfo=timezone.utc), note=b"corral.local/anchors\\n...")
>>> store.put(record)
>>> store.latest("corral.local") == record
True
>>> try:
...     store.put(record)
... except AnchorExists as exc:
...     print(exc)
anchor corral.local/1 exists; anchors are written once
>>> tmp.cleanup()

An :class:`AnchorRecord` is keyed by ``(deployment, size)``: ``size`` is the anchor log's tree
size, so a deployment's anchors form one strictly growing sequence. A store MUST NOT overwrite
or delete a record: :meth:`AnchorStore.put` of an existing key raises :class:`AnchorExists`,
even when the content is identical, and MUST return only once the record is durable. Both
stores below are written natively and pass one conformance suite (``tests/audit``).

- :class:`LocalAnchorStore` (the default) is one SQLite file whose triggers refuse every
  ``UPDATE``, every ``DELETE`` and any ``INSERT`` over an existing key (``INSERT OR REPLACE``
  deletes without firing delete triggers, so it gets its own trigger). That stops corral and
  any SQL client; whoever can write the file can still rewrite it. The audit bundle's
  signatures and consistency proofs are what make such a rewrite detectable.
- :class:`DynamoDBAnchorStore` writes each record with ``PutItem`` under
  ``ConditionExpression="attribute_not_exists(deployment)"``: the condition and the write are
  one atomic step in DynamoDB, so two writers racing for one key get exactly one success.
  ``corral audit anchor init`` creates the table (:meth:`DynamoDBAnchorStore.create_table`,
  on-demand billing, deletion protection on).

Making the DynamoDB table append-only in AWS
--------------------------------------------

Attach ``docs/anchors-iam-policy.json`` to the table as its resource-based policy (replace the
account id, region, table, role and deployment). It allows the control plane's role
``PutItem``, ``GetItem``, ``Query`` and ``DescribeTable`` on its own deployment's partition
only (``dynamodb:LeadingKeys``) and the anchor attributes only (``dynamodb:Attributes``); it
denies every principal ``UpdateItem``, ``DeleteItem``, ``BatchWriteItem`` (IAM cannot tell a
batch's puts from its deletes, so the whole action goes), the PartiQL writes, ``DeleteTable``,
``UpdateTable`` (which could lift deletion protection), ``UpdateTimeToLive`` (a TTL would
expire anchors) and changes to the policy itself; and it denies ``PutItem`` to everyone but
that role. ``TransactWriteItems`` has no IAM action of its own: it is authorised per
contained ``PutItem``/``UpdateItem``/``DeleteItem``, so the same denials cover it.

The honest limits:

- No ``dynamodb:`` condition key sees a request's ``ConditionExpression``, so IAM cannot force
  ``PutItem`` to carry ``attribute_not_exists``: the writer role, and only it, can overwrite an
  anchor by sending an unconditional ``PutItem``. Write-once against that role rests on this
  module's code. To detect a breach, enable DynamoDB Streams (an overwrite shows up as a
  ``MODIFY`` record) with an alarm on it, CloudTrail data events for the table and
  point-in-time recovery, all before attaching the policy (it denies ``UpdateTable``); and a
  verifier still rejects an anchor that is not a validly signed checkpoint consistent with
  the log.
- The policy also denies changes to itself (attaching it takes ``PutResourcePolicy`` with
  ``ConfirmRemoveSelfResourceAccess=true``), but the account's root user may still be able to
  replace it. An AWS Organizations service control policy with the same denials closes that.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sqlite3
import time as _time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from botocore.exceptions import BotoCoreError, ClientError

from corral.core import aws
from corral.core.clock import format_time, parse_time
from corral.core.errors import AnchorError
from corral.core.settings import AnchorSettings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef

__all__ = [
    "MAX_DEPLOYMENT_CHARS",
    "MAX_NOTE_BYTES",
    "MAX_SIZE",
    "AnchorError",
    "AnchorExists",
    "AnchorRecord",
    "AnchorStore",
    "AnchorStoreUnavailable",
    "DynamoDBAnchorStore",
    "LocalAnchorStore",
    "open_anchor_store",
]

MAX_SIZE = 2**63 - 1
"""The largest anchor log size a store accepts (SQLite's largest integer)."""
MAX_NOTE_BYTES = 64 * 1024
"""The largest signed note a store accepts (a DynamoDB item holds at most 400 KB)."""
MAX_DEPLOYMENT_CHARS = 255


class AnchorExists(AnchorError):
    """A record with this ``(deployment, size)`` is already stored; nothing was written."""

    def __init__(self, deployment: str, size: int) -> None:
        super().__init__(f"anchor {deployment}/{size} exists; anchors are written once")
        self.deployment = deployment
        self.size = size


class AnchorStoreUnavailable(AnchorError):
    """The anchor store cannot be reached or used; ``where`` names the file or table+endpoint."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"anchor store {where} is unavailable: {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class AnchorRecord:
    """One anchor: the anchor log's signed checkpoint of tree size ``size``.

    Requires a non-empty printable ``deployment`` without spaces or ``+`` (as in the settings,
    at most 255 characters), ``1 <= size <= 2**63 - 1``, a 32-byte ``root``, a timezone-aware
    ``time`` (kept in UTC) and a non-empty ``note`` of at most 64 KiB. Anything else raises
    :class:`ValueError` (or :class:`TypeError` for a wrong type) naming the field.
    """

    deployment: str
    size: int
    root: bytes
    time: datetime
    note: bytes

    def __post_init__(self) -> None:
        _check_deployment(self.deployment)
        _check_size(self.size, "size")
        if not isinstance(self.root, bytes):
            raise TypeError(f"root must be bytes, not {type(self.root).__name__}")
        if len(self.root) != 32:
            raise ValueError(f"root must be 32 bytes, got {len(self.root)}")
        if not isinstance(self.time, datetime):
            raise TypeError(f"time must be a datetime, not {type(self.time).__name__}")
        if self.time.tzinfo is None or self.time.utcoffset() is None:
            raise ValueError("time must be timezone-aware")
        if not isinstance(self.note, bytes):
            raise TypeError(f"note must be bytes, not {type(self.note).__name__}")
        if not 1 <= len(self.note) <= MAX_NOTE_BYTES:
            raise ValueError(f"note must be 1 to {MAX_NOTE_BYTES} bytes, got {len(self.note)}")
        object.__setattr__(self, "time", self.time.astimezone(UTC))


def _check_deployment(deployment: object) -> None:
    if not isinstance(deployment, str):
        raise TypeError(f"deployment must be a str, not {type(deployment).__name__}")
    if (
        not deployment
        or len(deployment) > MAX_DEPLOYMENT_CHARS
        or not deployment.isprintable()
        or any(c.isspace() or c == "+" for c in deployment)
    ):
        raise ValueError(
            f"deployment must be 1 to {MAX_DEPLOYMENT_CHARS} printable characters without "
            f"spaces or '+', got {deployment!r}"
        )


def _check_size(size: object, name: str, *, minimum: int = 1) -> None:
    if not isinstance(size, int) or isinstance(size, bool):
        raise TypeError(f"{name} must be an int, not {type(size).__name__}")
    if not minimum <= size <= MAX_SIZE:
        raise ValueError(f"{name} must be between {minimum} and 2**63 - 1, got {size}")


def _check_list_args(deployment: str, after_size: int, limit: int) -> None:
    _check_deployment(deployment)
    _check_size(after_size, "after_size", minimum=0)
    if not isinstance(limit, int) or isinstance(limit, bool):
        raise TypeError(f"limit must be an int, not {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def _record(where: str, **fields: Any) -> AnchorRecord:
    """Rebuild a stored record, re-checking it: a malformed row is an error, not data."""
    try:
        return AnchorRecord(
            deployment=fields["deployment"],
            size=int(fields["size"]),
            root=bytes(fields["root"]),
            time=parse_time(fields["time"]),
            note=bytes(fields["note"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise AnchorError(f"anchor store {where} holds a malformed record: {exc}") from exc


@runtime_checkable
class AnchorStore(Protocol):
    """A write-once store of anchor records, keyed by ``(deployment, size)``."""

    def put(self, record: AnchorRecord) -> None:
        """Store ``record`` durably; raise :class:`AnchorExists` if its key is taken."""
        ...

    def get(self, deployment: str, size: int) -> AnchorRecord | None:
        """The record stored under ``(deployment, size)``, or ``None``."""
        ...

    def latest(self, deployment: str) -> AnchorRecord | None:
        """The deployment's record with the greatest size, or ``None`` if it has none."""
        ...

    def list(
        self, deployment: str, *, after_size: int = 0, limit: int = 1000
    ) -> builtins.list[AnchorRecord]:
        """Up to ``limit`` records with ``size > after_size``, by ascending size."""
        ...


# ---------------------------------------------------------------------------------------------
# SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS anchors (
    deployment TEXT NOT NULL CHECK (length(deployment) >= 1),
    size INTEGER NOT NULL CHECK (size >= 1),
    root BLOB NOT NULL CHECK (length(root) = 32),
    time TEXT NOT NULL,
    note BLOB NOT NULL CHECK (length(note) >= 1),
    PRIMARY KEY (deployment, size)
) WITHOUT ROWID, STRICT;

CREATE TRIGGER IF NOT EXISTS anchors_no_update BEFORE UPDATE ON anchors
BEGIN
    SELECT RAISE(ABORT, 'anchors are append-only: UPDATE refused');
END;

CREATE TRIGGER IF NOT EXISTS anchors_no_delete BEFORE DELETE ON anchors
BEGIN
    SELECT RAISE(ABORT, 'anchors are append-only: DELETE refused');
END;

CREATE TRIGGER IF NOT EXISTS anchors_no_replace BEFORE INSERT ON anchors
WHEN EXISTS (SELECT 1 FROM anchors WHERE deployment = NEW.deployment AND size = NEW.size)
BEGIN
    SELECT RAISE(ABORT, 'anchors are append-only: the key exists');
END;
"""

_COLUMNS = "deployment, size, root, time, note"


class LocalAnchorStore:
    """Anchors in one SQLite file (mode 0600, WAL, ``synchronous=FULL``), append-only by trigger.

    This uses the standard library's :mod:`sqlite3` rather than SQLAlchemy: the store is
    SQLite-only by design (DynamoDB is the other backend, not another SQL dialect), and what
    makes it append-only (triggers, ``STRICT``, pragmas, ``BEGIN IMMEDIATE``) is SQLite's own
    SQL, which an abstraction layer would only hide. Each call opens its own connection, so a
    store is safe to share between threads and holds no handle between calls.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(fd)
            self.path.chmod(0o600)
        except OSError as exc:
            raise AnchorStoreUnavailable(str(self.path), str(exc)) from exc
        with self._connect() as db:
            mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise AnchorStoreUnavailable(str(self.path), f"cannot use WAL (got {mode!r})")
            db.executescript(_SCHEMA)

    def __repr__(self) -> str:
        return f"LocalAnchorStore({str(self.path)!r})"

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; put() opens its own.
            db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
            db.execute("PRAGMA synchronous = FULL")
            yield db
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise AnchorStoreUnavailable(str(self.path), str(exc)) from exc
        finally:
            if db is not None:
                db.close()

    def put(self, record: AnchorRecord) -> None:
        if not isinstance(record, AnchorRecord):
            raise TypeError(f"record must be an AnchorRecord, not {type(record).__name__}")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    f"INSERT INTO anchors ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)",  # noqa: S608
                    (
                        record.deployment,
                        record.size,
                        record.root,
                        format_time(record.time),
                        record.note,
                    ),
                )
            except sqlite3.IntegrityError as exc:
                db.execute("ROLLBACK")
                if self._exists(db, record.deployment, record.size):
                    raise AnchorExists(record.deployment, record.size) from exc
                raise AnchorError(f"anchor store {self.path} refused {record!r}: {exc}") from exc
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    @staticmethod
    def _exists(db: sqlite3.Connection, deployment: str, size: int) -> bool:
        row = db.execute(
            "SELECT 1 FROM anchors WHERE deployment = ? AND size = ?", (deployment, size)
        ).fetchone()
        return row is not None

    def _select(self, where: str, args: tuple[object, ...]) -> builtins.list[AnchorRecord]:
        with self._connect() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM anchors WHERE {where}", args).fetchall()  # noqa: S608
        return [
            _record(str(self.path), deployment=d, size=s, root=r, time=t, note=n)
            for d, s, r, t, n in rows
        ]

    def get(self, deployment: str, size: int) -> AnchorRecord | None:
        _check_deployment(deployment)
        _check_size(size, "size")
        rows = self._select("deployment = ? AND size = ?", (deployment, size))
        return rows[0] if rows else None

    def latest(self, deployment: str) -> AnchorRecord | None:
        _check_deployment(deployment)
        rows = self._select("deployment = ? ORDER BY size DESC LIMIT 1", (deployment,))
        return rows[0] if rows else None

    def list(
        self, deployment: str, *, after_size: int = 0, limit: int = 1000
    ) -> builtins.list[AnchorRecord]:
        _check_list_args(deployment, after_size, limit)
        return self._select(
            "deployment = ? AND size > ? ORDER BY size ASC LIMIT ?",
            (deployment, after_size, limit),
        )


# ---------------------------------------------------------------------------------------------
# DynamoDB

_UNAVAILABLE_CODES = frozenset(
    {
        "InternalServerError",
        "LimitExceededException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "ServiceUnavailable",
        "ThrottlingException",
        "UnrecognizedClientException",
        "ResourceNotFoundException",
    }
)
_SIZE = {"#size": "size"}  # SIZE is a DynamoDB reserved word


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "Unknown"))


class DynamoDBAnchorStore:
    """Anchors in a DynamoDB table: partition key ``deployment`` (S), sort key ``size`` (N).

    Items also hold ``root`` (B), ``time`` (S, RFC 3339 UTC) and ``note`` (B). Reads are
    strongly consistent. ``client`` (a boto3 DynamoDB client) wins over ``region`` and
    ``endpoint_url``, which only build the default client (the default credential chain,
    5 s connect timeout, 3 attempts). Errors reaching the table become
    :class:`AnchorStoreUnavailable` naming the table and the endpoint.
    """

    def __init__(
        self,
        table: str,
        *,
        region: str = "us-west-2",
        endpoint_url: str | None = None,
        client: DynamoDBClient | None = None,
    ) -> None:
        if not table:
            raise ValueError("table must be a non-empty DynamoDB table name")
        self.table = table
        if client is None:
            try:
                client = aws.client("dynamodb", region=region, endpoint_url=endpoint_url)
            except (BotoCoreError, ValueError) as exc:  # a malformed region or endpoint URL
                where = f"table {table!r} at {endpoint_url or region}"
                raise AnchorStoreUnavailable(where, str(exc)) from exc
        self._client = client
        self.endpoint_url: str = client.meta.endpoint_url

    def __repr__(self) -> str:
        return f"DynamoDBAnchorStore({self.table!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def _where(self) -> str:
        return f"table {self.table!r} at {self.endpoint_url}"

    def _error(self, exc: BotoCoreError | ClientError) -> AnchorError:
        """The anchor error for a botocore error: translated once, at this edge."""
        if isinstance(exc, BotoCoreError):
            return AnchorStoreUnavailable(self._where, str(exc))
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code == "ResourceNotFoundException":
            reason = "the table does not exist (run `corral audit anchor init`)"
            return AnchorStoreUnavailable(self._where, reason)
        if code in _UNAVAILABLE_CODES:
            return AnchorStoreUnavailable(self._where, f"{code}: {message}")
        return AnchorError(f"anchor store {self._where} refused the request: {code}: {message}")

    @contextlib.contextmanager
    def _translate(self) -> Iterator[None]:
        try:
            yield
        except (BotoCoreError, ClientError) as exc:
            raise self._error(exc) from exc

    def put(self, record: AnchorRecord) -> None:
        if not isinstance(record, AnchorRecord):
            raise TypeError(f"record must be an AnchorRecord, not {type(record).__name__}")
        try:
            self._client.put_item(
                TableName=self.table,
                Item={
                    "deployment": {"S": record.deployment},
                    "size": {"N": str(record.size)},
                    "root": {"B": record.root},
                    "time": {"S": format_time(record.time)},
                    "note": {"B": record.note},
                },
                ConditionExpression="attribute_not_exists(deployment)",
            )
        except ClientError as exc:
            if _code(exc) == "ConditionalCheckFailedException":
                raise AnchorExists(record.deployment, record.size) from exc
            raise self._error(exc) from exc
        except BotoCoreError as exc:
            raise self._error(exc) from exc

    def _item(self, item: dict[str, AttributeValueTypeDef]) -> AnchorRecord:
        try:
            fields = {
                "deployment": item["deployment"]["S"],
                "size": item["size"]["N"],
                "root": item["root"]["B"],
                "time": item["time"]["S"],
                "note": item["note"]["B"],
            }
        except KeyError as exc:
            raise AnchorError(f"anchor store {self._where} holds an item without {exc}") from exc
        return _record(self._where, **fields)

    def get(self, deployment: str, size: int) -> AnchorRecord | None:
        _check_deployment(deployment)
        _check_size(size, "size")
        with self._translate():
            response = self._client.get_item(
                TableName=self.table,
                Key={"deployment": {"S": deployment}, "size": {"N": str(size)}},
                ConsistentRead=True,
            )
        item = response.get("Item")
        return self._item(item) if item else None

    def latest(self, deployment: str) -> AnchorRecord | None:
        _check_deployment(deployment)
        with self._translate():
            response = self._client.query(
                TableName=self.table,
                KeyConditionExpression="deployment = :d",
                ExpressionAttributeValues={":d": {"S": deployment}},
                ScanIndexForward=False,
                Limit=1,
                ConsistentRead=True,
            )
        items = response.get("Items", [])
        return self._item(items[0]) if items else None

    def list(
        self, deployment: str, *, after_size: int = 0, limit: int = 1000
    ) -> builtins.list[AnchorRecord]:
        _check_list_args(deployment, after_size, limit)
        records: builtins.list[AnchorRecord] = []
        start: dict[str, AttributeValueTypeDef] | None = None
        while len(records) < limit:
            # A page is at most 1 MB, so a large limit can take several queries.
            kwargs: dict[str, Any] = {}
            if start is not None:
                kwargs["ExclusiveStartKey"] = start
            with self._translate():
                response = self._client.query(
                    TableName=self.table,
                    KeyConditionExpression="deployment = :d AND #size > :after",
                    ExpressionAttributeNames=_SIZE,
                    ExpressionAttributeValues={
                        ":d": {"S": deployment},
                        ":after": {"N": str(after_size)},
                    },
                    ScanIndexForward=True,
                    Limit=limit - len(records),
                    ConsistentRead=True,
                    **kwargs,
                )
            records.extend(self._item(item) for item in response.get("Items", []))
            start = response.get("LastEvaluatedKey")
            if not start:
                break
        return records[:limit]

    def create_table(self, *, timeout_s: float = 300.0) -> None:
        """Create the table (on-demand, deletion protection on) and wait until it is ACTIVE.

        An existing table is fine if its key schema is the anchor schema; otherwise this
        raises :class:`AnchorError`. Raises :class:`AnchorStoreUnavailable` if the table is
        not ACTIVE within ``timeout_s`` seconds.
        """
        try:
            self._client.create_table(
                TableName=self.table,
                AttributeDefinitions=[
                    {"AttributeName": "deployment", "AttributeType": "S"},
                    {"AttributeName": "size", "AttributeType": "N"},
                ],
                KeySchema=[
                    {"AttributeName": "deployment", "KeyType": "HASH"},
                    {"AttributeName": "size", "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
                DeletionProtectionEnabled=True,
            )
        except ClientError as exc:
            if _code(exc) != "ResourceInUseException":  # in use: it exists already
                raise self._error(exc) from exc
        except BotoCoreError as exc:
            raise self._error(exc) from exc
        deadline = _time.monotonic() + timeout_s
        pause = 0.05
        while True:
            with self._translate():
                table = self._client.describe_table(TableName=self.table)["Table"]
            keys = {(k["AttributeName"], k["KeyType"]) for k in table.get("KeySchema", [])}
            if keys != {("deployment", "HASH"), ("size", "RANGE")}:
                raise AnchorError(
                    f"anchor store {self._where} exists with another key schema: {sorted(keys)}"
                )
            status = table.get("TableStatus")
            if status == "ACTIVE":
                return
            if status not in ("CREATING", "UPDATING"):
                raise AnchorStoreUnavailable(self._where, f"table status is {status}")
            if _time.monotonic() >= deadline:
                raise AnchorStoreUnavailable(
                    self._where, f"table not ACTIVE after {timeout_s:g} s (status {status})"
                )
            _time.sleep(pause)
            pause = min(pause * 2, 2.0)


def open_anchor_store(settings: AnchorSettings, data_dir: Path) -> AnchorStore:
    """The anchor store the settings choose: ``data_dir/anchors.db`` or the DynamoDB table."""
    if settings.backend == "dynamodb":
        return DynamoDBAnchorStore(
            settings.dynamodb_table, region=settings.region, endpoint_url=settings.endpoint_url
        )
    return LocalAnchorStore(Path(data_dir) / "anchors.db")
