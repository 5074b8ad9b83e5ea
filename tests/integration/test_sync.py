"""The sync runner against the real embedded PostgreSQL and the real embedder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from citeline.access.principals import PrincipalStore
from citeline.domain import Access, Principal, SearchMode
from citeline.errors import SyncLockedError
from citeline.ingest.sync import SyncRunner
from citeline.retrieval.search import Retriever
from tests.support.connectors import ListConnector, doc

pytestmark = pytest.mark.integration

LONG = " ".join(f"Sentence {i} explains the warehouse robot calibration procedure in detail." for i in range(60))


def _docs(n: int) -> list:
    return [doc(f"d{i}", f"# Page {i}\n\nTopic number {i} covers subject {i * 7}.") for i in range(n)]


def _count(db, sql: str, params: tuple = ()) -> int:
    with db.writer() as conn:
        return conn.execute(sql, params).fetchone()[0]


def test_unchanged_documents_are_skipped_by_hash(db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker, batch_size=4)
    first = runner.run("wiki", "list", ListConnector(_docs(6)))
    assert (first.added, first.unchanged, first.chunks) == (6, 0, 6)
    second = runner.run("wiki", "list", ListConnector(_docs(6)))
    assert (second.added, second.updated, second.unchanged, second.chunks) == (0, 0, 6, 0)
    changed = _docs(6)
    changed[2] = doc("d2", "# Page 2\n\nRewritten content about invoices.")
    third = runner.run("wiki", "list", ListConnector(changed))
    assert (third.updated, third.unchanged, third.chunks) == (1, 5, 1)
    assert _count(db, "SELECT count(*) FROM chunks WHERE text LIKE %s", ("%invoices%",)) == 1


def test_a_text_repeated_in_a_batch_is_embedded_once(db, embedder, chunker):
    class Recording:
        """The real embedder, recording the texts it is asked to embed."""

        def __init__(self) -> None:
            self.seen: list[str] = []

        def __getattr__(self, name: str):
            return getattr(embedder, name)

        def embed_documents(self, texts):
            self.seen.extend(texts)
            return embedder.embed_documents(texts)

    recording = Recording()
    boiler = "# Support\n\nCall the help desk on extension 4242 for anything urgent."
    docs = [doc("a", boiler, title="Help"), doc("b", boiler, title="Help"),
            doc("c", "# Billing\n\nInvoices go out on the first.", title="Billing")]
    report = SyncRunner(db, recording, chunker).run("wiki", "list", ListConnector(docs))
    assert report.chunks == 3 and len(recording.seen) == 2 == len(set(recording.seen))
    with db.writer() as conn:
        rows = conn.execute("SELECT d.external_id, c.embedding::text FROM chunks c JOIN documents d ON d.id = "
                            "c.document_id ORDER BY d.external_id").fetchall()
    vectors = {ext: vec for ext, vec in rows}
    assert vectors["a"] == vectors["b"] != vectors["c"]  # each copy stored with the one vector
    hits = Retriever(db, embedder).search("help desk extension", user=None, mode=SearchMode.DENSE).hits
    assert {h.external_id for h in hits[:2]} == {"a", "b"}


def test_access_change_alone_updates_acl_without_reembedding(db, embedder, chunker):
    PrincipalStore(db).put(Principal("bob", ("sales",)))
    runner = SyncRunner(db, embedder, chunker)
    docs = [doc("plan", "# Plan\n\nThe sales plan for next year.", access=Access(groups=("sales",)))]
    runner.run("wiki", "list", ListConnector(docs))
    retriever = Retriever(db, embedder)
    assert [h.external_id for h in retriever.search("sales plan", user="bob").hits] == ["plan"]
    docs = [doc("plan", "# Plan\n\nThe sales plan for next year.", access=Access(groups=("board",)))]
    report = runner.run("wiki", "list", ListConnector(docs))
    assert (report.updated, report.chunks) == (1, 0)
    assert retriever.search("sales plan", user="bob").hits == ()


def test_documents_missing_from_a_complete_listing_are_pruned(db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker)
    runner.run("wiki", "list", ListConnector(_docs(5)))
    report = runner.run("wiki", "list", ListConnector(_docs(3)))
    assert report.deleted == 2
    assert _count(db, "SELECT count(*) FROM documents") == 3
    assert _count(db, "SELECT count(*) FROM chunks") == 3


def test_no_deletions_when_the_listing_is_incomplete(db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker)
    runner.run("wiki", "list", ListConnector(_docs(5)))
    report = runner.run("wiki", "list", ListConnector(_docs(3), listing_fails=True))
    assert report.deleted == 0 and report.failed == 1
    assert "deletions skipped" in report.failures[0][1]
    assert _count(db, "SELECT count(*) FROM documents") == 5


def test_deletes_reported_by_the_source_are_applied(db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker)
    runner.run("wiki", "list", ListConnector(_docs(4), listing=False))
    report = runner.run("wiki", "list", ListConnector([], deleted=["d1", "d3"], listing=False))
    assert report.deleted == 2
    with db.writer() as conn:
        assert sorted(r[0] for r in conn.execute("SELECT external_id FROM documents")) == ["d0", "d2"]


def test_a_failed_item_keeps_its_previous_version(db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker)
    runner.run("wiki", "list", ListConnector(_docs(3)))
    report = runner.run("wiki", "list", ListConnector(_docs(3), failures={"d1": "front matter is not YAML"}))
    assert report.failed == 1 and report.deleted == 0
    assert _count(db, "SELECT count(*) FROM chunks c JOIN documents d ON d.id = c.document_id"
                      " WHERE d.external_id = 'd1'") == 1
    assert _count(db, "SELECT count(*) FROM sync_failures WHERE external_id = 'd1'"
                      " AND reason = 'front matter is not YAML'") == 1


def test_sources_are_isolated_from_each_other(db, embedder, chunker):
    runner = SyncRunner(db, embedder, chunker)
    runner.run("a", "list", ListConnector(_docs(3)))
    runner.run("b", "list", ListConnector(_docs(2)))
    runner.run("b", "list", ListConnector(_docs(1)))  # prunes b only
    assert _count(db, "SELECT count(*) FROM documents d JOIN sources s ON s.id = d.source_id"
                      " WHERE s.name = 'a'") == 3


def test_replacement_is_atomic_for_concurrent_readers(db, embedder, chunker):
    """A reader never sees a re-indexed document absent or with old and new chunks together."""
    runner = SyncRunner(db, embedder, chunker)
    short = [doc("x", "# X\n\nShort version.")]
    long = [doc("x", f"# X\n\n{LONG}")]
    runner.run("wiki", "list", ListConnector(long))
    n_long = _count(db, "SELECT count(*) FROM chunks")
    assert n_long > 1
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            with db.reader(None) as conn:
                seen.add(conn.execute("SELECT count(*) FROM chunks").fetchone()[0])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(6):
            runner.run("wiki", "list", ListConnector(short if i % 2 == 0 else long))
    finally:
        stop.set()
        reader.join()
    assert seen <= {1, n_long}, f"reader saw chunk counts {sorted(seen)}"
    assert len(seen) == 2  # the reader really observed both versions


class _Blocking(ListConnector):
    def __init__(self, docs, started: threading.Event, release: threading.Event) -> None:
        super().__init__(docs)
        self.started, self.release = started, release

    def sync(self, cursor):
        for i, change in enumerate(super().sync(cursor)):
            if i == 1:
                self.started.set()
                assert self.release.wait(30)
            yield change


def test_one_sync_per_source_at_a_time(db, embedder, chunker):
    started, release = threading.Event(), threading.Event()
    first = SyncRunner(db, embedder, chunker)
    errors: list[BaseException] = []
    thread = threading.Thread(
        target=lambda: _capture(errors, first.run, "wiki", "list", _Blocking(_docs(4), started, release)))
    thread.start()
    try:
        assert started.wait(30)
        second = SyncRunner(db, embedder, chunker)
        with pytest.raises(SyncLockedError, match="'wiki' is being synced"):
            second.run("wiki", "list", ListConnector(_docs(2)))
        other = second.run("tickets", "list", ListConnector(_docs(2)))  # another source is not blocked
        assert other.added == 2
    finally:
        release.set()
        thread.join()
    assert not errors
    assert SyncRunner(db, embedder, chunker).run("wiki", "list", ListConnector(_docs(4))).unchanged == 4


def _capture(errors: list, fn, *args) -> None:
    try:
        fn(*args)
    except BaseException as exc:
        errors.append(exc)


@pytest.mark.slow
def test_killed_sync_resumes_from_its_checkpoint(db, embedder, chunker, pg_url):
    """SIGKILL a sync process mid-way; the rerun resumes, and nothing is missing or doubled."""
    total = 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.slow_sync", pg_url, db.namespace, str(total)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"worker ended early: {proc.stdout.read().decode()}")
            try:
                if _count(db, "SELECT coalesce(max(added), 0) FROM sync_runs") >= 12:
                    break
            except Exception:
                pass
            time.sleep(0.05)
        else:
            pytest.fail("worker made no progress")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    committed = _count(db, "SELECT count(*) FROM documents")
    assert 12 <= committed < total
    from tests.support.slow_sync import documents

    connector = ListConnector(documents(total), every=5)
    report = SyncRunner(db, embedder, chunker, batch_size=5).run("slow", "list", connector)
    assert report.resumed_from is not None and report.resumed_from["pos"] >= 10
    assert connector.yielded[0] != "s0"  # resumed, not restarted
    assert _count(db, "SELECT count(*) FROM documents") == total
    assert _count(db, "SELECT count(*) FROM chunks") == total
    assert _count(db, "SELECT count(DISTINCT document_id) FROM chunks") == total
    with db.writer() as conn:
        statuses = [r[0] for r in conn.execute("SELECT status FROM sync_runs ORDER BY id")]
    assert statuses == ["interrupted", "succeeded"]
    hits = Retriever(db, embedder).search("item 39 of the slow corpus", user=None, k=3, mode=SearchMode.LEXICAL)
    assert hits.hits and hits.hits[0].external_id == "s39"
