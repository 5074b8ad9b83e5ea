"""The answer cache on a replay: the Acme QA set asked twice on the default install (issue 16, part 3).

    .venv/bin/python benchmarks/answer_cache_replay.py --out /tmp/cache-replay.json
    .venv/bin/python benchmarks/answer_cache_replay.py --backend extractive --out /tmp/cache-replay.json

Copies ``examples/acme`` into an empty temporary folder, starts the embedded PostgreSQL in its data folder,
syncs Acme and imports its principals, then opens one :class:`citeline.facade.Citeline` (the default
``[answer.cache]``: on) and asks every question of ``examples/acme/qa.jsonl`` as its principal, twice in a row
(pass 1 fills the cache, pass 2 replays). Retrieval runs on both passes (as the asker); a hit skips
generation and verification. Per pass: the wall time of each ``ask`` (p50, p95, sum), answers looked up in
the cache, hits; the latency saved is pass 1's p50 against pass 2's, over all questions and over the questions
answered from the cache. It also checks that every hit delivered exactly pass 1's text for the same asker.
The database part of retrieval (``retrieve_ms``) and the question's embedding (``embed_ms``: the embedder
keeps its own cache of question vectors, so pass 2 embeds nothing either) are reported per pass. Machine load
(``/proc/loadavg``) before and after each pass; versions and the date once.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from _common import REPO, git_revision, machine, use_this_tree

use_this_tree()

from citeline.contracts.generator import ChatMessage
from citeline.db.local import start_embedded
from citeline.domain import Principal
from citeline.evaluation import answers as answer_eval
from citeline.facade import Citeline
from citeline.settings import Settings

ACME = REPO / "examples" / "acme"


def loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def one_pass(cl: Citeline, items: list[Any]) -> dict[str, Any]:
    load = loadavg()
    rows = []
    for item in items:
        principal = cl.principals.get(item.user)
        history = tuple(ChatMessage(t.role, t.content) for t in item.conversation)
        t0 = time.perf_counter()
        a = cl.assistant.ask(item.question, principal, history=history)
        rows.append({"id": item.id, "ms": (time.perf_counter() - t0) * 1000, "cache": a.cache, "text": a.text,
                     "refused": a.refused, "retrieve_ms": a.latency_ms.get("retrieve_ms", 0.0),
                     "embed_ms": a.latency_ms.get("embed_ms", 0.0)})
    ms = [r["ms"] for r in rows]
    return {"rows": rows, "loadavg_before": load, "loadavg_after": loadavg(),
            "looked_up": sum(r["cache"] != "off" for r in rows), "hits": sum(r["cache"] == "hit" for r in rows),
            "retrieve_p50_ms": pct([r["retrieve_ms"] for r in rows], 0.5),
            "embed_p50_ms": pct([r["embed_ms"] for r in rows], 0.5), "p50_ms": pct(ms, 0.5), "p95_ms": pct(ms, 0.95), "total_s": round(sum(ms) / 1000, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="embedded", help="generation.backend (default: embedded, SmolLM2)")
    ap.add_argument("--qa", type=Path, default=ACME / "qa.jsonl")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    items = answer_eval.load_qa(args.qa)
    tmp = Path(tempfile.mkdtemp(prefix="citeline-cache-replay-"))
    root = tmp / "acme"
    shutil.copytree(ACME, root, ignore=shutil.ignore_patterns(".citeline"))
    cfg = root / "citeline.toml"
    result: dict[str, Any] = {
        "benchmark": "answer_cache_replay", "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": git_revision(), "machine": machine(), "backend": args.backend, "qa": args.qa.name,
        "questions": len(items), "versions": {p: metadata.version(p) for p in ("torch", "psycopg")},
    }
    try:
        url = start_embedded(Settings.load(cfg).home)
        settings = Settings.load(cfg, database_url=url, generation={"backend": args.backend})
        with Citeline(settings) as cl:
            cl.sync()
            cl.admin.import_principals(root / "principals.toml", actor="bench:answer-cache")
            for user, groups in {i.user: i.groups for i in items if i.groups is not None}.items():
                cl.admin.add_principal(Principal(user, groups), actor="bench:answer-cache")  # ad-hoc principals
            cl.ask(items[0].question, user=items[0].user)  # warm the model and the embedder, then start cold
            assert cl.answer_cache is not None, "answer.cache.enabled is false in this configuration"
            cl.answer_cache.clear()
            first, second = one_pass(cl, items), one_pass(cl, items)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    by_id = {r["id"]: r for r in first["rows"]}
    hit_ids = [r["id"] for r in second["rows"] if r["cache"] == "hit"]
    mismatched = [i for i in hit_ids if by_id[i]["text"] != next(r["text"] for r in second["rows"] if r["id"] == i)]
    hit_first = [by_id[i]["ms"] for i in hit_ids]
    hit_second = [r["ms"] for r in second["rows"] if r["cache"] == "hit"]
    result.update({
        "pass1": {k: v for k, v in first.items() if k != "rows"},
        "pass2": {k: v for k, v in second.items() if k != "rows"},
        "hit_rate_pass2": round(second["hits"] / max(1, second["looked_up"]), 3),
        "refused_up_front": len(items) - second["looked_up"],
        "hits_p50_ms": {"pass1": pct(hit_first, 0.5), "pass2": pct(hit_second, 0.5)},
        "hits_with_other_text": mismatched,
        "per_question": [{"id": r["id"], "pass1_ms": round(r["ms"], 1), "pass2_ms": round(s["ms"], 1),
                          "pass2_cache": s["cache"], "refused": r["refused"]}
                         for r, s in zip(first["rows"], second["rows"], strict=True)],
    })
    args.out.write_text(json.dumps(result, indent=2))
    p1, p2 = result["pass1"], result["pass2"]
    print("| pass | answers looked up | hits | p50 ms | p95 ms | total s | retrieve p50 ms | embed p50 ms | load before → after |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, p in (("1 (fills)", p1), ("2 (replay)", p2)):
        print(f"| {name} | {p['looked_up']} | {p['hits']} | {p['p50_ms']} | {p['p95_ms']} | {p['total_s']} | "
              f"{p['retrieve_p50_ms']} | {p['embed_p50_ms']} | {p['loadavg_before']} → {p['loadavg_after']} |")
    print(f"hit rate {result['hit_rate_pass2']:.1%}; p50 over the hits {result['hits_p50_ms']}; "
          f"p50 saved {round((p1['p50_ms'] or 0) - (p2['p50_ms'] or 0), 1)} ms; "
          f"hits with another text: {len(mismatched)}; mean per question "
          f"{statistics.fmean(r['ms'] for r in first['rows']):.0f} → {statistics.fmean(r['ms'] for r in second['rows']):.0f} ms",
          file=sys.stderr)


if __name__ == "__main__":
    main()
