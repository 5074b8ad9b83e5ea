"""Retrieval levers on SciFact (train): what each change to lexical, dense and fused ranking gives.

Reads the evaluation namespace that ``citeline eval retrieval`` built (same corpus file, same data
directory: ``CITELINE_HOME``), dumps every chunk's embedding and lexemes once (cached in ``--cache``), and
replays the ranking offline in numpy with exactly the SQL's formulas (BM25 over ``title\\nchunk`` tsvectors,
``dl`` = distinct lexemes, IDF ``ln(1 + (N - df + .5) / (df + .5))``; cosine for dense; chunk hits collapsed
to documents). Prints one JSON object: nDCG@10 / Recall@100 / MRR@10 per lever, and for the choices made
by cross-fitting, the setting chosen on each half and the score on the other.

Parameters are fixed a priori (literature defaults) or chosen by 2-fold cross-fitting: the queries are split
into halves by ``sha256(query id)``; a parameter is chosen on half A and scored on half B and vice versa,
and the reported figure is the mean over all queries of those out-of-half scores.

    python benchmarks/retrieval_levers.py [--home DIR] [--cache FILE]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SCIFACT, git_revision

Ranker = Callable[[int], np.ndarray]  # query index -> score per chunk (-inf: not a candidate)


# ---------------------------------------------------------------------------------------------- dump
def dump(home: Path, cache: Path) -> dict[str, Any]:
    """The chunks (``cache``) and the questions (``cache`` with ``.queries.npz``), read once and kept."""
    if cache.exists():
        with np.load(cache, allow_pickle=True) as z:
            return {k: z[k] for k in z.files}
    os.environ.setdefault("CITELINE_HOME", str(home))
    qcache = cache.with_suffix(".queries.npz")
    if not qcache.exists():
        qcache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(qcache, **dump_queries())
    with np.load(qcache, allow_pickle=True) as z:
        out = {k: z[k] for k in z.files}
    out.update(dump_chunks())
    np.savez(cache, **out)
    return out


def _open(engine: str) -> Any:
    from citeline.evaluation.retrieval import corpus_namespace
    from citeline.facade import Citeline
    from citeline.settings import Settings

    settings = Settings.load(None, embedding={"options": {"query_encoder": engine}})
    return Citeline(settings, namespace=corpus_namespace(SCIFACT / "corpus.jsonl"))


def dump_queries() -> dict[str, Any]:
    """Each judged question's vector (float and onnx-int8 question encoder) and lexemes."""
    from citeline.evaluation.retrieval import load_qrels, load_queries

    qids = sorted(load_qrels(SCIFACT / "qrels" / "train.tsv"))
    texts = load_queries(SCIFACT / "queries.train.jsonl")
    out: dict[str, Any] = {"qids": np.array(qids)}
    for engine, key in (("float", "qvec_float"), ("onnx-int8", "qvec_int8")):
        cl = _open(engine)
        out[key] = np.stack([cl.embedder.embed_query(texts[q]) for q in qids]).astype(np.float32)
        if engine == "float":
            with cl.db.writer() as conn:
                lex = [conn.execute("SELECT tsvector_to_array(to_tsvector('english', %s))", (texts[q],)).fetchone()[0]
                       for q in qids]
            out["qlex"] = np.array([np.array(q or [], dtype=object) for q in lex] + [None], dtype=object)[:-1]
        cl.close()
    return out


def dump_chunks() -> dict[str, Any]:
    """Every chunk's document, stored embedding, length (distinct lexemes) and term frequencies."""
    cl = _open("float")
    with cl.db.writer() as conn:
        rows = conn.execute(
            "SELECT c.id, d.external_id, c.ordinal, c.embedding::text, length(c.tsv),"
            " (SELECT array_agg(u.lexeme ORDER BY u.lexeme) FROM unnest(c.tsv) u),"
            " (SELECT array_agg(coalesce(cardinality(u.positions), 1) ORDER BY u.lexeme) FROM unnest(c.tsv) u)"
            " FROM chunks c JOIN documents d ON d.id = c.document_id ORDER BY c.id").fetchall()
    cl.close()
    vocab: dict[str, int] = {}
    ind, ptr, tf = [], [0], []
    for r in rows:
        for lex, n in zip(r[5] or [], r[6] or [], strict=True):
            ind.append(vocab.setdefault(lex, len(vocab)))
            tf.append(n)
        ptr.append(len(ind))
    return {"chunk_id": np.array([r[0] for r in rows]), "doc": np.array([r[1] for r in rows]),
            "ordinal": np.array([r[2] for r in rows]),
            "emb": np.array([json.loads(r[3]) for r in rows], dtype=np.float32),
            "dl": np.array([r[4] for r in rows], dtype=np.float64), "tf_ind": np.array(ind), "tf_ptr": np.array(ptr),
            "tf_val": np.array(tf, dtype=np.float64), "vocab": np.array(sorted(vocab, key=vocab.__getitem__))}


