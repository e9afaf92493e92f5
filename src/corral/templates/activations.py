"""Activations: a tenant pinned to an exact template version, and the rules for moving it.

The rules (``DESIGN.md``'s locked decision; ``docs/templates.md`` says why):

- :meth:`Activations.activate` pins a tenant to an exact version; a version at or after its
  ``sunset_at``, or one the catalog does not have, is refused.
- :meth:`Activations.upgrades` lists, for each of a tenant's activations, every newer version
  that is not sunset, classified patch/minor/major and marked ``automatic`` or not.
- :meth:`Activations.apply_automatic` moves an activation **only** to a patch release marked
  ``security: true``: the newest such patch within the same major.minor, never crossing a
  minor or major, never to or from a pre-release. Everything else waits for the owner.
- :meth:`Activations.opt_in` is the owner's choice of any newer version that is not sunset.
- :meth:`Activations.notices` lists activations whose version is deprecated or sunsets within
  ``warn_days``, so the host can tell running agents before the date.

Every activation and upgrade makes one ``template.activated`` audit entry (content hash,
``automatic``). With a :class:`~corral.audit.Sequencer` it is appended and durable *before*
the change commits: if the append fails, nothing changes, so no version is ever in force
that the chain does not show. (If the commit then fails, the chain shows an activation that
did not happen; the store's history is the tiebreaker.) Without a sequencer the caller
appends :attr:`Activated.entry` itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from corral.audit.entries import Actor, TemplateActivated, TemplateActivatedData
from corral.audit.log import Sequencer
from corral.core.clock import format_time
from corral.core.ids import IdSource
from corral.templates.catalog import Catalog, UnknownTemplate
from corral.templates.document import Template
from corral.templates.store import Activation, ActivationStore, Change, CorruptActivation
from corral.templates.version import TemplateError, UpgradeKind, Version, classify

__all__ = [
    "OWNER",
    "SYSTEM",
    "Activated",
    "ActivationError",
    "Activations",
    "Notice",
    "NoticeKind",
    "SunsetError",
    "UpgradeOffer",
    "activation_entry",
    "automatic_target",
    "is_automatic",
]

#: Who an owner's activation or opt-in is recorded as, unless the caller says who.
OWNER = Actor(kind="operator", id="owner")
#: Who automatic upgrades are recorded as.
SYSTEM = Actor(kind="system", id="corral-templates")


class ActivationError(TemplateError, ValueError):
    """An activation or upgrade that the rules refuse; nothing changed."""


class SunsetError(ActivationError):
    """The version is at or past its ``sunset_at``: it can no longer be activated."""


@dataclass(frozen=True)
class Activated:
    """A change that committed: the activation now, and the audit entry that records it."""

    activation: Activation
    entry: TemplateActivated
    previous: str | None
    """The version before (``None`` for a new activation)."""
    index: int | None
    """The entry's index in the tenant's audit log once durable; ``None`` without a
    sequencer (then the caller appends :attr:`entry`)."""


@dataclass(frozen=True)
class UpgradeOffer:
    """A newer version an activation could move to."""

    activation_id: str
    tenant: str
    template: str
    current: str
    version: str
    kind: UpgradeKind
    security: bool
    automatic: bool
    """:meth:`Activations.apply_automatic` may apply it (the newest such offer is applied)."""
    prerelease: bool
    deprecated_at: datetime | None
    sunset_at: datetime | None
    changelog: str


class NoticeKind(StrEnum):
    DEPRECATED = "deprecated"
    """Deprecated; the sunset date, if any, is more than ``warn_days`` away."""
    SUNSETTING = "sunsetting"
    """Sunsets within ``warn_days``."""
    SUNSET = "sunset"
    """Already past its sunset date: upgrade now."""


@dataclass(frozen=True)
class Notice:
    """What the host tells an activation's running agents about their version."""

    activation_id: str
    tenant: str
    template: str
    version: str
    kind: NoticeKind
    deprecated_at: datetime | None
    sunset_at: datetime | None
    replacement: str | None
    """The newest release not sunset, when it is newer than the pinned version."""

    def message(self) -> str:
        what = f"{self.template} {self.version}"
        if self.kind is NoticeKind.SUNSET and self.sunset_at is not None:
            text = f"{what} reached its sunset on {self.sunset_at:%Y-%m-%d}"
        elif self.sunset_at is not None:
            text = f"{what} is deprecated and sunsets on {self.sunset_at:%Y-%m-%d}"
        else:
            text = f"{what} is deprecated"
        return text + (f"; upgrade to {self.replacement}" if self.replacement else "")


