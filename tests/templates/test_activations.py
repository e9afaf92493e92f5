"""The activation rules, with an injected time and catalogs written per test.

Automatic upgrades are exactly the security patches (newest within the same major.minor,
never to or from a pre-release); everything else waits for the owner's opt-in.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from corral.audit.entries import Actor
from corral.core.ids import SequentialIds
from corral.templates import (
    ActivationError,
    Activations,
    ActivationStore,
    Catalog,
    CorruptActivation,
    NoticeKind,
    SunsetError,
    UnknownTemplate,
    UpgradeKind,
)
from tests.templates._catalogs import NAME, T0, when, write_version

TENANT = "brightsmile"


class World:
    """A catalog directory, a store, and :class:`Activations` over them (no audit chain)."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp / "catalog"
        self.root.mkdir()
        self.store = ActivationStore.from_url(f"sqlite:///{tmp / 'control.db'}")
        self.store.create_schema()
        self.ids = SequentialIds()

    def versions(self, *specs: str | tuple[str, dict[str, Any]]) -> Activations:
        """Write versions (``"1.0.1"`` or ``("1.0.1", {"security": True})``) and reload."""
        for spec in specs:
            version, fields = (spec, {}) if isinstance(spec, str) else spec
            write_version(self.root, version, **fields)
        return self.service()

    def service(self, sequencer: Any = None) -> Activations:
        return Activations(Catalog.load(self.root), self.store, ids=self.ids, sequencer=sequencer)

    def history(self, tenant: str = TENANT) -> list[tuple[str | None, str, bool]]:
        return [(r.from_version, r.version, r.automatic) for r in self.store.history(tenant)]