# ------------------------------------------------------------------------------------------ scoring
class Lab:
    """The dumped corpus and queries, and the rankers built on them."""

    def __init__(self, d: dict[str, Any]) -> None:
        self.doc = d["doc"]
        self.docs, self.doc_of = np.unique(self.doc, return_inverse=True)
        self.emb = d["emb"]
        self.dl = d["dl"]
        self.tf = sparse.csr_matrix((d["tf_val"], d["tf_ind"], d["tf_ptr"]), shape=(len(self.dl), len(d["vocab"])))
        self.tfc = self.tf.tocsc()
        self.vocab = {w: i for i, w in enumerate(d["vocab"])}
        self.df = np.diff(self.tfc.indptr).astype(np.float64)
        self.n = float(len(self.dl))
        self.qids = [str(q) for q in d["qids"]]
        self.qvec = {"float": d["qvec_float"], "int8": d["qvec_int8"]}
        self.qterms = [[self.vocab[t] for t in q if t in self.vocab] for q in d["qlex"]]
        qrels: dict[str, dict[str, int]] = {}
        import csv
        with (SCIFACT / "qrels" / "train.tsv").open() as f:
            for row in list(csv.reader(f, delimiter="\t"))[1:]:
                if int(row[2]) > 0:
                    qrels.setdefault(row[0], {})[row[1]] = int(row[2])
        self.qrels = [qrels[q] for q in self.qids]
        self.half = np.array([hashlib.sha256(q.encode()).digest()[0] & 1 for q in self.qids])
        self.dense_cache: dict[str, np.ndarray] = {}

    # -- single methods (every chunk scored; candidates cut later) --
    def bm25(self, terms: Sequence[int], k1: float = 1.2, b: float = 0.75,
             weights: Sequence[float] | None = None) -> np.ndarray:
        score = np.zeros(len(self.dl))
        avgdl = self.dl.mean()
        norm = k1 * (1 - b + b * self.dl / avgdl)
        for j, t in enumerate(terms):
            lo, hi = self.tfc.indptr[t], self.tfc.indptr[t + 1]
            rows, tf = self.tfc.indices[lo:hi], self.tfc.data[lo:hi]
            idf = math.log(1 + (self.n - self.df[t] + 0.5) / (self.df[t] + 0.5))
            w = 1.0 if weights is None else weights[j]
            score[rows] += w * idf * tf * (k1 + 1) / (tf + norm[rows])
        return score

    def dense(self, engine: str = "float") -> np.ndarray:
        if engine not in self.dense_cache:
            self.dense_cache[engine] = self.qvec[engine] @ self.emb.T  # cosine (both normalized)
        return self.dense_cache[engine]

    # -- evaluation --
    def collapse(self, chunk_scores: np.ndarray, second: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Document scores: best chunk (+ ``second`` x the next best), only documents with a candidate."""
        ok = np.isfinite(chunk_scores)
        idx = np.nonzero(ok)[0]
        s, d = chunk_scores[idx], self.doc_of[idx]
        order = np.lexsort((-s, d))
        s, d = s[order], d[order]
        first = np.r_[True, d[1:] != d[:-1]]
        best = s[first]
        docs = d[first]
        if second:
            nxt = np.zeros(len(best))
            pos = np.nonzero(first)[0]
            has = (pos + 1 < len(d)) & (np.r_[d[1:], -1][pos] == docs)
            nxt[has] = s[pos[has] + 1]
            best = best + second * nxt
        return docs, best

    def metrics(self, i: int, chunk_scores: np.ndarray, second: float = 0.0) -> np.ndarray:
        docs, s = self.collapse(chunk_scores, second)
        order = np.lexsort((docs, -s))[:100]
        ranking = [self.docs[x] for x in docs[order]]
        rel = self.qrels[i]
        dcg = sum((2 ** rel.get(d, 0) - 1) / math.log2(r + 2) for r, d in enumerate(ranking[:10]))
        ideal = sum((2 ** g - 1) / math.log2(r + 2) for r, g in enumerate(sorted(rel.values(), reverse=True)[:10]))
        recall = len({d for d in ranking if d in rel}) / len(rel)
        mrr = next((1 / (r + 1) for r, d in enumerate(ranking[:10]) if d in rel), 0.0)
        return np.array([dcg / ideal, recall, mrr])

    def per_query(self, ranker: Ranker, second: float = 0.0) -> np.ndarray:
        return np.stack([self.metrics(i, ranker(i), second) for i in range(len(self.qids))])


def top(scores: np.ndarray, n: int) -> np.ndarray:
    """Scores with everything outside the top ``n`` (and zero-score lexical misses) set to -inf."""
    out = np.full(len(scores), -np.inf)
    keep = np.argpartition(-scores, min(n, len(scores) - 1))[:n]
    out[keep] = scores[keep]
    return out


def summary(m: np.ndarray) -> dict[str, float]:
    return {"ndcg@10": round(float(m[:, 0].mean()), 4), "recall@100": round(float(m[:, 1].mean()), 4),
            "mrr@10": round(float(m[:, 2].mean()), 4)}


def crossfit(lab: Lab, grid: dict[str, Callable[[], np.ndarray]]) -> dict[str, Any]:
    """Choose a setting on each half by nDCG@10, score it on the other half; ``grid``: name -> per-query metrics."""
    results = {name: f() for name, f in grid.items()}
    chosen, out = {}, np.zeros_like(next(iter(results.values())))
    for h in (0, 1):
        pick = max(results, key=lambda name: results[name][lab.half == h, 0].mean())
        chosen[f"chosen_on_half_{h}"] = pick
        out[lab.half != h] = results[pick][lab.half != h]
    return {**chosen, **summary(out), "grid": {n: round(float(r[:, 0].mean()), 4) for n, r in results.items()}}


# ---------------------------------------------------------------------------------------- the levers
def rrf(a: np.ndarray, b: np.ndarray, k: int = 60) -> np.ndarray:
    out = np.full(len(a), -np.inf)
    for s in (a, b):
        idx = np.nonzero(np.isfinite(s))[0]
        ranks = np.empty(len(idx))
        ranks[np.lexsort((idx, -s[idx]))] = np.arange(1, len(idx) + 1)
        out[idx] = np.where(np.isfinite(out[idx]), out[idx], 0.0) + 1.0 / (k + ranks)
    return out


def convex(dense: np.ndarray, lexical: np.ndarray, union: np.ndarray, alpha: float,
           scale: str = "minmax") -> np.ndarray:
    """alpha x dense + (1 - alpha) x lexical over the union, each scaled over it: min-max, z-score, or
    "tmm" (Bruch et al.'s theoretical minimum: cosine from -1, BM25 from 0, to the observed maximum)."""
    out = np.full(len(dense), -np.inf)
    d, x = dense[union], lexical[union]
    if scale == "zscore":
        dn, xn = (d - d.mean()) / max(d.std(), 1e-9), (x - x.mean()) / max(x.std(), 1e-9)
    elif scale == "tmm":
        dn, xn = (d + 1) / max(d.max() + 1, 1e-9), x / max(x.max(), 1e-9)
    else:
        dn = (d - d.min()) / max(d.max() - d.min(), 1e-9)
        xn = (x - x.min()) / max(x.max() - x.min(), 1e-9)
    out[union] = alpha * dn + (1 - alpha) * xn
    return out


def rm3_terms(lab: Lab, i: int, first: np.ndarray, fb_docs: int = 10, fb_terms: int = 10,
              orig: float = 0.5) -> tuple[list[int], list[float]]:
    """RM3 (Anserini's defaults): expansion terms from the top ``fb_docs`` chunks, weighted by their scores."""
    q = lab.qterms[i]
    best = np.argsort(-first)[:fb_docs]
    best = best[first[best] > 0]
    if not len(best) or not q:
        return q, [1.0] * len(q)
    w = first[best] / first[best].sum()
    rows = lab.tf[best]
    lens = np.asarray(rows.sum(axis=1)).ravel()
    model = np.asarray((sparse.diags(w / lens) @ rows).sum(axis=0)).ravel()
    cand = np.argsort(-model)[:fb_terms]
    fb = {int(t): float(model[t]) for t in cand if model[t] > 0}
    total = sum(fb.values())
    weights = {t: orig / len(q) for t in q}
    for t, v in fb.items():
        weights[t] = weights.get(t, 0.0) + (1 - orig) * v / total
    terms = list(weights)
    return terms, [weights[t] for t in terms]


def run(lab: Lab) -> dict[str, Any]:
    n = 300
    res: dict[str, Any] = {}
    nq = len(lab.qids)
    dense_f, dense_8 = lab.dense("float"), lab.dense("int8")
    t0 = time.perf_counter()
    bm = {(k1, b): np.stack([lab.bm25(lab.qterms[i], k1, b) for i in range(nq)])
          for k1, b in ((1.2, 0.75), (0.9, 0.4))}
    rm3 = {}
    for key in bm:
        rm3[key] = np.stack([lab.bm25(terms, key[0], key[1], weights)
                              for terms, weights in (rm3_terms(lab, i, bm[key][i]) for i in range(nq))])
    res["bm25_seconds"] = round(time.perf_counter() - t0, 1)

    def lex(s: np.ndarray) -> np.ndarray:
        return np.where(s > 0, top(s, n), -np.inf)

    def m(f: Ranker, second: float = 0.0) -> np.ndarray:
        return lab.per_query(f, second)

    cache: dict[str, np.ndarray] = {}

    def memo(name: str, f: Callable[[], np.ndarray]) -> np.ndarray:
        if name not in cache:
            cache[name] = f()
        return cache[name]

    res["dense float (exact cosine)"] = summary(memo("dense", lambda: m(lambda i: top(dense_f[i], n))))
    res["dense onnx-int8 question (exact cosine)"] = summary(m(lambda i: top(dense_8[i], n)))
    res["dense float, 20 candidates"] = summary(m(lambda i: top(dense_f[i], 20)))
    for key, tag in (((1.2, 0.75), "k1=1.2 b=0.75"), ((0.9, 0.4), "k1=0.9 b=0.4")):
        res[f"lexical BM25 {tag}"] = summary(m(lambda i, s=bm[key]: lex(s[i])))
        res[f"lexical BM25 {tag} + RM3 10/10/0.5"] = summary(m(lambda i, s=rm3[key]: lex(s[i])))
        res[f"hybrid RRF60, BM25 {tag}"] = summary(m(lambda i, s=bm[key]: rrf(top(dense_f[i], n), lex(s[i]))))
        res[f"hybrid RRF60, BM25 {tag} + RM3"] = summary(
            m(lambda i, s=rm3[key]: rrf(top(dense_f[i], n), lex(s[i]))))
    # convex fusion over the union, both scores for every candidate
    for key, tag in (((1.2, 0.75), "k1=1.2 b=0.75"), ((0.9, 0.4), "k1=0.9 b=0.4")):
        for lexname, lexs in ((f"BM25 {tag}", bm[key]), (f"BM25 {tag} + RM3", rm3[key])):
            def fused(i: int, a: float, scale: str = "minmax", lexs: np.ndarray = lexs) -> np.ndarray:
                union = np.nonzero(np.isfinite(top(dense_f[i], n)) | np.isfinite(lex(lexs[i])))[0]
                return convex(dense_f[i], lexs[i], union, a, scale)
            for scale in ("minmax", "zscore", "tmm"):
                grid = {f"alpha={a:.1f}": (lambda a=a, sc=scale: m(lambda i: fused(i, a, sc)))
                        for a in np.arange(0.2, 0.95, 0.1)}
                res[f"hybrid convex ({scale} over the union), {lexname}; alpha cross-fitted"] = crossfit(lab, grid)
            res[f"hybrid convex, {lexname}; alpha=0.5 a priori"] = summary(m(lambda i: fused(i, 0.5)))
    res.update(second_stage(lab, bm, rm3, dense_f, m, lex))
    return res


def second_stage(lab: Lab, bm: dict, rm3: dict, dense_f: np.ndarray, m: Callable[..., np.ndarray],
                 lex: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
    """On top of the shipped fusion (tmm scaling, BM25 k1=0.9 b=0.4): document aggregation, vector
    pseudo-relevance feedback, RM3, fewer candidates, the int8 question encoder; each cross-fitted."""
    res: dict[str, Any] = {}
    key = (0.9, 0.4)
    alphas = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9)

    def fused(i: int, a: float, n: int = 300, dense: np.ndarray = dense_f, lexs: np.ndarray = bm[key]) -> np.ndarray:
        lexical = np.where(lexs[i] > 0, top(lexs[i], n), -np.inf)
        union = np.nonzero(np.isfinite(top(dense[i], n)) | np.isfinite(lexical))[0]
        return convex(dense[i], lexs[i], union, a, "tmm")
    res["DEFAULT: hybrid convex (tmm), BM25 k1=0.9 b=0.4, alpha=0.8, float question"] = summary(
        m(lambda i: fused(i, 0.8)))
    res["DEFAULT with the onnx-int8 question encoder"] = summary(
        m(lambda i: fused(i, 0.8, 300, lab.dense("int8"))))
    res["hybrid convex (tmm), BM25 k1=0.9 b=0.4; alpha cross-fitted on a finer grid"] = crossfit(
        lab, {f"alpha={a:.2f}": (lambda a=a: m(lambda i: fused(i, a))) for a in alphas})
    grid = {f"alpha={a:.2f} second={sc:.2f}": (lambda a=a, sc=sc: m(lambda i: fused(i, a), sc))
            for a in (0.7, 0.8, 0.9) for sc in (0.0, 0.1, 0.2)}
    res["hybrid convex (tmm) + next chunk of the document; alpha and weight cross-fitted"] = crossfit(lab, grid)
    res["hybrid convex (tmm), 20 candidates per method; alpha cross-fitted"] = crossfit(
        lab, {f"alpha={a:.2f}": (lambda a=a: m(lambda i: fused(i, a, 20))) for a in alphas})
    res["hybrid convex (tmm), 20 candidates per method, alpha=0.8"] = summary(m(lambda i: fused(i, 0.8, 20)))
    res["hybrid RRF60, BM25 k1=0.9 b=0.4, 20 candidates per method"] = summary(
        m(lambda i: rrf(top(dense_f[i], 20), np.where(bm[key][i] > 0, top(bm[key][i], 20), -np.inf))))
    # Rocchio on the question vector: q + beta * mean of the top-3 dense chunks, renormalized
    prf = {0.0: dense_f}
    for beta in (0.25, 0.5, 1.0):
        best = np.argsort(-dense_f, axis=1)[:, :3]
        q = lab.qvec["float"] + beta * lab.emb[best].mean(axis=1)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        prf[beta] = q @ lab.emb.T
    res["dense + vector PRF (top 3); beta cross-fitted"] = crossfit(
        lab, {f"beta={b}": (lambda b=b: m(lambda i: top(prf[b][i], 300))) for b in prf})
    grid = {f"beta={b} alpha={a:.1f}": (lambda b=b, a=a: m(lambda i: fused(i, a, 300, prf[b])))
            for b in prf for a in (0.7, 0.8, 0.9)}
    res["hybrid convex (tmm), dense with vector PRF; beta and alpha cross-fitted"] = crossfit(lab, grid)
    grid = {f"alpha={a:.1f}": (lambda a=a: m(lambda i: fused(i, a, 300, dense_f, rm3[key]))) for a in (0.7, 0.8, 0.9)}
    res["hybrid convex (tmm), BM25 + RM3; alpha cross-fitted"] = crossfit(lab, grid)
    # BM25's document length as the chunk's number of tokens (stop words aside) instead of distinct lexemes
    distinct, lab.dl = lab.dl, np.asarray(lab.tf.sum(axis=1)).ravel()
    tok = np.stack([lab.bm25(lab.qterms[i], *key) for i in range(len(lab.qids))])
    lab.dl = distinct
    res["lexical BM25 k1=0.9 b=0.4, length in tokens"] = summary(m(lambda i: lex(tok[i])))
    res["hybrid convex (tmm), alpha=0.8, BM25 length in tokens"] = summary(
        m(lambda i: fused(i, 0.8, 300, dense_f, tok)))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--home", type=Path, default=Path(os.environ.get("CITELINE_HOME", "/tmp/citeline-bench")))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/citeline-levers.npz"))
    args = ap.parse_args()
    load = os.getloadavg()
    lab = Lab(dump(args.home, args.cache))
    out = {"revision": git_revision(), "load_average_before": [round(x, 2) for x in load],
           "queries": len(lab.qids), "chunks": int(lab.n), "documents": len(lab.docs),
           "halves": [int((lab.half == h).sum()) for h in (0, 1)], "levers": run(lab)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
