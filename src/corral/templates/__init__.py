"""Agent setup templates: strict SemVer versions, pinned activations, audited upgrades.

A *template* is everything a business needs to run a team of agents: its roles (each an entry
point and the catalog tools it may call) and the tenant policy defaults. Each version is a
directory, ``<catalog>/<name>/<semver>/template.yaml`` plus the agent scripts it references,
and never changes once published: a fix is a new version. A tenant's *activation* pins it to
one exact version; the pin moves only by the rules below, and each move is a
``template.activated`` entry in the tenant's audit chain carrying the version's content hash.

- A patch release marked ``security: true`` applies itself (:meth:`Activations.apply_automatic`):
  the newest such patch within the same major.minor, never across a minor or major, never to
  or from a pre-release.
- Every other upgrade (a plain patch, a minor, a major, a pre-release) is an offer
  (:meth:`Activations.upgrades`) that waits for the owner (:meth:`Activations.opt_in`).
- A version at or after its ``sunset_at`` can no longer be activated or opted into; running
  activations of a deprecated or soon-sunset version get :meth:`Activations.notices`.
- ``corral control`` runs :func:`run_once` on a schedule (:class:`Maintenance`,
  ``templates.maintain_every_s``): it applies the automatic upgrades and records, once per
  activation and sunset date, a ``template.notice`` entry that the sunset is near or past.

``docs/templates.md`` explains the rules and why. The demo catalog is ``templates/`` at the
root of the repository::

    >>> import tempfile
    >>> from datetime import UTC, datetime
    >>> from pathlib import Path
    >>> import corral
    >>> from corral.core.ids import SequentialIds
    >>> catalog = Catalog.load(Path(corral.__file__).parents[2] / "templates")
    >>> [str(t.version) for t in catalog.versions("dental-front-desk")]
    ['1.0.0', '1.0.1', '1.1.0', '2.0.0']
    >>> tmp = tempfile.TemporaryDirectory()
    >>> store = ActivationStore.from_url(f"sqlite:///{tmp.name}/control.db")
    >>> store.create_schema()
    >>> activations = Activations(catalog, store, ids=SequentialIds())
    >>> at = datetime(2026, 11, 2, 17, 0, tzinfo=UTC)
    >>> done = activations.activate("brightsmile", "dental-front-desk", "1.0.0", at)
    >>> done.entry.data.version, done.entry.data.content_hash[:7]
    ('1.0.0', 'sha256:')
    >>> [(o.version, o.kind.value, o.automatic) for o in activations.upgrades("brightsmile", at)]
    [('1.0.1', 'patch', True), ('1.1.0', 'minor', False), ('2.0.0', 'major', False)]
    >>> print(activations.notices(at)[0].message())
    dental-front-desk 1.0.0 is deprecated and sunsets on 2027-01-31; upgrade to 2.0.0
    >>> [(a.previous, a.entry.data.version, a.entry.data.automatic)
    ...  for a in activations.apply_automatic(at)]  # the security patch, and nothing else
    [('1.0.0', '1.0.1', True)]
    >>> activations.opt_in("brightsmile", done.activation.activation_id, "1.1.0", at).previous
    '1.0.1'
    >>> store.close(); tmp.cleanup()

Give :class:`Activations` a :class:`~corral.audit.Sequencer` and each change is appended to
the audit chain, durably, before it commits; without one, append :attr:`Activated.entry`
yourself.
"""

from corral.templates.activations import (
    OWNER,
    SYSTEM,
    Activated,
    ActivationError,
    Activations,
    Notice,
    NoticeKind,
    SunsetError,
    UpgradeOffer,
    activation_entry,
    automatic_target,
    is_automatic,
)
from corral.templates.catalog import Catalog, CatalogError, UnknownTemplate
from corral.templates.document import (
    DOCUMENT_FILE,
    DocumentError,
    Role,
    Template,
    TemplateDocument,
    load_document,
    load_template,
    parse_document,
)
from corral.templates.maintenance import Maintenance, Noticed, Round, notice_entry, run_once
from corral.templates.store import (
    Activation,
    ActivationConflict,
    ActivationStore,
    ActivationStoreError,
    CorruptActivation,
    HistoryRecord,
    NoticeRecord,
)
from corral.templates.version import TemplateError, UpgradeKind, Version, VersionError, classify

__all__ = [
    "DOCUMENT_FILE",
    "OWNER",
    "SYSTEM",
    "Activated",
    "Activation",
    "ActivationConflict",
    "ActivationError",
    "ActivationStore",
    "ActivationStoreError",
    "Activations",
    "Catalog",
    "CatalogError",
    "CorruptActivation",
    "DocumentError",
    "HistoryRecord",
    "Maintenance",
    "Notice",
    "NoticeKind",
    "NoticeRecord",
    "Noticed",
    "Role",
    "Round",
    "SunsetError",
    "Template",
    "TemplateDocument",
    "TemplateError",
    "UnknownTemplate",
    "UpgradeKind",
    "UpgradeOffer",
    "Version",
    "VersionError",
    "activation_entry",
    "automatic_target",
    "classify",
    "is_automatic",
    "load_document",
    "load_template",
    "notice_entry",
    "parse_document",
    "run_once",
]
