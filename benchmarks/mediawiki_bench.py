"""MediaWiki sync: connector throughput, and an incremental re-sync after editing 1% of pages vs a full one.

    python benchmarks/mediawiki_bench.py [--pages 3000] [--edit-fraction 0.01] [--no-pipeline]

1. a fresh real MediaWiki (tests/support/mediawiki.py: Debian's package, SQLite, ``php -S``) gets
   ``--pages`` pages through ``maintenance/importDump.php`` (an XML dump generated here: headings, lists,
   links, a list, a table, a template; about 700 bytes of wikitext, one chunk each);
2. the connector alone reads them all (``sync(None)``, then ``list_ids()``): pages/s and HTTP requests;
3. with ``--pipeline`` (default): the whole pipeline (connector → chunk → embed → write) indexes the
   wiki; then ``--edit-fraction`` of the pages are edited through the API and an incremental sync (from
   the saved cursor) runs; then as many other pages are edited and a full re-sync (``full=True``: every
   page read again, unchanged ones skipped by content hash) runs. Both re-syncs embed only the edited
   pages, so their difference is what the change feeds save.

HTTP requests are counted from the PHP server's log. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from xml.sax.saxutils import escape

from _common import REPO, database_url, git_revision, machine

sys.path.insert(0, str(REPO))

from citeline.connectors.mediawiki import MediaWikiConnector
from citeline.contracts.connector import Upsert
from citeline.domain import Access
from tests.support.mediawiki import BOT_SECRET, MediaWiki, start_mediawiki

WORDS = ("warehouse robot calibration invoice payable ledger shipment torque sensor firmware audit policy "
         "holiday parking canteen onboarding laptop vpn printer backup release incident escalation review "
         "budget forecast supplier contract renewal safety training badge").split()


def _page(number: int, rng: random.Random) -> tuple[str, str]:
    def sentence() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 16))).capitalize() + "."

    title = f"Topic {number:05d} {rng.choice(WORDS)}"
    links = " ".join(f"[[Topic {rng.randrange(1, number + 2):05d}|see also]]" for _ in range(2))
    text = (f"'''{title}''' {sentence()} {sentence()} {links}\n"
            + "\n".join(f"* {sentence()}" for _ in range(3))
            + "\n{| class=\"wikitable\"\n! Owner !! Status\n|-\n| " + rng.choice(WORDS) + " || "
            + rng.choice(WORDS) + "\n|}\n{{Note|" + sentence() + "}} " + sentence())
    return title, text


def _dump(path: Path, pages: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as out:
        out.write('<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.11/" version="0.11" xml:lang="en">\n')
        for number in range(1, pages + 1):
            title, text = _page(number, rng)
            out.write(f"<page><title>{escape(title)}</title><ns>0</ns><revision><timestamp>2026-01-01T00:00:00Z"
                      f"</timestamp><contributor><username>Admin</username></contributor><model>wikitext</model>"
                      f"<format>text/x-wiki</format><text xml:space=\"preserve\">{escape(text)}</text></revision>"
                      "</page>\n")
        out.write("</mediawiki>\n")


def _requests(wiki: MediaWiki) -> int:
    """Requests the PHP server has answered so far (one log line each)."""
    log = (wiki.root / "php-server.log").read_text(errors="replace")
    return sum(1 for line in log.splitlines() if "]: GET " in line or "]: POST " in line)


def _connector(wiki: MediaWiki) -> MediaWikiConnector:
    return MediaWikiConnector(MediaWikiConnector.Config(base_url=wiki.url, username=wiki.bot_user,
                                                        password=BOT_SECRET, request_budget=100_000),
                              Access(groups=("everyone",)))


def _edit(wiki: MediaWiki, titles: list[str], tag: str) -> float:
    t0 = time.perf_counter()
    with wiki.admin() as admin:
        for title in titles:
            admin.edit(title, f"Edited ({tag}): the {title} procedure now covers firmware rollback.\n\n"
                              "== Procedure ==\n* Stop the robot.\n* Roll the firmware back.")
    return time.perf_counter() - t0


def _timed(label: str, fn):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    value = fn()
    seconds = time.perf_counter() - t0
    print(f"{label}: {seconds:.2f} s", file=sys.stderr)
    return value, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--edit-fraction", type=float, default=0.01)
    parser.add_argument("--pipeline", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    load_before = os.getloadavg()
    result: dict[str, object] = {"benchmark": "mediawiki", "pages": args.pages}

    with tempfile.TemporaryDirectory(prefix="citeline-mw-bench-") as tmp:
        wiki, start_s = _timed("wiki install + start", lambda: start_mediawiki(Path(tmp) / "wiki"))
        try:
            dump = Path(tmp) / "dump.xml"
            _dump(dump, args.pages, args.seed)
            _, import_s = _timed("importDump", lambda: wiki.maintenance("importDump", "--no-updates", str(dump)))
            result.update(wiki_start_s=round(start_s, 2), import_s=round(import_s, 1),
                          import_pages_per_s=round(args.pages / import_s, 1))

            connector = _connector(wiki)
            before = _requests(wiki)
            changes, read_s = _timed("connector full read", lambda: list(connector.sync(None)))
            read_requests = _requests(wiki) - before
            titles = sorted(c.document.title for c in changes if isinstance(c, Upsert))
            before = _requests(wiki)
            listed, list_s = _timed("list_ids", connector.list_ids)
            result.update(
                connector_full_read_s=round(read_s, 2), connector_pages_per_s=round(len(titles) / read_s, 1),
                connector_full_read_requests=read_requests, list_ids_s=round(list_s, 2),
                list_ids_requests=_requests(wiki) - before, documents=len(titles), listed=len(listed))
            if args.pipeline:
                result.update(_pipeline(wiki, titles, args))
        finally:
            wiki.stop()
    result.update(load_average_before=[round(x, 2) for x in load_before],
                  load_average_after=[round(x, 2) for x in os.getloadavg()], machine=machine(),
                  revision=git_revision())
    print(json.dumps(result, indent=2))


def _pipeline(wiki: MediaWiki, titles: list[str], args: argparse.Namespace) -> dict[str, object]:
    from citeline.db import Database
    from citeline.ingest.chunking import StructuredChunker
    from citeline.ingest.embedding import SentenceTransformerEmbedder
    from citeline.ingest.sync import SyncRunner

    embedder = SentenceTransformerEmbedder()
    chunker = StructuredChunker(tokenize=embedder.tokenize)
    embedder.embed_documents(["warm-up"] * 8)
    db = Database(database_url(), namespace=f"bench_mw_{uuid.uuid4().hex[:8]}", embedding_dim=embedder.dimension)
    rng = random.Random(args.seed + 1)
    edits = max(1, round(len(titles) * args.edit_fraction))
    picked = rng.sample(titles, 2 * edits)
    try:
        runner = SyncRunner(db, embedder, chunker)
        first, first_s = _timed("pipeline first sync", lambda: runner.run("wiki", "mediawiki", _connector(wiki)))
        edit_s = _edit(wiki, picked[:edits], "incremental")
        time.sleep(1.1)  # the edits in an earlier second than the next sync (feed times have 1 s resolution)
        before = _requests(wiki)
        incremental, inc_s = _timed("incremental re-sync",
                                    lambda: runner.run("wiki", "mediawiki", _connector(wiki)))
        inc_requests = _requests(wiki) - before
        _edit(wiki, picked[edits:], "full")
        before = _requests(wiki)
        full, full_s = _timed("full re-sync", lambda: runner.run("wiki", "mediawiki", _connector(wiki), full=True))
        full_requests = _requests(wiki) - before
    finally:
        db.close()
        db.drop_namespace()
    assert first.added == len(titles), first
    assert incremental.updated >= edits and full.updated == edits and full.unchanged == len(titles) - edits
    return {
        "pipeline_first_sync_s": round(first_s, 1), "pipeline_first_sync_pages_per_s": round(len(titles) / first_s, 1),
        "first_sync_chunks": first.chunks, "edited_pages": edits,
        "edit_s_per_page_via_api": round(edit_s / edits, 3),
        "incremental_resync_s": round(inc_s, 2), "incremental_resync_requests": inc_requests,
        "incremental_updated": incremental.updated, "incremental_unchanged": incremental.unchanged,
        "full_resync_s": round(full_s, 2), "full_resync_requests": full_requests,
        "full_resync_updated": full.updated,
        "incremental_vs_full_resync_time": round(inc_s / full_s, 3),
        "incremental_vs_first_sync_time": round(inc_s / first_s, 4),
    }


if __name__ == "__main__":
    main()