def activation_entry(
    template: Template,
    *,
    entry_id: str,
    tenant: str,
    activation_id: str,
    at: datetime,
    automatic: bool = False,
    actor: Actor | None = None,
) -> TemplateActivated:
    """The ``template.activated`` entry recording that ``tenant`` runs ``template`` now."""
    data = TemplateActivatedData(
        activation_id=activation_id,
        template=template.name,
        version=template.document.version,
        content_hash=template.content_hash,
        automatic=automatic,
    )
    who = actor if actor is not None else (SYSTEM if automatic else OWNER)
    return TemplateActivated(id=entry_id, tenant=tenant, at=at, actor=who, data=data)


def is_automatic(current: Version, target: Template) -> bool:
    """Whether moving from ``current`` to ``target`` may happen without the owner: a newer
    patch within the same major.minor, marked ``security``, and neither is a pre-release."""
    version = target.version
    return (
        version > current
        and version.core[:2] == current.core[:2]
        and target.document.security
        and not version.is_prerelease
        and not current.is_prerelease
    )


def automatic_target(catalog: Catalog, activation: Activation, at: datetime) -> Template | None:
    """The newest version :func:`is_automatic` allows and not sunset at ``at``, if any."""
    current = activation.semver
    allowed = [
        t for t in catalog.newer(activation.template, current, at) if is_automatic(current, t)
    ]
    return allowed[-1] if allowed else None


def _sunset(template: Template) -> SunsetError:
    when = template.document.sunset_at
    day = format_time(when) if when is not None else "?"
    return SunsetError(
        f"{template.name} {template.version} was sunset on {day}: it can no "
        "longer be activated or opted into"
    )


