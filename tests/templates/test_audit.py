"""Activations in a real audit chain: appended durably, exported, verified offline, and told
in prose."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from corral.audit import RenderContext, parse_entry, render_timeline, verify_bundle
from corral.audit.chain import open_chain
from corral.audit.entries import TemplateActivated
from corral.core.clock import ManualClock
from corral.core.ids import SequentialIds
from corral.core.settings import load_settings
from corral.templates import Activations, ActivationStore, Catalog
from tests.templates._catalogs import REPO_CATALOG, T0

TENANT = "brightsmile"
DEMO = "dental-front-desk"


def test_activations_are_appended_and_verify_in_the_chain(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    catalog = Catalog.load(REPO_CATALOG)
    store = ActivationStore.from_url(f"sqlite:///{tmp_path / 'control.db'}")
    store.create_schema()
    with open_chain(load_settings(data_dir=tmp_path / "audit"), clock) as chain:
        service = Activations(catalog, store, ids=SequentialIds(), sequencer=chain.sequencer)
        done = service.activate(TENANT, DEMO, "1.0.0", clock.now())
        # Durable before activate returned: the chain already holds the entry.
        assert done.index == 0 and chain.store.log_size(TENANT) == 1
        clock.advance(timedelta(days=1))
        (patched,) = service.apply_automatic(clock.now())
        clock.advance(timedelta(days=1))
        chosen = service.opt_in(TENANT, done.activation.activation_id, "2.0.0", clock.now())
        assert (patched.index, chosen.index) == (1, 2)

        leaves = [e.leaf for e in chain.store.entries(TENANT, 0, 3)]
        entries = [parse_entry(leaf) for leaf in leaves]
        assert all(isinstance(e, TemplateActivated) for e in entries)
        assert [e.model_dump()["data"]["version"] for e in entries] == ["1.0.0", "1.0.1", "2.0.0"]
        assert [e.model_dump()["data"]["automatic"] for e in entries] == [False, True, False]
        assert [e.model_dump()["data"]["content_hash"] for e in entries] == [
            catalog.get(DEMO, v).content_hash for v in ("1.0.0", "1.0.1", "2.0.0")
        ]
        # The store keeps the very entry the chain holds.
        assert store.activations(TENANT)[0].entry.leaf() == leaves[2]
        assert [h.entry.leaf() for h in store.history(TENANT)] == leaves

        bundle = tmp_path / "bundle"
        chain.export(TENANT, bundle)
        report = verify_bundle(bundle, trusted_log_keys=[chain.log_key(TENANT)])
        assert report.entries == 3

        lines = render_timeline([(e, None) for e in entries], RenderContext())
        assert [line.sentence for line in lines] == [
            f"Operator owner switched on version 1.0.0 of the agent setup “{DEMO}” "
            "(activation act_0000000001).",
            f"The system automatically applied version 1.0.1 of the agent setup “{DEMO}” "
            "(activation act_0000000001).",
            f"Operator owner switched on version 2.0.0 of the agent setup “{DEMO}” "
            "(activation act_0000000001).",
        ]
    store.close()