@pytest.fixture(name="world")
def world_fixture(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    try:
        yield world
    finally:
        world.store.close()


SECURITY: dict[str, Any] = {"security": True}


# ------------------------------------------------------------------------- activate


def test_activate_pins_the_exact_version_and_returns_its_audit_entry(world: World) -> None:
    service = world.versions("1.0.0", "1.0.1")
    done = service.activate(TENANT, NAME, "1.0.0", T0)
    entry = done.entry
    assert (done.previous, done.index) == (None, None)  # no sequencer: the caller appends
    assert entry.kind == "template.activated" and entry.tenant == TENANT and entry.at == T0
    assert entry.actor == Actor(kind="operator", id="owner")
    assert entry.data.model_dump() == {
        "activation_id": done.activation.activation_id,
        "template": NAME,
        "version": "1.0.0",
        "content_hash": service.catalog.get(NAME, "1.0.0").content_hash,
        "automatic": False,
    }
    assert world.store.activations(TENANT) == [done.activation]
    assert world.history() == [(None, "1.0.0", False)]


def test_activating_an_unknown_version_is_refused_and_changes_nothing(world: World) -> None:
    service = world.versions("1.0.0")
    with pytest.raises(UnknownTemplate, match=r"has no version '1\.0\.1'"):
        service.activate(TENANT, NAME, "1.0.1", T0)
    with pytest.raises(UnknownTemplate, match="no template named 'salon'"):
        service.activate(TENANT, "salon", "1.0.0", T0)
    assert world.store.activations() == [] and world.history() == []


def test_a_sunset_version_is_refused_from_its_sunset_on(world: World) -> None:
    lifecycle = {"deprecated_at": when("2026-10-01"), "sunset_at": when("2027-01-31")}
    service = world.versions(("1.0.0", lifecycle))
    sunset = service.catalog.get(NAME, "1.0.0").document.sunset_at
    assert sunset is not None
    with pytest.raises(SunsetError, match=r"clinic 1.0.0 was sunset on 2027-01-31T00:00:00"):
        service.activate(TENANT, NAME, "1.0.0", sunset)
    assert world.store.activations() == []
    deprecated = service.activate(TENANT, NAME, "1.0.0", sunset - timedelta(microseconds=1))
    assert deprecated.activation.version == "1.0.0"  # deprecated, not yet sunset: allowed


def test_a_tenant_activates_a_template_once(world: World) -> None:
    service = world.versions("1.0.0", "1.1.0")
    first = service.activate(TENANT, NAME, "1.0.0", T0)
    with pytest.raises(ActivationError, match=r"already runs clinic 1\.0\.0 as activation"):
        service.activate(TENANT, NAME, "1.1.0", T0)
    other = service.activate("other-clinic", NAME, "1.1.0", T0)
    assert first.activation.activation_id != other.activation.activation_id
    assert len(world.store.activations()) == 2


def test_naive_times_are_refused(world: World) -> None:
    service = world.versions("1.0.0")
    with pytest.raises(ValueError, match="naive"):
        service.activate(TENANT, NAME, "1.0.0", T0.replace(tzinfo=None))


# ------------------------------------------------------------------------- upgrades


def test_upgrade_offers_are_classified_and_only_security_patches_are_automatic(
    world: World,
) -> None:
    service = world.versions(
        "1.0.0", ("1.0.1", SECURITY), "1.0.2", ("1.0.3-rc.1", SECURITY), ("1.1.0", SECURITY),
        ("2.0.0", SECURITY),
    )  # fmt: skip
    service.activate(TENANT, NAME, "1.0.0", T0)
    offers = service.upgrades(TENANT, T0)
    assert [(o.version, o.kind, o.security, o.automatic, o.prerelease) for o in offers] == [
        ("1.0.1", UpgradeKind.PATCH, True, True, False),
        ("1.0.2", UpgradeKind.PATCH, False, False, False),  # a plain patch waits
        ("1.0.3-rc.1", UpgradeKind.PATCH, True, False, True),  # a pre-release waits
        ("1.1.0", UpgradeKind.MINOR, True, False, False),  # a minor waits, security or not
        ("2.0.0", UpgradeKind.MAJOR, True, False, False),  # a major waits, security or not
    ]
    assert {o.current for o in offers} == {"1.0.0"} and {o.tenant for o in offers} == {TENANT}
    assert service.upgrades("nobody", T0) == []


def test_sunset_versions_are_not_offered(world: World) -> None:
    service = world.versions(
        "1.0.0", ("1.0.1", {"deprecated_at": when("2026-10-01"), "sunset_at": when("2026-11-01")})
    )
    service.activate(TENANT, NAME, "1.0.0", T0 - timedelta(days=60))
    assert service.upgrades(TENANT, T0) == []


def test_the_security_patch_applies_itself_and_is_recorded_automatic(world: World) -> None:
    service = world.versions("1.0.0", ("1.0.1", SECURITY), "1.0.2", "1.1.0", "2.0.0")
    done = service.activate(TENANT, NAME, "1.0.0", T0)
    later = T0 + timedelta(hours=1)
    (applied,) = service.apply_automatic(later)
    assert (applied.previous, applied.activation.version, applied.activation.automatic) == (
        "1.0.0", "1.0.1", True
    )  # fmt: skip
    assert applied.entry.data.automatic is True and applied.entry.at == later
    assert applied.entry.actor == Actor(kind="system", id="corral-templates")
    assert applied.activation.activation_id == done.activation.activation_id
    assert applied.activation.activated_at == T0 and applied.activation.revision == 2
    assert world.history() == [(None, "1.0.0", False), ("1.0.0", "1.0.1", True)]
    assert service.apply_automatic(later) == []  # nothing more is automatic
    assert [o.version for o in service.upgrades(TENANT, later)] == ["1.0.2", "1.1.0", "2.0.0"]


def test_the_newest_security_patch_is_applied_in_one_step(world: World) -> None:
    service = world.versions("1.0.0", ("1.0.1", SECURITY), ("1.0.2", SECURITY), "1.0.3")
    service.activate(TENANT, NAME, "1.0.0", T0)
    assert [a.activation.version for a in service.apply_automatic(T0)] == ["1.0.2"]
    assert world.history()[-1] == ("1.0.0", "1.0.2", True)


@pytest.mark.parametrize(
    ("desc", "pinned", "versions"),
    [
        ("a non-security patch", "1.0.0", ["1.0.0", "1.0.1"]),
        ("a minor, even marked security", "1.0.0", ["1.0.0", ("1.1.0", SECURITY)]),
        ("a patch of the next minor", "1.0.0", ["1.0.0", "1.1.0", ("1.1.1", SECURITY)]),
        ("a major, even marked security", "1.0.0", ["1.0.0", ("2.0.0", SECURITY)]),
        ("a pre-release patch", "1.0.0", ["1.0.0", ("1.0.1-rc.1", SECURITY)]),
        ("from a pre-release", "1.1.0-rc.1", ["1.1.0-rc.1", ("1.1.0", SECURITY),
                                               ("1.1.1", SECURITY)]),
        ("a sunset security patch", "1.0.0", ["1.0.0", ("1.0.1", {
            **SECURITY, "deprecated_at": when("2026-10-01"), "sunset_at": when("2026-11-01")})]),
    ],
    ids=["non-security patch", "minor", "next minor's patch", "major", "pre-release",
         "from a pre-release", "sunset patch"],
)  # fmt: skip
def test_what_waits_for_the_owner(
    world: World, desc: str, pinned: str, versions: list[str | tuple[str, dict[str, Any]]]
) -> None:
    service = world.versions(*versions)
    service.activate(TENANT, NAME, pinned, T0 - timedelta(days=60))
    assert service.apply_automatic(T0) == []
    assert [a.version for a in world.store.activations()] == [pinned]
    assert all(not offer.automatic for offer in service.upgrades(TENANT, T0))


def test_an_older_security_patch_applies_when_the_newest_is_sunset(world: World) -> None:
    sunset = {**SECURITY, "deprecated_at": when("2026-10-01"), "sunset_at": when("2026-11-01")}
    service = world.versions("1.0.0", ("1.0.1", SECURITY), ("1.0.2", sunset))
    service.activate(TENANT, NAME, "1.0.0", T0 - timedelta(days=60))
    assert [a.activation.version for a in service.apply_automatic(T0)] == ["1.0.1"]


def test_automatic_upgrades_apply_to_every_tenant(world: World) -> None:
    service = world.versions("1.0.0", ("1.0.1", SECURITY), "1.1.0")
    service.activate("a-clinic", NAME, "1.0.0", T0)
    service.activate("b-clinic", NAME, "1.1.0", T0)
    service.activate("c-clinic", NAME, "1.0.0", T0)
    applied = service.apply_automatic(T0)
    assert sorted(a.activation.tenant for a in applied) == ["a-clinic", "c-clinic"]


# -------------------------------------------------------------------------- opt in


@pytest.mark.parametrize("target", ["1.0.1", "1.1.0", "2.0.0", "2.1.0-beta.1"])
def test_the_owner_opts_in_to_any_newer_version(world: World, target: str) -> None:
    service = world.versions("1.0.0", "1.0.1", "1.1.0", "2.0.0", "2.1.0-beta.1")
    done = service.activate(TENANT, NAME, "1.0.0", T0)
    moved = service.opt_in(TENANT, done.activation.activation_id, target, T0,
                           actor=Actor(kind="operator", id="dr-lee"))  # fmt: skip
    assert (moved.previous, moved.activation.version, moved.entry.data.automatic) == (
        "1.0.0", target, False
    )  # fmt: skip
    assert moved.entry.actor.id == "dr-lee"
    assert moved.entry.data.content_hash == service.catalog.get(NAME, target).content_hash
    assert world.history() == [(None, "1.0.0", False), ("1.0.0", target, False)]


@pytest.mark.parametrize(
    ("target", "error", "message"),
    [
        ("1.0.0", ActivationError, "clinic 1.0.0 is not newer than the pinned 1.1.0"),
        ("1.0.1", ActivationError, "is not newer than the pinned 1.1.0"),
        ("1.2.0", SunsetError, "clinic 1.2.0 was sunset on 2026-11-01"),
        ("9.9.9", UnknownTemplate, "has no version '9.9.9'"),
    ],
)
def test_opt_in_refusals_change_nothing(
    world: World, target: str, error: type[Exception], message: str
) -> None:
    sunset = {"deprecated_at": when("2026-10-01"), "sunset_at": when("2026-11-01")}
    service = world.versions("1.0.0", "1.0.1", "1.1.0", ("1.2.0", sunset))
    done = service.activate(TENANT, NAME, "1.1.0", T0)
    with pytest.raises(error, match=message):
        service.opt_in(TENANT, done.activation.activation_id, target, T0)
    assert world.store.activations() == [done.activation]
    assert len(world.history()) == 1


def test_opt_in_needs_the_tenants_own_activation(world: World) -> None:
    service = world.versions("1.0.0", "1.1.0")
    done = service.activate(TENANT, NAME, "1.0.0", T0)
    for tenant, activation_id in [("intruder", done.activation.activation_id),
                                  (TENANT, "act_missing")]:  # fmt: skip
        with pytest.raises(ActivationError, match=f"tenant '{tenant}' has no activation"):
            service.opt_in(tenant, activation_id, "1.1.0", T0)
    assert world.store.activations()[0].version == "1.0.0"


# ------------------------------------------------------------------------- notices


def test_notices_warn_before_the_sunset(world: World) -> None:
    service = world.versions(
        ("1.0.0", {"deprecated_at": when("2026-10-01"), "sunset_at": when("2027-01-31")}),
        ("1.1.0", {"deprecated_at": when("2026-10-01")}),
        "1.2.0", "1.3.0-rc.1",
    )  # fmt: skip
    service.activate("a-clinic", NAME, "1.0.0", T0)
    service.activate("b-clinic", NAME, "1.1.0", T0)
    service.activate("c-clinic", NAME, "1.2.0", T0)

    def kinds(at_day: str, warn_days: int = 14) -> list[tuple[str, NoticeKind]]:
        at = T0.replace(year=int(at_day[:4]), month=int(at_day[5:7]), day=int(at_day[8:]), hour=0)
        return [(n.tenant, n.kind) for n in service.notices(at, warn_days)]

    deprecated = [("a-clinic", NoticeKind.DEPRECATED), ("b-clinic", NoticeKind.DEPRECATED)]
    assert kinds("2026-09-30") == []
    assert kinds("2026-10-01") == deprecated
    assert kinds("2027-01-16") == deprecated  # 15 days before the sunset
    assert kinds("2027-01-17")[0] == ("a-clinic", NoticeKind.SUNSETTING)  # exactly 14 days
    assert kinds("2027-01-16", warn_days=30)[0] == ("a-clinic", NoticeKind.SUNSETTING)
    assert kinds("2027-01-31")[0] == ("a-clinic", NoticeKind.SUNSET)
    (notice, _) = service.notices(T0.replace(year=2027, month=1, day=20))
    assert notice.replacement == "1.2.0"  # the newest release, not the release candidate
    assert notice.message() == (
        "clinic 1.0.0 is deprecated and sunsets on 2027-01-31; upgrade to 1.2.0"
    )


# -------------------------------------------------------------------------- corruption


def _corrupt(world: World, tenant: str, **values: Any) -> None:
    table = sa.Table("template_activations", sa.MetaData(), autoload_with=world.store.engine)
    with world.store.engine.begin() as conn:
        conn.execute(table.update().where(table.c.tenant == tenant).values(**values))


@pytest.mark.parametrize(
    ("desc", "values", "message"),
    [
        ("bad JSON", {"entry": "{not json"}, "entry is not a valid audit entry: entry is not JSON"),
        ("another entry kind", {"entry": '{"kind":"x","v":1}'},
         "entry is a 'x', not template.activated"),
        ("version edited", {"version": "1.0.1"},
         "version is '1.0.1' but its audit entry ent_0000000002 says '1.0.0'"),
        ("not a version", {"version": "1.x"}, "version: '1.x' is not a strict SemVer"),
    ],
    ids=["bad JSON", "another entry kind", "version edited", "not a version"],
)  # fmt: skip
def test_a_corrupted_row_is_named_and_changes_nothing(
    world: World, desc: str, values: dict[str, Any], message: str
) -> None:
    service = world.versions("1.0.0", ("1.0.1", SECURITY))
    service.activate("a-clinic", NAME, "1.0.0", T0)
    service.activate(TENANT, NAME, "1.0.0", T0)
    _corrupt(world, TENANT, **values)
    row = "template_activations row 'act_0000000002' (tenant 'brightsmile'): "
    with pytest.raises(CorruptActivation) as caught:
        service.apply_automatic(T0)
    assert str(caught.value).startswith(row + message), str(caught.value)
    assert caught.value.table == "template_activations"
    for call in (lambda: service.upgrades(TENANT, T0), lambda: service.notices(T0)):
        with pytest.raises(CorruptActivation, match="act_0000000002"):
            call()
    assert len(world.history("a-clinic")) == 1  # the healthy tenant was not upgraded either


def test_a_pin_the_catalog_lost_is_named(world: World) -> None:
    service = world.versions("1.0.0", "1.0.5", ("1.0.6", SECURITY))
    service.activate(TENANT, NAME, "1.0.5", T0)
    shutil.rmtree(world.root / NAME / "1.0.5")  # the version directory was removed
    with pytest.raises(CorruptActivation, match=(
        r"row 'act_0000000001' \(tenant 'brightsmile'\): pins a version the catalog does not "
        r"have: template 'clinic' has no version '1.0.5'"
    )):  # fmt: skip
        world.service().apply_automatic(T0)
    assert world.history() == [(None, "1.0.5", False)]


# ------------------------------------------------------------------------- the audit


class FailingSequencer:
    """A sequencer whose appends fail: the change must roll back."""

    def submit(self, tenant: str, entry: object, personal: object = None) -> Future[int]:
        future: Future[int] = Future()
        future.set_exception(OSError("audit disk full"))
        return future


def test_a_failed_audit_append_rolls_the_change_back(world: World) -> None:
    world.versions("1.0.0", ("1.0.1", SECURITY))
    service = world.service(sequencer=FailingSequencer())
    with pytest.raises(OSError, match="audit disk full"):
        service.activate(TENANT, NAME, "1.0.0", T0)
    assert world.store.activations() == [] and world.history() == []
    world.service().activate(TENANT, NAME, "1.0.0", T0)
    with pytest.raises(OSError, match="audit disk full"):
        service.apply_automatic(T0)
    assert [a.version for a in world.store.activations()] == ["1.0.0"]
    assert world.history() == [(None, "1.0.0", False)]
