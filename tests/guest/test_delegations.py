"""The SDK's delegations: presented as given (``delegation=``), or asked for, kept, renewed and
retried once by :class:`corral.guest.tools.Delegations`.

Against :class:`FakeHost` speaking the wire as ``corral.runtime.relay`` answers it (a delegation
the broker refused arrives as ``-32001`` with the execution's error in ``data``), with an
injected monotonic clock (no sleeps); the last test runs the SDK through the real host side,
relay and control.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.guest import tools, wire
from corral.guest.tools import Delegation, DelegationRefused, Delegations, ToolRefused
from tests.guest._host import FakeHost, HostError

SMS = "twilio.send_sms"
ARGS = {"to": "+15550100002", "body": "See you at 10"}
ONLY_ANA = {"recipients": ["+15550100002"]}
SENT = {"sid": "SM1", "status": "queued"}
EXPIRED = "delegation refused: delegation dlg_1 expired at 2026-03-03T17:05:00Z (now 2026-03-03T17:05:07Z)"  # noqa: E501
REVOKED = "delegation 'dlg_1' was revoked at 2026-03-03T17:01:00Z"
# A fixture and its per-example state: each example below reads only the frames it caused.
SHARED_HOST = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def broker_refusal(code: str, message: str) -> HostError:
    """The relay's answer when control allowed the call and the broker refused it
    (``corral.runtime.relay._executed`` of a ``failed`` execution)."""
    execution = {"status": "failed", "result": {}, "error": {"code": code, "message": message},
                 "replayed": False}  # fmt: skip
    data = {"call_id": "call_1", "verdict": "allow", "explanation": "allowed",
            "execution": execution}  # fmt: skip
    return HostError(wire.REFUSED, f"allowed, but it failed: {message}", data)


REFUSALS = {
    "expired": broker_refusal("delegation_expired", EXPIRED),
    "revoked": broker_refusal("revoked", REVOKED),
}


class Broker:
    """The host's answers: ``tok-<n>`` for the n-th ``delegation.request``; a call presenting a
    token for which ``refuse(token)`` gives an error is refused with it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.calls: list[dict[str, Any]] = []
        self.refuse: Callable[[str | None], HostError | None] = lambda token: None
        self.on_request: Callable[[dict[str, Any]], None] = lambda params: None
        self.on_call: Callable[[dict[str, Any]], None] = lambda params: None

    def __call__(self, method: str, params: dict[str, Any]) -> Any:
        if method == "delegation.request":
            with self.lock:
                self.requests.append(params)
                n = len(self.requests)
            self.on_request(params)
            return {"token": f"tok-{n}", "expires_at": "2026-03-03T17:05:00.000000Z"}
        if method == "tools.call":
            with self.lock:
                self.calls.append(params)
            self.on_call(params)
            refusal = self.refuse(params.get("delegation"))
            if refusal is not None:
                raise refusal
            return {"call_id": "call_1", "verdict": "allow", "result": SENT,
                    "explanation": "allowed"}  # fmt: skip
        raise HostError(wire.METHOD_NOT_FOUND, f"unknown method {method}")

    def presented(self) -> list[tuple[str | None, str | None]]:
        """Each call's ``(idempotency_key, delegation)``, in order."""
        return [(c.get("idempotency_key"), c.get("delegation")) for c in self.calls]


class Clock:
    """An injected monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def broker() -> Iterator[Broker]:
    answers = Broker()
    server = FakeHost(answers)
    tools.connect(server.path)
    server.wait_for("sandbox.ready")
    yield answers
    tools.set_client(None)
    server.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The module's ``tools.delegations`` on an injected clock (restored after the test)."""
    now = Clock()
    monkeypatch.setattr(tools, "delegations", Delegations(monotonic=now))
    return now


# --- presented as given ---------------------------------------------------------------------


@SHARED_HOST
@given(token=st.text(min_size=1, max_size=2000), as_object=st.booleans())
def test_an_explicit_delegation_is_sent_as_given(
    broker: Broker, token: str, as_object: bool
) -> None:
    before = len(broker.calls)
    given_as: str | Delegation = Delegation(token, "") if as_object else token
    tools.twilio.send_sms(**ARGS, delegation=given_as)
    tools.call(SMS, ARGS, "k1", delegation=given_as)
    assert broker.calls[before:] == [
        {"tool": SMS, "args": ARGS, "delegation": token},
        {"tool": SMS, "args": ARGS, "idempotency_key": "k1", "delegation": token},
    ]
    assert broker.requests == []


