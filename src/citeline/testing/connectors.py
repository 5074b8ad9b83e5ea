"""A contract test suite every connector can run (built-in or third-party).

Inherit :class:`ConnectorContract` in a pytest test class and provide a ``connector`` fixture: a ready
connector whose source holds at least five items, at least one of them without access of its own (so
the default access shows), and enough items for at least one checkpoint before the final one (set a
small ``checkpoint_every``)::

    from citeline.testing.connectors import ConnectorContract

    class TestMyConnector(ConnectorContract):
        @pytest.fixture
        def connector(self, tmp_path):
            return MyConnector(MyConnector.Config(path=..., checkpoint_every=2), Access.private())

The suite rebuilds the connector with other default accesses through :meth:`ConnectorContract.rebuild`,
which calls ``type(connector)(connector.config, access)``; override it if your connector keeps its config
elsewhere. Nothing here imports pytest: the test methods only need pytest's fixture injection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from citeline.contracts.connector import Change, Checkpoint, Delete, Failure, Upsert
from citeline.domain import Access, Document

__all__ = ["ConnectorContract", "documents", "final_cursor", "item_ids", "run_sync"]

MIN_ITEMS = 5
_SENTINEL_GROUP = "contract-default-group"


def run_sync(connector: Any, cursor: Any = None) -> list[Change]:
    """Every change of one ``sync(cursor)``, in order."""
    return list(connector.sync(cursor))


def item_ids(changes: Iterable[Change]) -> list[str]:
    """The external ids of the Upserts, Deletes and Failures, in order (checkpoints left out)."""
    out = []
    for change in changes:
        if isinstance(change, Upsert):
            out.append(change.document.external_id)
        elif isinstance(change, Delete | Failure):
            out.append(change.external_id)
    return out


def documents(changes: Iterable[Change]) -> dict[str, Document]:
    """The documents of the Upserts by external id (a later Upsert of the same id wins)."""
    return {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}


def final_cursor(changes: list[Change]) -> dict[str, Any]:
    """The cursor of the last change, which must be a Checkpoint (every sync ends with one)."""
    last = changes[-1] if changes else None
    if not isinstance(last, Checkpoint):
        raise AssertionError(f"a sync must end with a Checkpoint, this one ended with {last!r}")
    return dict(last.cursor)


class ConnectorContract:
    """Checks the promises of :mod:`citeline.contracts.connector`. Needs a ``connector`` fixture."""

    def rebuild(self, connector: Any, default_access: Access) -> Any:
        """The same connector with another default access."""
        return type(connector)(connector.config, default_access)

    def test_validate_passes(self, connector: Any) -> None:
        connector.validate()

    def test_changes_are_contract_values(self, connector: Any) -> None:
        changes = run_sync(connector)
        for change in changes:
            assert isinstance(change, Upsert | Delete | Failure | Checkpoint), f"not a Change: {change!r}"
            if isinstance(change, Checkpoint):
                cursor = dict(change.cursor)
                assert json.loads(json.dumps(cursor)) == cursor, f"cursor is not plain JSON: {cursor!r}"
            if isinstance(change, Failure):
                assert change.external_id and change.reason.strip(), f"failure without id or reason: {change!r}"

    def test_fixture_is_big_enough(self, connector: Any) -> None:
        changes = run_sync(connector)
        ids = item_ids(changes)
        assert len(ids) >= MIN_ITEMS, f"the fixture needs at least {MIN_ITEMS} items, got {len(ids)}"
        assert any(isinstance(c, Upsert) for c in changes), "the fixture yields no documents"
        assert any(isinstance(c, Checkpoint) and c.cursor for c in changes[:-1]), (
            "the fixture needs a checkpoint before the final one: lower checkpoint_every"
        )

    def test_ids_are_stable_across_runs(self, connector: Any) -> None:
        first, second = item_ids(run_sync(connector)), item_ids(run_sync(connector))
        assert first == second, f"two syncs gave different ids: {first} != {second}"

    def test_ids_are_unique_within_a_run(self, connector: Any) -> None:
        ids = item_ids(run_sync(connector))
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        assert not repeated, f"ids yielded more than once in one sync: {repeated}"

    def test_upserts_are_complete_documents(self, connector: Any) -> None:
        for change in run_sync(connector):
            if isinstance(change, Upsert):
                doc = change.document
                assert isinstance(doc, Document), f"Upsert of a non-Document: {doc!r}"
                assert doc.external_id.strip(), f"empty external_id: {doc!r}"
                assert doc.title.strip(), f"{doc.external_id}: empty title"
                assert doc.text.strip(), f"{doc.external_id}: empty text"
                assert isinstance(doc.access, Access), f"{doc.external_id}: access is not an Access"

    def test_default_access_is_honoured(self, connector: Any) -> None:
        private = documents(run_sync(self.rebuild(connector, Access.private())))
        marked = documents(run_sync(self.rebuild(connector, Access(groups=(_SENTINEL_GROUP,)))))
        assert private.keys() == marked.keys(), "the default access changed which documents exist"
        took_default = [i for i, doc in marked.items() if doc.access == Access(groups=(_SENTINEL_GROUP,))]
        assert took_default, "no document took the default access: add an item without access of its own"
        for external_id in took_default:
            assert private[external_id].access == Access.private(), (
                f"{external_id}: access {private[external_id].access} although the default is private"
            )
        for external_id, doc in private.items():  # explicit access is the same whatever the default
            expected = marked[external_id].access
            expected = replace(expected, groups=tuple(g for g in expected.groups if g != _SENTINEL_GROUP))
            assert doc.access == expected, (
                f"{external_id}: with a private default its access is {doc.access}, expected {expected}"
            )

    def test_full_sync_matches_list_ids(self, connector: Any) -> None:
        synced = set(item_ids(c for c in run_sync(connector) if isinstance(c, Upsert | Failure)))
        listed = connector.list_ids()
        if listed is None:  # the source reports deletions itself: nothing to compare
            return
        listed = list(listed)
        assert len(listed) == len(set(listed)), "list_ids() repeats ids"
        assert synced == set(listed), (
            f"sync and list_ids disagree: only synced {sorted(synced - set(listed))}, "
            f"only listed {sorted(set(listed) - synced)}"
        )

    def test_last_change_is_a_checkpoint(self, connector: Any) -> None:
        changes = run_sync(connector)
        assert changes and isinstance(changes[-1], Checkpoint), "a sync must end with a Checkpoint"

    def test_resume_from_each_checkpoint(self, connector: Any) -> None:
        full = run_sync(connector)
        full_ids = item_ids(full)
        resumed = 0
        for index, change in enumerate(full[:-1]):
            if not isinstance(change, Checkpoint):
                continue
            before = item_ids(full[:index])
            after = item_ids(run_sync(connector, change.cursor))
            assert after == item_ids(full[index + 1 :]), f"resuming from {change.cursor} gave {after}"
            assert not set(before) & set(after), f"resuming from {change.cursor} repeats {set(before) & set(after)}"
            assert before + after == full_ids, f"before + after {change.cursor} is not the full run"
            resumed += 1
        assert resumed, "no checkpoint before the final one to resume from: lower checkpoint_every"

    def test_resume_yields_the_same_documents(self, connector: Any) -> None:
        full = run_sync(connector)
        checkpoints = [c for c in full[:-1] if isinstance(c, Checkpoint)]
        assert checkpoints, "no checkpoint before the final one: lower checkpoint_every"
        complete = documents(full)
        for doc_id, doc in documents(run_sync(connector, checkpoints[0].cursor)).items():
            assert complete[doc_id] == doc, f"{doc_id} differs when resumed from {checkpoints[0].cursor}"

    def test_empty_cursor_starts_from_the_beginning(self, connector: Any) -> None:
        assert item_ids(run_sync(connector, {})) == item_ids(run_sync(connector, None))
