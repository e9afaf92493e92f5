"""The broker store on SQLite and PostgreSQL: compare-and-swap, leases, intents, revocations."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from corral.broker._store import (
    BrokerStore,
    ConnectionRow,
    ConnectionStatus,
    DelegationUse,
    IntentRow,
    IntentState,
    RevocationKind,
    UsesExhausted,
)
from corral.core.errors import ConfigError
from tests.broker._backends import broker_store_fixture, broker_url_fixture  # noqa: F401

T0 = datetime(2026, 3, 3, 17, 0, tzinfo=UTC)


def _connection(store: BrokerStore, cid: str = "stripe-1") -> ConnectionRow:
    row = ConnectionRow(
        tenant="brightsmile", connection_id=cid, provider="stripe", status=ConnectionStatus.ACTIVE,
        api_url="http://stripe.fake", token_url=None, version=1, created_at=T0, updated_at=T0,
        status_reason=None,
    )  # fmt: skip
    store.insert_connection(row, b"sealed-v1")
    return row


def _intent(key: str, digest: str = "h1") -> IntentRow:
    return IntentRow(
        tenant="brightsmile", idempotency_key=key, call_hash=digest, tool="stripe.create_refund",
        connection_id="stripe-1", state=IntentState.STARTED, result=None, created_at=T0,
        updated_at=T0,
    )  # fmt: skip


def test_compare_and_swap_installs_one_version_and_refuses_a_stale_writer(
    broker_store: BrokerStore,
) -> None:
    _connection(broker_store)
    assert broker_store.swap_credential("brightsmile", "stripe-1", 1, b"v2", T0)
    assert not broker_store.swap_credential("brightsmile", "stripe-1", 1, b"v2-stale", T0)
    row = broker_store.connection("brightsmile", "stripe-1")
    assert row is not None and row.version == 2
    assert broker_store.credential("brightsmile", "stripe-1", 2) == b"v2"
    assert broker_store.credential("brightsmile", "stripe-1", 1) == b"sealed-v1"


def test_swap_stores_the_access_token_with_the_new_version(broker_store: BrokerStore) -> None:
    _connection(broker_store)
    expires = T0 + timedelta(hours=1)
    assert broker_store.swap_credential(
        "brightsmile", "stripe-1", 1, b"v2", T0, access=(b"token", expires)
    )
    assert broker_store.access_token("brightsmile", "stripe-1") == (2, b"token", expires)


def test_a_revoked_connection_takes_no_new_version(broker_store: BrokerStore) -> None:
    _connection(broker_store)
    broker_store.put_access_token("brightsmile", "stripe-1", 1, b"t", T0 + timedelta(hours=1))
    assert broker_store.set_status("brightsmile", "stripe-1", ConnectionStatus.REVOKED, "bye", T0)
    assert not broker_store.swap_credential("brightsmile", "stripe-1", 1, b"v2", T0)
    assert broker_store.access_token("brightsmile", "stripe-1") is None
    assert broker_store.credential("brightsmile", "stripe-1", 1) is None  # nothing sealed stays
    row = broker_store.connection("brightsmile", "stripe-1")
    assert row is not None and row.status is ConnectionStatus.REVOKED and row.version == 1


def test_only_one_holder_gets_the_refresh_lease_until_it_expires(broker_store: BrokerStore) -> None:
    assert broker_store.acquire_lease("t", "c", "a", T0, 30)
    assert not broker_store.acquire_lease("t", "c", "b", T0 + timedelta(seconds=29), 30)
    assert broker_store.acquire_lease("t", "c", "a", T0 + timedelta(seconds=1), 30)  # renewal
    assert broker_store.acquire_lease("t", "c", "b", T0 + timedelta(seconds=31), 30)  # expired
    broker_store.release_lease("t", "c", "a")  # not the holder any more: no effect
    assert not broker_store.acquire_lease("t", "c", "a", T0 + timedelta(seconds=32), 30)
    broker_store.release_lease("t", "c", "b")
    assert broker_store.acquire_lease("t", "c", "a", T0 + timedelta(seconds=33), 30)


def test_concurrent_lease_takers_get_exactly_one_lease(broker_store: BrokerStore) -> None:
    winners: list[str] = []
    barrier = threading.Barrier(8)

    def take(holder: str) -> None:
        barrier.wait()
        if broker_store.acquire_lease("t", "c", holder, T0, 30):
            winners.append(holder)

    threads = [threading.Thread(target=take, args=(f"h{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1


def test_an_intent_is_recorded_once_and_returned_to_a_retry(broker_store: BrokerStore) -> None:
    assert broker_store.begin_intent(_intent("key-1")) is None
    again = broker_store.begin_intent(_intent("key-1", digest="other"))
    assert again is not None and again.call_hash == "h1" and again.state is IntentState.STARTED
    broker_store.finish_intent("brightsmile", "key-1", IntentState.SUCCEEDED, '{"ok":1}', T0)
    done = broker_store.intent("brightsmile", "key-1")
    assert done is not None and done.state is IntentState.SUCCEEDED and done.result == '{"ok":1}'


def test_concurrent_intents_with_one_key_start_exactly_once(broker_store: BrokerStore) -> None:
    firsts: list[int] = []
    barrier = threading.Barrier(6)

    def begin(n: int) -> None:
        barrier.wait()
        if broker_store.begin_intent(_intent("same-key")) is None:
            firsts.append(n)

    threads = [threading.Thread(target=begin, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(firsts) == 1


def test_uses_stop_at_max_uses_even_under_concurrency(broker_store: BrokerStore) -> None:
    counts: list[int | None] = []
    barrier = threading.Barrier(10)
    expires = T0 + timedelta(minutes=5)

    def use() -> None:
        barrier.wait()
        counts.append(
            broker_store.use_delegation(DelegationUse("dlg_1", "brightsmile", 3, expires))
        )

    threads = [threading.Thread(target=use) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(c for c in counts if c is not None) == [1, 2, 3]
    assert counts.count(None) == 7
    unlimited = DelegationUse("dlg_2", "brightsmile", None, expires)
    assert broker_store.use_delegation(unlimited) == 1
    assert broker_store.use_delegation(unlimited) == 2


def test_revocations_are_found_by_kind_and_value(broker_store: BrokerStore) -> None:
    broker_store.revoke("brightsmile", RevocationKind.AGENT, "billing-1", T0, "left")
    broker_store.revoke(
        "brightsmile", RevocationKind.AGENT, "billing-1", T0 + timedelta(hours=1), None
    )
    found = broker_store.revoked(
        "brightsmile",
        [(RevocationKind.AGENT, "billing-1"), (RevocationKind.DELEGATION, "billing-1"),
         (RevocationKind.TENANT, "brightsmile")],
    )  # fmt: skip
    assert found == [(RevocationKind.AGENT, "billing-1", T0)]  # the earliest time is kept
    assert broker_store.revoked("other", [(RevocationKind.AGENT, "billing-1")]) == []


def test_prune_forgets_expired_uses_and_old_finished_intents(broker_store: BrokerStore) -> None:
    broker_store.use_delegation(DelegationUse("dlg_old", "brightsmile", None, T0))
    broker_store.begin_intent(_intent("done"))
    broker_store.finish_intent("brightsmile", "done", IntentState.SUCCEEDED, None, T0)
    broker_store.begin_intent(_intent("open"))
    assert broker_store.prune(T0 + timedelta(days=8)) == 2
    assert broker_store.intent("brightsmile", "open") is not None  # never prune an open intent
    assert broker_store.intent("brightsmile", "done") is None


def test_sqlite_in_memory_is_refused() -> None:
    with pytest.raises(ConfigError, match="not durable"):
        BrokerStore.from_url("sqlite://")


def test_an_intent_counts_one_use_and_a_replay_counts_none(broker_store: BrokerStore) -> None:
    use = DelegationUse("dlg_9", "brightsmile", 1, T0 + timedelta(minutes=5))
    assert broker_store.begin_intent(_intent("k-1"), use=use) is None
    assert broker_store.begin_intent(_intent("k-1"), use=use) is not None  # a replay: no use
    with pytest.raises(UsesExhausted, match="no uses left"):
        broker_store.begin_intent(_intent("k-2"), use=use)
    assert broker_store.intent("brightsmile", "k-2") is None  # nothing written