def test_without_auto_no_delegation_is_presented(broker: Broker) -> None:
    assert not tools.delegations.enabled
    tools.twilio.send_sms(**ARGS)
    assert broker.calls == [{"tool": SMS, "args": ARGS}] and broker.requests == []


def test_a_delegation_that_is_not_a_token_is_refused_before_sending(broker: Broker) -> None:
    with pytest.raises(TypeError, match="token or a Delegation"):
        tools.call(SMS, ARGS, delegation=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty token"):
        tools.twilio.send_sms(**ARGS, delegation="")
    assert broker.calls == []


def test_an_explicit_delegation_is_never_renewed(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto()
    broker.refuse = lambda token: REFUSALS["expired"] if token == "mine" else None
    with pytest.raises(DelegationRefused) as caught:
        tools.twilio.send_sms(**ARGS, delegation="mine")
    assert caught.value.reason == "expired" and caught.value.message.endswith(EXPIRED)
    assert broker.requests == [] and broker.presented() == [(None, "mine")]


# --- automatic: asked for once, kept, renewed -----------------------------------------------


def test_auto_asks_once_and_presents_the_same_delegation(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto({SMS: ONLY_ANA}, ttl_s=300)
    first = tools.twilio.send_sms(**ARGS, idempotency_key="k1")
    tools.call(SMS, ARGS)
    assert first == tools.CallResult("call_1", "allow", SENT, "allowed")
    assert broker.requests == [{"tool": SMS, "constraints": ONLY_ANA, "ttl_s": 300}]
    assert broker.presented() == [("k1", "tok-1"), (None, "tok-1")]
    assert tools.delegations.get(SMS) == Delegation("tok-1", "2026-03-03T17:05:00.000000Z")


def test_each_tool_and_constraints_has_its_own(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto({SMS: ONLY_ANA})
    tools.twilio.send_sms(**ARGS)
    tools.stripe.create_payment_intent(amount=1000, currency="usd")
    assert broker.requests == [
        {"tool": SMS, "constraints": ONLY_ANA, "ttl_s": 300.0},
        {"tool": "stripe.create_payment_intent", "ttl_s": 300.0},
    ]
    tools.delegations.auto({SMS: {"recipients": ["+15550100003"]}})  # other constraints
    assert tools.delegations.get(SMS).token == "tok-3"
    tools.delegations.auto({SMS: ONLY_ANA})  # the first ones again: still held
    assert tools.delegations.get(SMS).token == "tok-1"
    assert len(broker.requests) == 3


def test_off_stops_presenting_and_forgets(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto()
    tools.twilio.send_sms(**ARGS)
    tools.delegations.off()
    tools.twilio.send_sms(**ARGS)
    tools.delegations.auto()
    tools.twilio.send_sms(**ARGS)
    assert broker.presented() == [(None, "tok-1"), (None, None), (None, "tok-2")]


@pytest.mark.parametrize(
    ("ttl_s", "renewed_after"), [(300, 240.0), (120, 60.0), (60, 30.0), (10, 5.0), (0.5, 0.25)]
)
def test_renewed_once_less_than_the_margin_is_left(
    broker: Broker, clock: Clock, ttl_s: float, renewed_after: float
) -> None:
    tools.delegations.auto(ttl_s=ttl_s)
    start = clock.now
    tools.twilio.send_sms(**ARGS)
    clock.now = start + renewed_after - 0.001
    tools.twilio.send_sms(**ARGS)
    clock.now = start + renewed_after
    tools.twilio.send_sms(**ARGS)
    tools.twilio.send_sms(**ARGS)
    assert [token for _, token in broker.presented()] == ["tok-1", "tok-1", "tok-2", "tok-2"]


def test_the_age_counts_from_before_the_request(broker: Broker, clock: Clock) -> None:
    """A slow request does not stretch the delegation's life: it is timed from the sending."""
    tools.delegations.auto(ttl_s=300)
    start = clock.now

    def slow(params: dict[str, Any]) -> None:
        clock.now += 30  # the request took 30 s

    broker.on_request = slow
    tools.delegations.get(SMS)
    clock.now = start + 239.999
    assert tools.delegations.get(SMS).token == "tok-1"
    clock.now = start + 240
    assert tools.delegations.get(SMS).token == "tok-2"


def reference_requests(ttl_s: float, gaps: list[float]) -> int:
    """How many requests calls at these intervals need, by the documented rule, literally:
    renewed once less than 60 s is left, or less than half for one of under 120 s."""
    count, asked_at, now = 0, 0.0, 0.0
    for gap in gaps:
        now += gap
        left = asked_at + ttl_s - now
        if count == 0 or left < (60 if ttl_s >= 120 else ttl_s / 2):
            count, asked_at = count + 1, now
    return count


HALVES = st.integers(min_value=0, max_value=800).map(lambda n: n / 2)  # sums stay exact


@SHARED_HOST
@given(
    ttl_s=HALVES.filter(lambda t: 0 < t <= 300),
    gaps=st.lists(HALVES, min_size=1, max_size=12),
)
def test_requests_follow_the_renewal_rule(broker: Broker, ttl_s: float, gaps: list[float]) -> None:
    clock = Clock()
    clock.now = 0.0
    keeper = Delegations(monotonic=clock)
    keeper.auto(ttl_s=ttl_s)
    before = len(broker.requests)
    for gap in gaps:
        clock.now += gap
        keeper.get(SMS)
    assert len(broker.requests) - before == reference_requests(ttl_s, gaps)


@given(life_s=st.floats(min_value=1e-6, max_value=300))
def test_the_margin_is_60_s_at_most_half(life_s: float) -> None:
    margin = tools._renew_margin(life_s)
    assert 0 < margin <= life_s / 2 and margin <= 60
    assert margin >= 0.2 * life_s  # 20 % of a lifetime is never more
    assert margin == 60 or margin == life_s / 2


@pytest.mark.parametrize("bad", [0, -1, 300.5, float("nan"), float("inf")])
def test_auto_refuses_a_lifetime_the_control_plane_would(bad: float) -> None:
    with pytest.raises(ValueError, match="ttl_s must be above 0 and at most 300 s"):
        Delegations().auto(ttl_s=bad)
    with pytest.raises(TypeError, match="ttl_s must be a number"):
        Delegations().auto(ttl_s=True)
    with pytest.raises(TypeError):
        Delegations().auto({SMS: {"recipients": {"not", "json"}}})


# --- automatic: refused as expired or revoked -----------------------------------------------


@pytest.mark.parametrize("reason", ["expired", "revoked"])
def test_a_refused_delegation_is_renewed_and_the_call_made_once_more(
    broker: Broker, clock: Clock, reason: str
) -> None:
    tools.delegations.auto({SMS: ONLY_ANA})
    broker.refuse = lambda token: REFUSALS[reason] if token == "tok-1" else None
    sent = tools.twilio.send_sms(**ARGS, idempotency_key="reminder-ana-1")
    assert sent.result == SENT
    assert broker.presented() == [("reminder-ana-1", "tok-1"), ("reminder-ana-1/renewed", "tok-2")]
    assert broker.requests == [{"tool": SMS, "constraints": ONLY_ANA, "ttl_s": 300.0}] * 2
    tools.twilio.send_sms(**ARGS)  # the new one is kept
    assert broker.presented()[-1] == (None, "tok-2") and len(broker.requests) == 2


def test_without_a_key_the_retry_is_left_to_the_host_to_name(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto()
    broker.refuse = lambda token: REFUSALS["expired"] if token == "tok-1" else None
    tools.twilio.send_sms(**ARGS)
    assert broker.presented() == [(None, "tok-1"), (None, "tok-2")]


def test_a_second_refusal_gives_up_saying_so(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto()
    broker.refuse = lambda token: REFUSALS["expired"] if token == "tok-1" else REFUSALS["revoked"]
    with pytest.raises(DelegationRefused) as caught:
        tools.twilio.send_sms(**ARGS, idempotency_key="k1")
    refused = caught.value
    assert refused.message == (
        f"{SMS}: gave up: the broker refused its delegation (expired), then the new one too"
        f" (revoked): allowed, but it failed: {REVOKED}"
    )
    assert isinstance(refused, ToolRefused) and refused.verdict == "allow"
    assert refused.reason == "revoked" and refused.problem == "revoked"
    assert refused.call_id == "call_1"
    assert broker.presented() == [("k1", "tok-1"), ("k1/renewed", "tok-2")]
    assert len(broker.requests) == 2


@pytest.mark.parametrize(
    ("refusal", "reason"),
    [
        (broker_refusal("not_delegated", "outside its recipients (block 0)"), "not_delegated"),
        (broker_refusal("max_uses", "delegation dlg_1 has no uses left"), "max_uses"),
        (broker_refusal("delegation_refused", "delegation dlg_1 is bound to sandbox 'sbx-2'"),
         "delegation_refused"),
        (broker_refusal("provider_rejected", "blocked"), None),
        (HostError(wire.REFUSED, "call denied", {"verdict": "deny", "rules": ["opted_out"]}), None),
    ],
)  # fmt: skip
def test_refusals_a_new_delegation_cannot_cure_are_not_retried(
    broker: Broker, clock: Clock, refusal: HostError, reason: str | None
) -> None:
    tools.delegations.auto()
    broker.refuse = lambda token: refusal
    with pytest.raises(ToolRefused) as caught:
        tools.twilio.send_sms(**ARGS, idempotency_key="k1")
    if reason is None:
        assert type(caught.value) is ToolRefused
    else:
        assert isinstance(caught.value, DelegationRefused) and caught.value.reason == reason
        assert not caught.value.renewable
    assert broker.presented() == [("k1", "tok-1")] and len(broker.requests) == 1


@given(key=st.text(min_size=1, max_size=128))
def test_the_retrys_key_is_derived_and_within_the_hosts_limit(key: str) -> None:
    renewed = tools._renewed_key(key)
    assert renewed is not None and 0 < len(renewed) <= 128
    assert renewed != key and renewed == tools._renewed_key(key)
    assert tools._renewed_key(None) is None


# --- threads --------------------------------------------------------------------------------


def test_two_threads_needing_one_delegation_make_one_request(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto()
    asked, second_started, more = threading.Event(), threading.Event(), threading.Event()

    def hold(params: dict[str, Any]) -> None:  # never raises: the guest would wait forever
        if len(broker.requests) == 1:
            asked.set()
            second_started.wait(5)
            more.wait(0.3)  # a second request, were the threads not serialized, comes meanwhile
        else:
            more.set()

    broker.on_request = hold
    results: dict[str, str] = {}

    def first() -> None:
        tools.twilio.send_sms(**ARGS)
        results["first"] = broker.calls[-1]["delegation"]

    def second() -> None:
        second_started.set()
        results["second"] = tools.delegations.get(SMS).token

    a = threading.Thread(target=first)
    a.start()
    assert asked.wait(5)
    b = threading.Thread(target=second)
    b.start()
    a.join(10)
    b.join(10)
    assert results == {"first": "tok-1", "second": "tok-1"}
    assert len(broker.requests) == 1


def test_requests_for_different_tools_do_not_wait_for_each_other(
    broker: Broker, clock: Clock
) -> None:
    tools.delegations.auto()
    arrived = {SMS: threading.Event(), "stripe.create_refund": threading.Event()}
    waited: list[bool] = []

    def both(params: dict[str, Any]) -> None:  # never raises: the guest would wait forever
        arrived[params["tool"]].set()
        waited.append(all(event.wait(5) for event in arrived.values()))

    broker.on_request = both
    threads = [threading.Thread(target=tools.delegations.get, args=(tool,)) for tool in arrived]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(r["tool"] for r in broker.requests) == sorted(arrived)
    assert waited == [True, True], "one request waited for the other"


def test_two_calls_refused_at_once_renew_once(broker: Broker, clock: Clock) -> None:
    tools.delegations.auto()
    tools.delegations.get(SMS)
    both_in = threading.Barrier(2, timeout=5)

    def refuse(token: str | None) -> HostError | None:
        if token != "tok-1":
            return None
        with contextlib.suppress(threading.BrokenBarrierError):  # raising would hang the guest
            both_in.wait()  # both calls present tok-1 before either is refused
        return REFUSALS["expired"]

    broker.refuse = refuse
    errors: list[BaseException] = []

    def send(key: str) -> None:
        try:
            tools.twilio.send_sms(**ARGS, idempotency_key=key)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(key,)) for key in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert len(broker.requests) == 2  # the first delegation, and one renewal for both threads
    assert sorted(broker.presented()) == [
        ("a", "tok-1"), ("a/renewed", "tok-2"), ("b", "tok-1"), ("b/renewed", "tok-2"),
    ]  # fmt: skip


# --- through the host, the relay and control ------------------------------------------------


def test_through_control_an_expired_delegation_is_renewed_and_acts_once(tmp_path: Path) -> None:
    """The real host side (channel, ``host.answer``), relay and control; only the broker is
    simulated. The renewed call is a new call that control allows (the refused one failed, so
    it conflicts with nothing); running the same keyed call again replays both answers and acts
    no more."""
    from corral.runtime.channel import Channel
    from corral.runtime.host import answer
    from corral.runtime.relay import ControlRelay, derive_call_id
    from corral.supervisor.dispatch import Execution
    from tests.runtime.test_relay import WHO, FakeBroker, ServedControl

    class ExpiringBroker(FakeBroker):
        """Refuses ``dlg-1`` as expired, as the broker's executor does."""

        async def execute(
            self, tenant: str, agent: str, sandbox: str, call_id: str, tool: str,
            args: Mapping[str, Any], delegation: str,
        ) -> Execution:  # fmt: skip
            if delegation == "dlg-1":
                self.executed.append((agent, sandbox, call_id, "refused"))
                return Execution("failed", error={"code": "delegation_expired",
                                                  "message": EXPIRED})  # fmt: skip
            return await super().execute(tenant, agent, sandbox, call_id, tool, args, delegation)

        async def delegate(
            self, tenant: str, agent: str, sandbox: str, request: Mapping[str, Any], key: str
        ) -> dict[str, Any]:
            minted = await super().delegate(tenant, agent, sandbox, request, key)
            return {**minted, "delegation": f"dlg-{len(self.minted)}"}

    fake_broker = ExpiringBroker()
    served = ServedControl(tmp_path, fake_broker)
    relay = ControlRelay(served.socket, ids=served.ids)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    path = Path(tempfile.mkdtemp(prefix="cg-", dir="/tmp")) / "channel.sock"

    async def handle(identity: Any, method: str, params: dict[str, Any]) -> Any:
        return await answer(relay, frozenset({SMS}), identity, method, params)

    channel = asyncio.run_coroutine_threadsafe(Channel.open(path, WHO, handle), loop).result(10)
    keeper = Delegations()
    try:
        tools.connect(path)
        keeper.auto({SMS: {"recipients": ["+13105550123"]}}, ttl_s=60)
        sms = {"to": "+13105550123", "body": "See you at 10"}
        sent = keeper.call(SMS, sms, "reminder-ana-1")
        assert sent.result == {"sid": "SM1", "status": "queued"}
        assert sent.call_id == derive_call_id(WHO, "reminder-ana-1/renewed")
        refused_id = derive_call_id(WHO, "reminder-ana-1")
        assert fake_broker.executed == [
            ("receptionist-1", "sbx-1", refused_id, "refused"),
            ("receptionist-1", "sbx-1", sent.call_id, "dlg-2"),
        ]
        assert [m["ttl_s"] for m in fake_broker.minted] == [60, 60]
        kinds = served.kinds()
        assert kinds.count("action.failed") == 1 and kinds.count("action.executed") == 1

        again = keeper.call(SMS, sms, "reminder-ana-1")  # the agent ran the call again
        assert again == sent
        assert len(fake_broker.executed) == 2  # nothing ran again
        assert served.kinds() == kinds  # nor was anything decided again
        # The replayed refusal cannot say it was about an older token than the one held, so
        # the SDK asked for one more delegation: harmless, and the next call presents it.
        assert len(fake_broker.minted) == 3
    finally:
        tools.set_client(None)
        asyncio.run_coroutine_threadsafe(channel.close(), loop).result(10)
        asyncio.run_coroutine_threadsafe(relay.aclose(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(10)
        loop.close()
        served.close()