def _aware(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("refusing a naive datetime: corral times are timezone-aware")
    return at


class Activations:
    """The activation rules over a catalog and a store; appends to the audit chain when given
    a sequencer. ``ids`` makes activation ids (``act_…``) and entry ids (``ent_…``)."""

    def __init__(
        self,
        catalog: Catalog,
        store: ActivationStore,
        *,
        ids: IdSource,
        sequencer: Sequencer | None = None,
        append_timeout_s: float = 30.0,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.ids = ids
        self.sequencer = sequencer
        self.append_timeout_s = append_timeout_s

    # -------------------------------------------------------------------------- reading

    def _pinned(self, activation: Activation) -> Template:
        """The catalog's template for the activation's pin; a pin it lacks is corruption."""
        try:
            return self.catalog.get(activation.template, activation.version)
        except UnknownTemplate as exc:
            raise CorruptActivation(
                "template_activations",
                f"{activation.activation_id!r} (tenant {activation.tenant!r})",
                f"pins a version the catalog does not have: {exc}",
            ) from None

    def activations(self, tenant: str | None = None) -> list[Activation]:
        """The stored activations, each checked against the catalog."""
        found = self.store.activations(tenant)
        for activation in found:
            self._pinned(activation)
        return found

    def upgrades(self, tenant: str, at: datetime) -> list[UpgradeOffer]:
        """Every pending upgrade offer of the tenant's activations, oldest version first."""
        _aware(at)
        offers: list[UpgradeOffer] = []
        for activation in self.activations(tenant):
            current = activation.semver
            for target in self.catalog.newer(activation.template, current, at):
                doc = target.document
                offers.append(
                    UpgradeOffer(
                        activation_id=activation.activation_id,
                        tenant=tenant,
                        template=activation.template,
                        current=activation.version,
                        version=doc.version,
                        kind=classify(current, target.version),
                        security=doc.security,
                        automatic=is_automatic(current, target),
                        prerelease=target.version.is_prerelease,
                        deprecated_at=doc.deprecated_at,
                        sunset_at=doc.sunset_at,
                        changelog=doc.changelog,
                    )
                )
        return offers

    def notices(self, at: datetime, warn_days: int = 14) -> list[Notice]:
        """Activations whose version is deprecated at ``at`` or sunsets within ``warn_days``."""
        _aware(at)
        horizon = at + timedelta(days=warn_days)
        notices: list[Notice] = []
        for activation in self.activations():
            doc = self._pinned(activation).document
            sunset = doc.sunset_at
            if sunset is not None and sunset <= at:
                kind = NoticeKind.SUNSET
            elif sunset is not None and sunset <= horizon:
                kind = NoticeKind.SUNSETTING
            elif doc.is_deprecated(at):
                kind = NoticeKind.DEPRECATED
            else:
                continue
            latest = self.catalog.latest(activation.template, at)
            replacement = (
                latest.document.version
                if latest is not None and latest.version > activation.semver
                else None
            )
            notices.append(
                Notice(
                    activation_id=activation.activation_id,
                    tenant=activation.tenant,
                    template=activation.template,
                    version=activation.version,
                    kind=kind,
                    deprecated_at=doc.deprecated_at,
                    sunset_at=sunset,
                    replacement=replacement,
                )
            )
        return notices

    # ------------------------------------------------------------------------- changing

    def activate(
        self, tenant: str, name: str, version: str, at: datetime, *, actor: Actor = OWNER
    ) -> Activated:
        """Pin ``tenant`` to ``name`` at exactly ``version``."""
        _aware(at)
        template = self.catalog.get(name, version)  # UnknownTemplate if it has no such version
        if template.document.is_sunset(at):
            raise _sunset(template)
        with self.store.change() as change:
            existing = change.find(tenant, name)
            if existing is not None:
                raise ActivationError(
                    f"tenant {tenant!r} already runs {name} {existing.version} as activation "
                    f"{existing.activation_id!r}; move it with an upgrade instead"
                )
            activation_id = self.ids.new("act")
            entry = activation_entry(
                template,
                entry_id=self.ids.new("ent"),
                tenant=tenant,
                activation_id=activation_id,
                at=at,
                actor=actor,
            )
            activation = Activation(
                activation_id=activation_id,
                tenant=tenant,
                template=name,
                version=version,
                content_hash=template.content_hash,
                automatic=False,
                activated_at=at,
                updated_at=at,
                revision=1,
                entry=entry,
            )
            change.insert(activation)
            index = self._append(entry)
        return Activated(activation, entry, None, index)

    def opt_in(
        self,
        tenant: str,
        activation_id: str,
        version: str,
        at: datetime,
        *,
        actor: Actor = OWNER,
    ) -> Activated:
        """The owner moves an activation to any newer version that is not sunset."""
        _aware(at)
        with self.store.change() as change:
            current = change.get(activation_id)
            if current is None or current.tenant != tenant:  # another tenant's id: not found
                raise ActivationError(f"tenant {tenant!r} has no activation {activation_id!r}")
            self._pinned(current)
            target = self.catalog.get(current.template, version)
            if not target.version > current.semver:
                raise ActivationError(
                    f"{current.template} {version} is not newer than the "
                    f"pinned {current.version}: not an upgrade"
                )
            if target.document.is_sunset(at):
                raise _sunset(target)
            return self._move(change, current, target, at, automatic=False, actor=actor)

    def apply_automatic(self, at: datetime) -> list[Activated]:
        """Apply every automatic upgrade due at ``at`` (see the module docstring).

        Every activation is read and checked first, so a corrupted row stops the run before
        anything changes. Each upgrade commits on its own; one that a concurrent change made
        moot is skipped.
        """
        _aware(at)
        due = [
            (a, t)
            for a in self.activations()
            if (t := automatic_target(self.catalog, a, at)) is not None
        ]
        applied: list[Activated] = []
        for seen, _ in due:
            with self.store.change() as change:
                current = change.get(seen.activation_id)
                if current is None:
                    continue
                self._pinned(current)
                target = automatic_target(self.catalog, current, at)
                if target is None:  # someone moved it meanwhile
                    continue
                applied.append(
                    self._move(change, current, target, at, automatic=True, actor=SYSTEM)
                )
        return applied

    def _move(
        self,
        change: Change,
        current: Activation,
        target: Template,
        at: datetime,
        *,
        automatic: bool,
        actor: Actor,
    ) -> Activated:
        entry = activation_entry(
            target,
            entry_id=self.ids.new("ent"),
            tenant=current.tenant,
            activation_id=current.activation_id,
            at=at,
            automatic=automatic,
            actor=actor,
        )
        moved = Activation(
            activation_id=current.activation_id,
            tenant=current.tenant,
            template=current.template,
            version=target.document.version,
            content_hash=target.content_hash,
            automatic=automatic,
            activated_at=current.activated_at,
            updated_at=at,
            revision=current.revision + 1,
            entry=entry,
        )
        change.replace(current, moved)
        index = self._append(entry)
        return Activated(moved, entry, current.version, index)

    def _append(self, entry: TemplateActivated) -> int | None:
        """Append ``entry`` and wait until durable (inside the change: a failure rolls it
        back)."""
        if self.sequencer is None:
            return None
        future = self.sequencer.submit(entry.tenant, entry)
        index: int = future.result(timeout=self.append_timeout_s)
        return index
